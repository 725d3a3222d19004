//! The newest report of each poll group, waiting for the Redis writer.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::latest::notice::Notice;
use crate::reading::PollReport;

/// Reports not yet written, one per poll group, and registry changes not
/// yet written, in the order they happened.
#[derive(Debug, Default)]
struct Pending {
    reports: HashSet<ByGroup>,
    notices: Vec<Arc<Notice>>,
    closed: bool,
}

/// A report that hashes and compares as its poll group: the device and its
/// first register (groups do not share registers). The set keys on the
/// report itself rather than on a copy of the device's name made for every
/// poll. Reports without readings are never kept.
#[derive(Debug)]
struct ByGroup(Arc<PollReport>);

impl ByGroup {
    fn group(&self) -> (&str, usize) {
        let first = self.0.readings.first().map_or(usize::MAX, |r| r.index);
        (&self.0.device.name, first)
    }
}

impl PartialEq for ByGroup {
    fn eq(&self, other: &Self) -> bool {
        self.group() == other.group()
    }
}

impl Eq for ByGroup {}

impl std::hash::Hash for ByGroup {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.group().hash(state);
    }
}

/// The newest unwritten report of each poll group, and a wake-up for the writer.
#[derive(Debug, Default)]
pub struct Coalescer {
    pending: std::sync::Mutex<Pending>,
    wake: Notify,
    /// Reports replaced by a newer one before they were written.
    pub coalesced: AtomicU64,
}

impl Coalescer {
    /// Keeps `report` as its group's newest.
    pub fn push(&self, report: Arc<PollReport>) {
        if report.readings.is_empty() {
            return;
        }
        let replaced = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reports
            .replace(ByGroup(report));
        if replaced.is_some() {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Keeps a registry change for the writer. It is written after every
    /// report pending with it: the polls of a stopped device have all been
    /// delivered by the time the reload tells of it.
    pub fn push_notice(&self, notice: Notice) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notices
            .push(Arc::new(notice));
        self.wake.notify_one();
    }

    /// Puts back registry changes whose pipeline was lost, before any that
    /// came meanwhile.
    pub(super) fn requeue_notices(&self, notices: Vec<Arc<Notice>>) {
        if notices.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let newer = std::mem::replace(&mut pending.notices, notices);
        pending.notices.extend(newer);
    }

    /// Puts back reports whose pipeline was lost with its connection, unless
    /// a newer report of the same group came meanwhile.
    pub(super) fn requeue(&self, reports: Vec<Arc<PollReport>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for report in reports {
            // A set keeps what it has when an equal one is inserted.
            pending.reports.insert(ByGroup(report));
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
    }

    /// No more reports will come; the writer ends once it has written the rest.
    pub fn close(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.wake.notify_one();
    }

    /// Waits until something is pending (true) or the queue is closed and
    /// drained (false).
    pub(super) async fn wait(&self) -> bool {
        loop {
            {
                let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if !pending.reports.is_empty() || !pending.notices.is_empty() {
                    return true;
                }
                if pending.closed {
                    return false;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Every report pending (after `wait` said there is something).
    pub(super) fn drain(&self) -> Vec<Arc<PollReport>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.reports.drain().map(|g| g.0).collect()
    }

    /// Every registry change pending, oldest first; taken after
    /// [`drain`](Self::drain) so they are written after those reports.
    pub(super) fn drain_notices(&self) -> Vec<Arc<Notice>> {
        std::mem::take(
            &mut self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .notices,
        )
    }
}
