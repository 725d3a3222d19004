//! When each poll group fires.
//!
//! Intervals tick at whole multiples of the interval on the wall clock. Unless
//! `align: strict` is asked for, each device is shifted by a phase derived
//! from its name: devices that share an interval are spread across it (10,000
//! devices at 1 s do not fire in the same millisecond), and a device keeps its
//! phase across restarts.
//!
//! Cron schedules are evaluated with croner on the local clock of their time
//! zone (chrono-tz), so they follow DST changes. regpoll does not use
//! tokio-cron-scheduler: it decides what fires from a loop that wakes every
//! 500 ms (measured 100–370 ms late), keeps time zones as fixed offsets (an
//! hour off after a DST change) and lets runs overlap. Here each group sleeps
//! on a tokio timer until exactly its next firing, and a run that is still
//! going when the next firing comes skips it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::registry::{Align, CronSchedule, Schedule, stable_hash};

/// A stable phase in `[0, every)` for `name` (see [`stable_hash`]), rounded
/// down to a whole [`phase_step`].
pub fn phase(name: &str, every: Duration) -> Duration {
    let every_us = every.as_micros().max(1) as u64;
    let step_us = phase_step(every).as_micros() as u64;
    Duration::from_micros(stable_hash(name) % every_us / step_us * step_us)
}

/// Between half of `wait` and all of it, at random: a retry wait, so that
/// many clients that failed together (regpolls restarted by a site's power
/// cut, writers that lost the same database) do not try again in step.
pub fn jittered(wait: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = wait / 2;
    half + half.mul_f64((random % 1024) as f64 / 1024.0)
}

/// Phases are whole multiples of 1 % of the interval, at least 1 ms and at
/// most 10 ms (100 phases a second at 1 s). The groups that share a step
/// fire on the same timer tick, so the runtime sends all their requests and
/// takes all their answers in a few wake-ups instead of parking and waking
/// for every few polls: at 10,000 devices every second (100 polls a step)
/// that took regpoll from 4,700 context switches a second to 1,900 and its
/// CPU per reading from 2.4-2.7 µs to 1.9-2.1. The polls of a step wait
/// for each other, so the median lateness rose by about 0.6 ms; its p99 did
/// not move (BENCHMARKS.md). Steps of 20 ms saved no more and lengthened
/// the tail of response -> Redis. A finer spread would not spread the polls
/// much more anyway: tokio's timers fire at most once a millisecond.
pub fn phase_step(every: Duration) -> Duration {
    (every / 100).clamp(Duration::from_millis(1), Duration::from_millis(10))
}

/// The firing times of one schedule.
#[derive(Debug, Clone)]
pub enum Ticker {
    /// In microseconds (`every` at least 1, `phase` below it): every poll
    /// group's task holds its ticker, and two `Duration`s took 8 bytes more.
    Every {
        every_us: i64,
        phase_us: i64,
    },
    Cron(Box<CronSchedule>),
}

impl Ticker {
    /// `key` names the poll group (device name and schedule), so its phase is
    /// stable and distinct from other groups'.
    pub fn new(schedule: &Schedule, key: &str) -> Ticker {
        match schedule {
            Schedule::Every {
                every,
                align: Align::Spread,
            } => Ticker::every(*every, phase(key, *every)),
            Schedule::Every {
                every,
                align: Align::Strict,
            } => Ticker::every(*every, Duration::ZERO),
            Schedule::Cron(c) => Ticker::Cron(c.clone()),
        }
    }

    fn every(every: Duration, phase: Duration) -> Ticker {
        let every_us = i64::try_from(every.as_micros()).unwrap_or(i64::MAX).max(1);
        let phase_us = i64::try_from(phase.as_micros()).unwrap_or(0) % every_us;
        Ticker::Every { every_us, phase_us }
    }

    /// The first firing strictly after `now` (`None`: a cron expression that
    /// never fires again, such as a date in the past).
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            &Ticker::Every { every_us, phase_us } => {
                let now_us = now.timestamp_micros();
                let k = (now_us - phase_us).div_euclid(every_us) + 1;
                DateTime::from_timestamp_micros(k * every_us + phase_us)
            }
            Ticker::Cron(c) => c.next_after(now),
        }
    }
}

