//! The deadline after which this instance sends no request to a device it
//! owned: its lease as last renewed, less the fence margin, on this
//! process's monotonic clock. Every endpoint of a clustered instance checks
//! it before each request (one clock read and one atomic load), so polling
//! stops on time even when the task that stops devices is slow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Closed until the first renewal; see the module comment.
#[derive(Debug)]
pub struct Fence {
    origin: Instant,
    /// Nanoseconds after `origin` until which requests may be sent; 0:
    /// closed.
    until: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            until: AtomicU64::new(0),
        }
    }
}

impl Fence {
    /// Whether a request may be sent now.
    pub fn is_open(&self) -> bool {
        self.open_at(Instant::now())
    }

    pub fn open_at(&self, now: Instant) -> bool {
        self.nanos(now) < self.until.load(Ordering::Acquire)
    }

    /// Opens the fence until `deadline` (it may only move forward while open:
    /// an older renewal's answer arriving late must not shorten it).
    pub fn extend_to(&self, deadline: Instant) {
        let until = self.nanos(deadline).max(1);
        self.until.fetch_max(until, Ordering::AcqRel);
    }

    /// Closes it now (the lease is known lost, or the instance is leaving).
    pub fn close(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// How long it stays open from now (zero when closed).
    pub fn remaining(&self) -> std::time::Duration {
        let until = self.until.load(Ordering::Acquire);
        std::time::Duration::from_nanos(until.saturating_sub(self.nanos(Instant::now())))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}
