//! A register's deadband and heartbeat: which of its readings history may
//! leave out. The rules a deadband must follow live here once, for
//! devices.yaml's validation, the registry loader and (in SQL) migration
//! 0016; the filter that applies it is `history::deadband`.

use std::time::Duration;

use super::{DataType, format_duration};

/// How far a value may move from the last stored one and still be left out
/// of history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Band {
    /// `deadband: 0.5`: in the register's engineering unit (after scale and
    /// offset). 0 stores every change and leaves out only repeats.
    Absolute(f64),
    /// `deadband_percent: 1`: a percentage of the magnitude of the last
    /// stored value. When that value is 0 the band is 0: any change is stored.
    Percent(f64),
}

/// What `deadband`, `deadband_percent` and `heartbeat` say of one register
/// (a device's values already applied to it: the registry holds only the
/// register's own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadband {
    pub band: Band,
    /// At least one row is stored this long after the last stored row,
    /// whatever the value; `None`: a value that never moves is stored once.
    pub heartbeat: Option<Duration>,
}

/// The largest `deadband_percent`: a band wider than the value itself is a
/// mistake (a unit or a decimal point), not a setting.
pub const PERCENT_MAX: f64 = 100.0;

impl Band {
    /// How far `value` may be from `last` (the last stored value) and still
    /// be left out.
    pub fn width(self, last: f64) -> f64 {
        match self {
            Band::Absolute(w) => w,
            Band::Percent(p) => last.abs() * p / 100.0,
        }
    }

    /// `deadband 0.5` or `deadband_percent 1`, as the registry listing shows it.
    pub fn describe(self) -> String {
        match self {
            Band::Absolute(w) => format!("deadband {w}"),
            Band::Percent(p) => format!("deadband_percent {p}"),
        }
    }
}

impl Deadband {
    /// Why this deadband cannot be used on a register of type `t`, if it cannot.
    pub fn check(&self, t: DataType) -> Result<(), String> {
        match self.band {
            Band::Absolute(w) if !w.is_finite() || w < 0.0 => {
                return Err(format!(
                    "deadband {w} must be a finite number, 0 or more (in the register's unit; 0 stores every change)"
                ));
            }
            Band::Percent(p) if !p.is_finite() || !(0.0..=PERCENT_MAX).contains(&p) => {
                return Err(format!(
                    "deadband_percent {p} is outside 0..{PERCENT_MAX} (a percentage of the last stored value)"
                ));
            }
            _ => {}
        }
        if matches!(t, DataType::Bool | DataType::String) && self.band != Band::Absolute(0.0) {
            return Err(format!(
                "a {} register has no distance between two values; only `deadband: 0` (store changes only) applies to it",
                t.as_str()
            ));
        }
        if let Some(h) = self.heartbeat {
            check_heartbeat(h)?;
        }
        Ok(())
    }

    /// `deadband 0.5, heartbeat 15m`, for listings.
    pub fn describe(&self) -> String {
        match self.heartbeat {
            Some(h) => format!("{}, heartbeat {}", self.band.describe(), format_duration(h)),
            None => self.band.describe(),
        }
    }

