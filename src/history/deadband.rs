//! The deadband filter: which readings of a register with a deadband
//! (`registry::Deadband`) history leaves out. Only history: the latest
//! values (memory, Redis) get every poll before a report reaches here.
//!
//! A reading is stored when its quality differs from the last stored row's,
//! when its value is outside the band around the last stored value, when
//! the heartbeat has passed since the last stored row, or when it is the
//! first reading of the register this filter sees. That last case covers a
//! restart, a cluster handover and a reload that restarts the device: the
//! state belongs to the device's poll definition (its `Arc<Device>`), and
//! each of those makes a new one, so the first reading after it is stored.
//!
//! The filter runs in the history writer's task, so it needs no lock, sees
//! the readings in the order each register was polled, and sees only what
//! reaches history (a report dropped at a full queue was never stored, so
//! it moves nothing). Registers without a deadband cost one pointer test
//! per reading and no state.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};

use super::row::{Row, row_of};
use super::writer::HistoryStats;
use crate::reading::{PollReport, Quality, Reading};
use crate::registry::{Deadband, Device, stable_hash};

/// The last stored row of each register with a deadband, by
/// `device_register_map.id`.
pub struct Deadbands {
    last: HashMap<i32, Last>,
    /// Entries when the map was last swept of stopped devices; swept again
    /// when it has doubled, so the sweeps cost O(1) a reading.
    swept_at: usize,
    stats: Arc<HistoryStats>,
}

/// What the filter keeps of a stored row: 40 bytes a register (about 50
/// with the map's own).
struct Last {
    /// The poll definition the row came from; a restarted device is a new
    /// one. Weak, so a stopped device's registers and names are freed (only
    /// its allocation stays, which keeps its address from being reused by a
    /// new definition while this entry exists).
    device: Weak<Device>,
    ts: DateTime<Utc>,
    /// NaN when the row has no value.
    value: f64,
    /// A hash of the text (a string register's) or, with no value and no
    /// text, of the detail (why the value is bad): a change stores a row.
    /// 64 bits: two different texts of one register are taken for the same
    /// one with odds of one in 2^64, where keeping every text would cost
    /// the filter an allocation per string register.
    text: u64,
    quality: Quality,
}

impl Last {
    fn of(device: &Arc<Device>, r: &Reading) -> Last {
        let text = r
            .value
            .as_text()
            .or(r.detail.as_deref().filter(|_| r.value.as_f64().is_none()))
            .map_or(0, stable_hash);
        Last {
            device: Arc::downgrade(device),
            ts: r.ts,
            value: r.value.as_f64().unwrap_or(f64::NAN),
            text,
            quality: r.quality,
        }
    }

    /// Whether `now` must be stored after this row under `deadband`.
    fn differs(&self, now: &Last, deadband: &Deadband) -> bool {
        if self.quality != now.quality {
            return true;
        }
        let elapsed = now.ts - self.ts;
        // A clock stepped back stores one row and the filter goes on from it.
        if elapsed < chrono::TimeDelta::zero()
            || deadband
                .heartbeat
                .is_some_and(|h| elapsed.to_std().is_ok_and(|e| e >= h))
        {
            return true;
        }
        match (self.value.is_nan(), now.value.is_nan()) {
            (false, false) => (now.value - self.value).abs() > deadband.band.width(self.value),
            (true, true) => self.text != now.text,
            _ => true,
        }
    }
}

impl Deadbands {
    pub fn new(stats: Arc<HistoryStats>) -> Deadbands {
        Deadbands {
            last: HashMap::new(),
            swept_at: 0,
            stats,
        }
    }

    /// The rows of `report` that history stores, into `out`; the readings
    /// left out are counted (`HistoryStats::deadband_suppressed`).
    pub fn rows_of(&mut self, report: &PollReport, out: &mut impl Extend<Row>) {
        let mut suppressed = 0;
        for r in &report.readings {
            // A device not stored yet (id 0: a row nothing can hold) is
            // not filtered: its registers would share one state.
            if let Some(deadband) = report.register(r).deadband.as_deref()
                && let id = report.device.register_id(r.index)
                && id != 0
                && !self.keep(&report.device, r, id, deadband)
            {
                suppressed += 1;
                continue;
            }
            out.extend(std::iter::once(row_of(report, r)));
        }
        if suppressed > 0 {
            self.stats
                .deadband_suppressed
                .fetch_add(suppressed, Ordering::Relaxed);
        }
    }

