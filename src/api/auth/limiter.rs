//! Failed authentications counted per client address: past
//! [`FAILURES_MAX`] in one [`WINDOW`], the address is refused (429) until
//! its window ends, so guessing tokens costs a minute per ten guesses.
//!
//! The table is bounded ([`ADDRESSES_MAX`]): when it is full the address
//! whose window began first is forgotten, so a flood of addresses costs a
//! fixed amount of memory (and at worst frees one of them early).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed from one address within [`WINDOW`].
pub const FAILURES_MAX: u32 = 10;

/// How long failures are remembered, counted from an address's first one.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses remembered at once: about 50 bytes each.
pub const ADDRESSES_MAX: usize = 10_000;

/// What the limiter says about a request from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it be checked.
    Allowed,
    /// Refuse it: too many failures; the window ends after this long.
    Limited(Duration),
}

/// What a recorded failure calls for in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The first failure of the address's window: log it.
    First,
    /// This failure reached the limit: log that the address is refused.
    NowLimited(u32),
    /// Counted only.
    Quiet,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    began: Instant,
    failures: u32,
}

pub struct Limiter {
    max: u32,
    window: Duration,
    capacity: usize,
    table: Mutex<HashMap<IpAddr, Window>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(FAILURES_MAX, WINDOW, ADDRESSES_MAX)
    }
}

impl Limiter {
    pub fn new(max: u32, window: Duration, capacity: usize) -> Self {
        Limiter {
            max,
            window,
            capacity: capacity.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request from `addr` may be checked at `now`.
    pub fn verdict(&self, addr: IpAddr, now: Instant) -> Verdict {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(&key(addr)) {
            Some(w) if w.failures >= self.max => {
                let left = self.window.saturating_sub(now.duration_since(w.began));
                if left.is_zero() {
                    Verdict::Allowed
                } else {
                    Verdict::Limited(left)
                }
            }
            _ => Verdict::Allowed,
        }
    }

    /// Counts a failed authentication from `addr` at `now`.
    pub fn fail(&self, addr: IpAddr, now: Instant) -> Note {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = key(addr);
        let expired = |w: &Window| now.duration_since(w.began) >= self.window;
        if !table.contains_key(&key) && table.len() >= self.capacity {
            table.retain(|_, w| !expired(w));
            if table.len() >= self.capacity
                && let Some(oldest) = table.iter().min_by_key(|(_, w)| w.began).map(|(k, _)| *k)
            {
                table.remove(&oldest);
            }
        }
        let w = table.entry(key).or_insert(Window {
            began: now,
            failures: 0,
        });
        if expired(w) {
            *w = Window {
                began: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        match w.failures {
            1 => Note::First,
            n if n == self.max => Note::NowLimited(n),
            _ => Note::Quiet,
        }
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The key of an address: IPv4 as it is, IPv6 by its /64, since one
/// client usually holds a whole /64 and could otherwise pick a fresh
/// address for every ten guesses.
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_refused_after_the_limit_until_its_window_ends() {
        let l = Limiter::new(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert_eq!(l.fail(a, t0), Note::First);
        assert_eq!(l.fail(a, t0), Note::Quiet);
        assert_eq!(l.verdict(a, t0), Verdict::Allowed);
        assert_eq!(l.fail(a, t0 + Duration::from_secs(10)), Note::NowLimited(3));
        assert_eq!(
            l.verdict(a, t0 + Duration::from_secs(20)),
            Verdict::Limited(Duration::from_secs(40))
        );
        assert_eq!(
            l.verdict(ip("192.0.2.2"), t0),
            Verdict::Allowed,
            "others are not"
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.verdict(a, later), Verdict::Allowed, "the window passed");
        assert_eq!(l.fail(a, later), Note::First, "a new window begins");
        assert_eq!(l.verdict(a, later), Verdict::Allowed);
    }

    #[test]
    fn a_flood_of_addresses_keeps_the_table_at_its_cap_forgetting_the_oldest() {
        let l = Limiter::new(2, Duration::from_secs(60), 50);
        let t0 = Instant::now();
        let first = ip("10.0.0.1");
        l.fail(first, t0);
        l.fail(first, t0);
        assert!(matches!(l.verdict(first, t0), Verdict::Limited(_)));
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            l.fail(a, t0 + Duration::from_millis(u64::from(i) + 1));
            assert!(l.len() <= 50);
        }
        assert_eq!(l.verdict(first, t0), Verdict::Allowed, "evicted first");
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_count() {
        let l = Limiter::new(2, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        l.fail(ip("2001:db8:1:2::1"), t0);
        l.fail(ip("2001:db8:1:2:ffff::9"), t0);
        assert!(matches!(
            l.verdict(ip("2001:db8:1:2::77"), t0),
            Verdict::Limited(_)
        ));
        assert_eq!(l.verdict(ip("2001:db8:1:3::1"), t0), Verdict::Allowed);
        l.fail(ip("::ffff:192.0.2.7"), t0);
        l.fail(ip("192.0.2.7"), t0);
        assert!(matches!(
            l.verdict(ip("192.0.2.7"), t0),
            Verdict::Limited(_)
        ));
    }
}