impl Ticker {
    /// After a poll for the firing `due` ended at `now`: how many firings
    /// passed while it ran (overruns, skipped rather than caught up), and the
    /// next firing to wait for.
    pub fn after_poll(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (u64, Option<DateTime<Utc>>) {
        if let &Ticker::Every { every_us, .. } = self {
            // Arithmetic, not a walk: a long stall at a short interval would be
            // millions of steps.
            let next = self.next_after(now.max(due));
            let missed = next.map_or(0, |n| {
                ((n - due).num_microseconds().unwrap_or(0) / every_us - 1).max(0)
            });
            return (missed as u64, next);
        }
        let mut missed = 0;
        let mut next = self.next_after(due);
        while let Some(n) = next
            && n <= now
        {
            missed += 1;
            next = self.next_after(n);
        }
        (missed, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(us: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(us).unwrap()
    }

    fn every(ms: u64, phase_ms: u64) -> Ticker {
        Ticker::every(Duration::from_millis(ms), Duration::from_millis(phase_ms))
    }

    #[test]
    fn intervals_tick_on_whole_multiples_plus_phase() {
        assert_eq!(
            every(1000, 0).next_after(at(1_000_000)),
            Some(at(2_000_000))
        );
        assert_eq!(
            every(1000, 250).next_after(at(1_500_000)),
            Some(at(2_250_000))
        );
        assert_eq!(
            every(1000, 250).next_after(at(1_100_000)),
            Some(at(1_250_000))
        );
        assert_eq!(
            every(5000, 0).next_after(at(7_000_000)),
            Some(at(10_000_000))
        );
    }

    #[test]
    fn strict_alignment_fires_on_the_boundary_for_every_device() {
        let s = Schedule::Every {
            every: Duration::from_secs(1),
            align: Align::Strict,
        };
        for name in ["a", "b", "boiler-1"] {
            assert_eq!(
                Ticker::new(&s, name).next_after(at(1_300_000)),
                Some(at(2_000_000))
            );
        }
    }

    #[test]
    fn phases_are_stable_and_spread() {
        let every = Duration::from_secs(1);
        assert_eq!(phase("boiler-1", every), phase("boiler-1", every));
        // Pinned: a change of hash would move every device's poll time on upgrade.
        assert_eq!(
            phase("boiler-1", every),
            Duration::from_micros(PINNED_BOILER_PHASE_US)
        );
        for (every, steps) in [
            (Duration::from_secs(1), 100),
            (Duration::from_millis(100), 100),
            (Duration::from_secs(6), 600),
        ] {
            let step = phase_step(every);
            let mut phases: Vec<Duration> = (0..10_000)
                .map(|i| phase(&format!("dev-{i}"), every))
                .collect();
            assert!(
                phases
                    .iter()
                    .all(|p| *p < every && (p.as_micros() % step.as_micros()) == 0)
            );
            phases.sort();
            phases.dedup();
            assert!(
                phases.len() > steps * 95 / 100,
                "10,000 devices should use nearly every one of the {steps} steps of {every:?}, got {}",
                phases.len()
            );
        }
        assert_eq!(phase("x", Duration::from_micros(500)), Duration::ZERO);
    }

    // 367,482 µs before phases were rounded down to their step: the rounding
    // moved each device by less than a step.
    const PINNED_BOILER_PHASE_US: u64 = 360_000;

    fn cron(pattern: &str, tz: &str) -> Ticker {
        Ticker::Cron(Box::new(CronSchedule::parse(pattern, tz).unwrap()))
    }

    #[test]
    fn cron_fires_on_its_seconds() {
        let t = cron("*/10 * * * * *", "UTC");
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 3).unwrap();
        assert_eq!(
            t.next_after(now),
            Some(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 10).unwrap())
        );
        let exact = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 10).unwrap();
        assert_eq!(
            t.next_after(exact),
            Some(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 20).unwrap())
        );
    }

    #[test]
    fn cron_in_berlin_follows_the_spring_and_autumn_changes() {
        // 03:00 local daily. Berlin is UTC+1 in winter, UTC+2 in summer; the
        // clocks go forward on 2026-03-29 and back on 2026-10-25.
        let t = cron("0 0 3 * * *", "Europe/Berlin");
        let before_spring = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        assert_eq!(
            t.next_after(before_spring),
            Some(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap())
        );
        let after_spring = Utc.with_ymd_and_hms(2026, 3, 29, 12, 0, 0).unwrap();
        assert_eq!(
            t.next_after(after_spring),
            Some(Utc.with_ymd_and_hms(2026, 3, 30, 1, 0, 0).unwrap())
        );
        let before_autumn = Utc.with_ymd_and_hms(2026, 10, 24, 12, 0, 0).unwrap();
        assert_eq!(
            t.next_after(before_autumn),
            Some(Utc.with_ymd_and_hms(2026, 10, 25, 2, 0, 0).unwrap())
        );
    }

    #[test]
    fn cron_in_new_york_skips_the_missing_hour_and_fires_once_in_the_repeated_one() {
        // 02:30 local does not exist on 2026-03-08 (clocks jump 02:00 → 03:00);
        // on 2026-11-01 it happens twice (01:00–02:00 repeats, 02:30 once).
        let t = cron("0 30 2 * * *", "America/New_York");
        let spring_eve = Utc.with_ymd_and_hms(2026, 3, 7, 12, 0, 0).unwrap();
        let next = t.next_after(spring_eve).unwrap();
        assert_ne!(
            next.with_timezone(&chrono_tz::America::New_York)
                .date_naive(),
            chrono::NaiveDate::from_ymd_opt(2026, 3, 7).unwrap()
        );
        assert!(
            next >= Utc.with_ymd_and_hms(2026, 3, 8, 7, 0, 0).unwrap(),
            "{next}"
        );
        // Every firing is 02:30 local or the DST-shifted stand-in, never twice a day.
        let mut fires = Vec::new();
        let mut now = Utc.with_ymd_and_hms(2026, 10, 30, 12, 0, 0).unwrap();
        for _ in 0..4 {
            now = t.next_after(now).unwrap();
            fires.push(now);
        }
        assert_eq!(
            fires[1],
            Utc.with_ymd_and_hms(2026, 11, 1, 7, 30, 0).unwrap(),
            "{fires:?}"
        );
        for pair in fires.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= chrono::Duration::hours(23) && gap <= chrono::Duration::hours(25),
                "{fires:?}"
            );
        }
    }

    #[test]
    fn a_poll_longer_than_its_interval_skips_the_firings_it_missed() {
        let t = every(1000, 0);
        assert_eq!(
            t.after_poll(at(1_000_000), at(1_400_000)),
            (0, Some(at(2_000_000)))
        );
        assert_eq!(
            t.after_poll(at(1_000_000), at(3_500_000)),
            (2, Some(at(4_000_000)))
        );
        assert_eq!(
            t.after_poll(at(1_000_000), at(2_000_000)),
            (1, Some(at(3_000_000)))
        );
        let c = cron("* * * * * *", "UTC");
        assert_eq!(
            c.after_poll(at(1_000_000), at(3_500_000)),
            (2, Some(at(4_000_000)))
        );
    }

    #[test]
    fn bad_cron_expressions_and_zones_are_explained() {
        assert!(
            CronSchedule::parse("*/5 * * * *", "UTC")
                .unwrap_err()
                .contains("six fields, seconds first")
        );
        assert!(
            CronSchedule::parse("* * * * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
    }

    #[test]
    fn jitter_stays_between_half_and_whole() {
        let wait = Duration::from_secs(8);
        let waits: Vec<Duration> = (0..50).map(|_| jittered(wait)).collect();
        assert!(
            waits.iter().all(|w| *w >= wait / 2 && *w <= wait),
            "{waits:?}"
        );
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }
}
