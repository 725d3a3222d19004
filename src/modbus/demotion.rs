//! Which units behind an endpoint answer, so that a silent one neither
//! stalls its neighbours nor takes their shared connection down.
//!
//! A unit that times out `demote_after` times in a row is demoted: it is not
//! asked again until a backoff expires (1 s, doubling per failed probe up to
//! `demote_max`, with jitter so that units that fell silent together do not
//! probe together). Any answer, an exception included, restores it.
//!
//! The same bookkeeping says when the endpoint itself has stopped answering:
//! every unit asked in the last [`ACTIVE_WINDOW`] has timed out since the
//! last answer from any of them. Only then is the connection dropped for a
//! timeout; one silent unit among answering neighbours never drops it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::ReadError;
use crate::registry::Demotion;

/// Units not asked for this long (a device removed by a reload, say) no
/// longer count when deciding whether the whole endpoint has gone silent.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(600);

/// `min` doubled per step after the first, at most `max`, with ±20 % jitter.
pub(crate) fn backoff(min: Duration, max: Duration, step: u32) -> Duration {
    let base = min
        .saturating_mul(1 << step.saturating_sub(1).min(16))
        .min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(jitter)
}

/// The units asked through one endpoint, in the order first asked.
#[derive(Debug, Default)]
pub(crate) struct Units {
    units: Vec<Unit>,
    /// How many units have timed out since the last answer from any unit.
    silent: usize,
}

#[derive(Debug)]
pub(crate) struct Unit {
    id: u8,
    last_asked: Instant,
    /// Timeouts in a row, probes included.
    timeouts: u32,
    /// Timed out since the last answer from any unit of the endpoint.
    silent: bool,
    demoted: Option<Demoted>,
}

#[derive(Debug)]
struct Demoted {
    /// Failed probes plus one: the backoff's doubling step.
    step: u32,
    until: Instant,
    /// `until` on the wall clock, for the reading's detail.
    next_try: DateTime<Utc>,
}

impl Unit {
    /// The error to answer with instead of asking, while the unit is
    /// demoted and its backoff has not expired.
    pub fn demoted(&self, now: Instant) -> Option<ReadError> {
        self.demoted
            .as_ref()
            .filter(|d| now < d.until)
            .map(|d| ReadError::Demoted {
                timeouts: self.timeouts,
                next_try: d.next_try,
            })
    }
}

impl Units {
    /// The index of unit `id`, added when first asked; marks it asked now.
    pub fn unit(&mut self, id: u8, now: Instant) -> usize {
        let i = match self.units.iter().position(|u| u.id == id) {
            Some(i) => i,
            None => {
                self.units.push(Unit {
                    id,
                    last_asked: now,
                    timeouts: 0,
                    silent: false,
                    demoted: None,
                });
                self.units.len() - 1
            }
        };
        self.units[i].last_asked = now;
        i
    }

    pub fn get(&self, i: usize) -> &Unit {
        &self.units[i]
    }

    /// Unit `i` answered. Returns whether it was demoted (and now is not).
    pub fn answered(&mut self, i: usize) -> bool {
        if self.silent > 0 {
            for u in &mut self.units {
                u.silent = false;
            }
            self.silent = 0;
        }
        let u = &mut self.units[i];
        u.timeouts = 0;
        let restored = u.demoted.take();
        if let Some(d) = &restored {
            tracing::info!(
                unit = u.id,
                probes = d.step,
                "demoted unit answered; restored"
            );
        }
        restored.is_some()
    }

    /// Unit `i` timed out. Returns whether it has just been demoted.
    pub fn timed_out(&mut self, i: usize, policy: &Demotion) -> bool {
        let u = &mut self.units[i];
        u.timeouts = u.timeouts.saturating_add(1);
        if !u.silent {
            u.silent = true;
            self.silent += 1;
        }
        let step = match &u.demoted {
            // A probe failed: wait longer.
            Some(d) => d.step.saturating_add(1),
            None if u.timeouts >= u32::from(policy.after) => 1,
            None => return false,
        };
        let wait = backoff(Demotion::MIN, policy.max.max(Demotion::MIN), step);
        let newly = u.demoted.is_none();
        u.demoted = Some(Demoted {
            step,
            until: Instant::now() + wait,
            next_try: Utc::now() + wait,
        });
        if newly {
            tracing::warn!(
                unit = u.id,
                timeouts = u.timeouts,
                "unit demoted after timeouts in a row"
            );
        }
        newly
    }

    /// Whether every unit asked lately has timed out since the last answer.
    pub fn all_silent(&self, now: Instant) -> bool {
        self.silent > 0
            && self
                .units
                .iter()
                .filter(|u| now.duration_since(u.last_asked) < ACTIVE_WINDOW)
                .all(|u| u.silent)
    }

    pub fn demoted_count(&self) -> u64 {
        self.units.iter().filter(|u| u.demoted.is_some()).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Demotion = Demotion {
        after: 3,
        max: Duration::from_secs(60),
    };

    #[test]
    fn a_unit_is_demoted_after_its_third_timeout_in_a_row_and_restored_by_one_answer() {
        let mut units = Units::default();
        let now = Instant::now();
        let i = units.unit(7, now);
        assert!(!units.timed_out(i, &POLICY));
        assert!(!units.timed_out(i, &POLICY));
        assert!(units.get(i).demoted(Instant::now()).is_none());
        assert!(units.timed_out(i, &POLICY), "demoted on the third");
        let Some(ReadError::Demoted { timeouts, .. }) = units.get(i).demoted(Instant::now()) else {
            panic!("demoted expected");
        };
        assert_eq!(timeouts, 3);
        assert_eq!(units.demoted_count(), 1);
        assert!(units.answered(i));
        assert!(units.get(i).demoted(Instant::now()).is_none());
        assert_eq!(units.demoted_count(), 0);
    }

    #[test]
    fn an_answer_between_timeouts_starts_the_count_again() {
        let mut units = Units::default();
        let i = units.unit(1, Instant::now());
        units.timed_out(i, &POLICY);
        units.timed_out(i, &POLICY);
        units.answered(i);
        units.timed_out(i, &POLICY);
        units.timed_out(i, &POLICY);
        assert_eq!(units.demoted_count(), 0);
    }

    #[test]
    fn the_endpoint_is_silent_only_when_every_recent_unit_timed_out_since_the_last_answer() {
        let mut units = Units::default();
        let now = Instant::now();
        let (a, b) = (units.unit(1, now), units.unit(2, now));
        units.timed_out(a, &POLICY);
        assert!(!units.all_silent(now), "unit 2 has not timed out");
        units.answered(b);
        units.timed_out(a, &POLICY);
        units.timed_out(b, &POLICY);
        assert!(units.all_silent(now));
        // A unit nobody asks any more does not hold the verdict back.
        let later = now + ACTIVE_WINDOW + Duration::from_secs(1);
        units.answered(b);
        let a = units.unit(1, later);
        units.timed_out(a, &POLICY);
        assert!(units.all_silent(later));
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum_with_jitter() {
        let max = Duration::from_secs(60);
        for (step, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let got = backoff(Demotion::MIN, max, step).as_secs_f64();
            assert!(
                (base * 0.8..=base * 1.2).contains(&got),
                "step {step}: {got} s, expected {base} s ±20 %"
            );
        }
    }
}