    /// As the API shows it: `{"deadband": 0.5, "heartbeat": "15m"}` or
    /// `{"deadband_percent": 1, "heartbeat": null}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        let (key, v) = match self.band {
            Band::Absolute(w) => ("deadband", w),
            Band::Percent(p) => ("deadband_percent", p),
        };
        o.insert(key.into(), serde_json::json!(v));
        o.insert(
            "heartbeat".into(),
            serde_json::json!(self.heartbeat.map(format_duration)),
        );
        o.into()
    }

    /// The columns `deadband`, `deadband_percent`, `heartbeat_ms` of
    /// `device_register_map` (migration 0016).
    pub fn columns(d: Option<&Deadband>) -> (Option<f64>, Option<f64>, Option<i64>) {
        let Some(d) = d else {
            return (None, None, None);
        };
        let (absolute, percent) = match d.band {
            Band::Absolute(w) => (Some(w), None),
            Band::Percent(p) => (None, Some(p)),
        };
        let heartbeat = d
            .heartbeat
            .map(|h| i64::try_from(h.as_millis()).unwrap_or(i64::MAX));
        (absolute, percent, heartbeat)
    }

    /// A deadband from its columns, checked for a register of type `t`.
    pub fn from_columns(
        absolute: Option<f64>,
        percent: Option<f64>,
        heartbeat_ms: Option<i64>,
        t: DataType,
    ) -> Result<Option<Deadband>, String> {
        let band = match (absolute, percent) {
            (None, None) if heartbeat_ms.is_some() => {
                return Err("heartbeat_ms needs deadband or deadband_percent".into());
            }
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("deadband and deadband_percent are both set; keep one".into());
            }
            (Some(w), None) => Band::Absolute(w),
            (None, Some(p)) => Band::Percent(p),
        };
        let heartbeat = heartbeat_ms
            .map(|ms| {
                u64::try_from(ms)
                    .map(Duration::from_millis)
                    .map_err(|_| format!("heartbeat_ms {ms} is negative"))
            })
            .transpose()?;
        let d = Deadband { band, heartbeat };
        d.check(t)?;
        Ok(Some(d))
    }
}

/// The longest heartbeat, as `parse_duration` allows: a week.
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(7 * 86_400);

fn check_heartbeat(h: Duration) -> Result<(), String> {
    if h < Duration::from_millis(1) || h > HEARTBEAT_MAX {
        return Err(format!(
            "heartbeat {} is outside 1ms..7d",
            format_duration(h)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(band: Band) -> Deadband {
        Deadband {
            band,
            heartbeat: None,
        }
    }

    #[test]
    fn a_percent_band_follows_the_magnitude_of_the_last_stored_value() {
        assert_eq!(Band::Percent(1.0).width(-200.0), 2.0);
        assert_eq!(Band::Percent(1.0).width(0.0), 0.0);
        assert_eq!(Band::Absolute(0.5).width(1e9), 0.5);
    }

    #[test]
    fn nonsense_bands_are_refused_with_what_would_be_valid() {
        for bad in [f64::NAN, f64::INFINITY, -0.1] {
            let e = db(Band::Absolute(bad)).check(DataType::F32).unwrap_err();
            assert!(e.contains("finite number, 0 or more"), "{e}");
        }
        for bad in [f64::NAN, -1.0, 100.5] {
            let e = db(Band::Percent(bad)).check(DataType::F32).unwrap_err();
            assert!(e.contains("outside 0..100"), "{e}");
        }
        let e = db(Band::Absolute(1.0)).check(DataType::String).unwrap_err();
        assert!(e.contains("only `deadband: 0`"), "{e}");
        let e = db(Band::Percent(0.0)).check(DataType::Bool).unwrap_err();
        assert!(e.contains("a bool register"), "{e}");
        assert_eq!(db(Band::Absolute(0.0)).check(DataType::String), Ok(()));
        assert_eq!(db(Band::Percent(100.0)).check(DataType::U16), Ok(()));
    }

    #[test]
    fn columns_round_trip_and_refuse_what_the_database_would() {
        let d = Deadband {
            band: Band::Percent(2.5),
            heartbeat: Some(Duration::from_secs(900)),
        };
        let (a, p, h) = Deadband::columns(Some(&d));
        assert_eq!(Deadband::from_columns(a, p, h, DataType::F32), Ok(Some(d)));
        assert_eq!(Deadband::columns(None), (None, None, None));
        assert_eq!(
            Deadband::from_columns(None, None, None, DataType::F32),
            Ok(None)
        );
        assert!(Deadband::from_columns(Some(1.0), Some(1.0), None, DataType::F32).is_err());
        assert!(Deadband::from_columns(None, None, Some(1000), DataType::F32).is_err());
        assert!(Deadband::from_columns(Some(1.0), None, Some(-5), DataType::F32).is_err());
        assert!(Deadband::from_columns(Some(1.0), None, Some(0), DataType::F32).is_err());
        assert!(Deadband::from_columns(Some(-1.0), None, None, DataType::F32).is_err());
    }
}
