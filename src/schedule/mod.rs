//! When each device is polled.
//!
//! Intervals tick at whole multiples of the interval on the wall clock, shifted
//! by a phase derived from the device name: devices that share an interval are
//! spread across it (thousands of polls do not land on the same millisecond),
//! and a device keeps its phase across restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stable phase in `[0, every)` for `name` (FNV-1a, so it does not change
/// between builds or Rust versions the way `DefaultHasher` may).
pub fn phase(name: &str, every: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let every_us = every.as_micros().max(1) as u64;
    Duration::from_micros(h % every_us)
}

/// The first tick strictly after `now` for a schedule of `every` shifted by `phase`.
pub fn next_tick(now: SystemTime, every: Duration, phase: Duration) -> SystemTime {
    let every_us = every.as_micros().max(1);
    let phase_us = phase.as_micros() % every_us;
    let now_us = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let k = (now_us.saturating_sub(phase_us)) / every_us + 1;
    let tick_us = k * every_us + phase_us;
    UNIX_EPOCH + Duration::from_micros(tick_us as u64)
}

/// How many ticks were skipped between the tick a poll was started for and
/// `next`, the tick the scheduler waits for now (0 when the poll fit in its slot).
pub fn skipped(started_for: SystemTime, next: SystemTime, every: Duration) -> u64 {
    let gap = next.duration_since(started_for).unwrap_or_default();
    (gap.as_micros() / every.as_micros().max(1)).saturating_sub(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us)
    }

    #[test]
    fn ticks_fall_on_whole_multiples_plus_phase() {
        let s = Duration::from_secs(1);
        assert_eq!(next_tick(at(1_000_000), s, Duration::ZERO), at(2_000_000));
        assert_eq!(
            next_tick(at(1_500_000), s, Duration::from_millis(250)),
            at(2_250_000)
        );
        assert_eq!(
            next_tick(at(1_100_000), s, Duration::from_millis(250)),
            at(1_250_000)
        );
    }

    #[test]
    fn phases_are_stable_and_spread() {
        let every = Duration::from_secs(1);
        assert_eq!(phase("boiler-1", every), phase("boiler-1", every));
        let mut ms: Vec<u128> = (0..1000)
            .map(|i| phase(&format!("dev-{i}"), every).as_millis())
            .collect();
        ms.sort();
        ms.dedup();
        assert!(
            ms.len() > 500,
            "1000 devices should land on many distinct milliseconds, got {}",
            ms.len()
        );
    }

    #[test]
    fn a_poll_longer_than_its_interval_counts_skipped_ticks() {
        let s = Duration::from_secs(1);
        assert_eq!(skipped(at(1_000_000), at(2_000_000), s), 0);
        assert_eq!(skipped(at(1_000_000), at(4_000_000), s), 2);
    }
}