    /// Whether reading `r` of register `id` is stored; if so it becomes the
    /// register's last stored row.
    fn keep(&mut self, device: &Arc<Device>, r: &Reading, id: i32, deadband: &Deadband) -> bool {
        let now = Last::of(device, r);
        match self.last.get_mut(&id) {
            Some(last)
                if Weak::as_ptr(&last.device) == Arc::as_ptr(device)
                    && !last.differs(&now, deadband) =>
            {
                false
            }
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.last.insert(id, now);
                if self.last.len() >= 2 * self.swept_at.max(64) {
                    self.last.retain(|_, l| l.device.strong_count() > 0);
                    self.swept_at = self.last.len();
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeDelta;

    use super::*;
    use crate::reading::Value;
    use crate::registry::Band;

    /// A device whose register 0 (f32, id 7) has `deadband`, and register 1
    /// (u16, id 8) none.
    fn device(deadband: Option<Deadband>) -> Arc<Device> {
        let mut d = crate::config::parse(
            "devices:\n  - name: a\n    host: 127.0.0.1\n    registers:\n      - { name: t, kind: holding, address: 0, type: f32 }\n      - { name: n, kind: holding, address: 2 }\n",
            "devices.yaml",
        )
        .unwrap()
        .remove(0);
        let mut regs = d.registers.to_vec();
        regs[0].deadband = deadband.map(Box::new);
        d.registers = regs.into();
        d.register_ids = vec![7, 8].into();
        Arc::new(d)
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn reading(index: usize, s: i64, value: Value, quality: Quality) -> Reading {
        let detail = (quality == Quality::Bad).then(|| "timeout after 1000 ms".to_string());
        Reading {
            index,
            ts: at(s),
            value,
            quality,
            detail,
        }
    }

    fn report(device: &Arc<Device>, readings: Vec<Reading>) -> PollReport {
        PollReport {
            device: Arc::clone(device),
            started: readings[0].ts,
            latency: Duration::ZERO,
            error: None,
            reachable: true,
            demoted: false,
            readings,
        }
    }

    /// Feeds one good reading of register 0 a second (or the given
    /// quality), and says which seconds were stored.
    fn stored(filter: &mut Deadbands, device: &Arc<Device>, signal: &[(f64, Quality)]) -> Vec<i64> {
        let mut rows: Vec<Row> = Vec::new();
        for (s, (v, q)) in signal.iter().enumerate() {
            let value = if *q == Quality::Bad {
                Value::None
            } else {
                Value::Number(*v)
            };
            filter.rows_of(
                &report(device, vec![reading(0, s as i64, value, *q)]),
                &mut rows,
            );
        }
        rows.iter().map(|r| (r.ts - at(0)).num_seconds()).collect()
    }

    fn good(values: &[f64]) -> Vec<(f64, Quality)> {
        values.iter().map(|v| (*v, Quality::Good)).collect()
    }

    fn filter() -> (Deadbands, Arc<HistoryStats>) {
        let stats = Arc::new(HistoryStats::default());
        (Deadbands::new(Arc::clone(&stats)), stats)
    }

    fn absolute(w: f64, heartbeat: Option<u64>) -> Option<Deadband> {
        Some(Deadband {
            band: Band::Absolute(w),
            heartbeat: heartbeat.map(Duration::from_secs),
        })
    }

    #[test]
    fn a_ramp_is_stored_each_time_it_leaves_the_band_of_the_last_stored_value() {
        let d = device(absolute(0.5, None));
        let (mut f, stats) = filter();
        // 0.2 a second: 0 stored, then 0.6 (0.6 > 0.5 from 0), 1.2, 1.8.
        let ramp: Vec<f64> = (0..10).map(|i| f64::from(i) * 0.2).collect();
        assert_eq!(stored(&mut f, &d, &good(&ramp)), [0, 3, 6, 9]);
        assert_eq!(stats.deadband_suppressed.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn noise_inside_the_band_stores_only_the_first_reading_and_a_step_is_stored_at_once() {
        let d = device(absolute(0.5, None));
        let (mut f, _) = filter();
        let signal = [20.0, 20.3, 19.6, 20.5, 19.5, 20.1, 25.0, 25.4, 24.6];
        // 20.5 and 19.5 are exactly 0.5 away: inside (the band is inclusive).
        assert_eq!(stored(&mut f, &d, &good(&signal)), [0, 6]);
    }

    #[test]
    fn a_quality_flip_inside_the_band_is_stored_both_ways() {
        let d = device(absolute(10.0, None));
        let (mut f, _) = filter();
        let signal = [
            (5.0, Quality::Good),
            (5.0, Quality::Uncertain),
            (5.0, Quality::Uncertain),
            (5.0, Quality::Bad),
            (0.0, Quality::Bad),
            (5.0, Quality::Good),
            (5.0, Quality::Good),
        ];
        assert_eq!(stored(&mut f, &d, &signal), [0, 1, 3, 5]);
    }

    #[test]
    fn a_silent_stretch_longer_than_the_heartbeat_stores_one_row_per_heartbeat() {
        let d = device(absolute(1.0, Some(10)));
        let (mut f, _) = filter();
        // 35 s of one value: stored at 0, 10, 20, 30; a step at 33 is
        // stored and the heartbeat counts from it.
        let mut signal = vec![7.0; 33];
        signal.extend([9.0; 15]);
        assert_eq!(stored(&mut f, &d, &good(&signal)), [0, 10, 20, 30, 33, 43]);
    }

    #[test]
    fn a_percent_band_follows_the_last_stored_value_and_zero_stores_any_change() {
        let d = device(Some(Deadband {
            band: Band::Percent(10.0),
            heartbeat: None,
        }));
        let (mut f, _) = filter();
        let signal = [100.0, 109.0, 111.0, 121.0, 122.0, 0.0, 0.0, 0.001];
        // 111 leaves 100's band (±10); 121 is within 111's (±11.1); 0 is a
        // change of 111; from 0 the band is 0, so 0.001 is stored.
        assert_eq!(stored(&mut f, &d, &good(&signal)), [0, 2, 5, 7]);
    }

    #[test]
    fn registers_without_a_deadband_are_all_stored_and_hold_no_state() {
        let d = device(absolute(100.0, None));
        let (mut f, stats) = filter();
        let mut rows: Vec<Row> = Vec::new();
        for s in 0..5 {
            let readings = vec![
                reading(0, s, Value::Number(1.0), Quality::Good),
                reading(1, s, Value::Number(1.0), Quality::Good),
            ];
            f.rows_of(&report(&d, readings), &mut rows);
        }
        let ids: Vec<i32> = rows.iter().map(|r| r.register_id).collect();
        assert_eq!(ids, [7, 8, 8, 8, 8, 8]);
        assert_eq!(f.last.len(), 1);
        assert_eq!(stats.deadband_suppressed.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn texts_and_bad_details_are_stored_when_they_change() {
        let d = device(absolute(0.0, None));
        let (mut f, _) = filter();
        let mut rows: Vec<Row> = Vec::new();
        let texts = ["A", "A", "B", "B", "A"];
        for (s, t) in texts.iter().enumerate() {
            let r = reading(0, s as i64, Value::Text((*t).into()), Quality::Good);
            f.rows_of(&report(&d, vec![r]), &mut rows);
        }
        let mut bad = |s: i64, detail: &str| {
            let mut r = reading(0, s, Value::None, Quality::Bad);
            r.detail = Some(detail.into());
            f.rows_of(&report(&d, vec![r]), &mut rows);
        };
        bad(5, "timeout after 1000 ms");
        bad(6, "timeout after 1000 ms");
        bad(7, "exception 2 (illegal data address)");
        let at: Vec<i64> = rows.iter().map(|r| (r.ts - at(0)).num_seconds()).collect();
        assert_eq!(at, [0, 2, 4, 5, 7]);
    }

    #[test]
    fn a_device_not_stored_yet_is_not_filtered() {
        let mut d = (*device(absolute(100.0, None))).clone();
        d.register_ids = Box::default();
        let (mut f, _) = filter();
        assert_eq!(stored(&mut f, &Arc::new(d), &good(&[1.0, 1.0])), [0, 1]);
        assert!(f.last.is_empty());
    }

    #[test]
    fn the_state_of_a_register_stays_small() {
        assert!(std::mem::size_of::<Last>() <= 40);
    }

    #[test]
    fn a_restarted_device_starts_with_its_first_reading_stored() {
        let (mut f, _) = filter();
        let before = device(absolute(1.0, None));
        assert_eq!(stored(&mut f, &before, &good(&[5.0, 5.0])), [0]);
        // A reload or a handover polls under a new definition.
        let after = device(absolute(1.0, None));
        assert_eq!(stored(&mut f, &after, &good(&[5.0, 5.0])), [0]);
        drop(before);
        assert!(f.last.values().all(|l| l.device.strong_count() == 1));
    }

    #[test]
    fn a_clock_stepped_back_stores_one_row_and_goes_on_from_it() {
        let d = device(absolute(1.0, Some(60)));
        let (mut f, _) = filter();
        let mut rows: Vec<Row> = Vec::new();
        for s in [100, 101, 50, 51, 52] {
            let r = reading(0, s, Value::Number(3.0), Quality::Good);
            f.rows_of(&report(&d, vec![r]), &mut rows);
        }
        let at: Vec<i64> = rows.iter().map(|r| (r.ts - at(0)).num_seconds()).collect();
        assert_eq!(at, [100, 50]);
        assert_eq!(rows[1].ts - rows[0].ts, TimeDelta::seconds(-50));
    }
}
