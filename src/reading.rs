//! The record that flows downstream from the poller to every sink.
//!
//! A poll of one device produces one [`PollReport`]: the device (shared, not
//! copied), the outcome of the connection, and one [`Reading`] per register
//! polled. Sinks receive the report behind an `Arc`, so fanning out to memory,
//! Redis and history costs no copies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::registry::{Device, Register};

/// A reading's timestamp as every contract writes it (Redis, the HTTP API,
/// CSV and JSON output): RFC 3339, UTC, milliseconds, `Z`.
pub fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A number as regpoll prints it everywhere a person or a script reads it
/// (`read`, `check --probe`, `query`, CSV): the shortest text that parses
/// back to exactly the same f64, so `230.1` and not `230.100006` (too
/// short: another value) or `230.10000000000002` (noise). Very small and
/// very large magnitudes use exponent form (`1.2e-40`, `3e20`) rather than
/// dozens of zeros; `-0` prints as `0`. JSON output (serde_json) uses the
/// same shortest digits.
pub fn shortest(n: f64) -> String {
    if n == 0.0 {
        "0".to_string()
    } else if !n.is_finite() {
        non_finite_name(n).to_string()
    } else if (1e-4..1e15).contains(&n.abs()) {
        // Display and LowerExp without a precision are shortest round-trip.
        format!("{n}")
    } else {
        format!("{n:e}")
    }
}

/// How a non-finite number is named in a reading's detail and in output:
/// `NaN`, `+Inf` or `-Inf`. (`Finite` for any other number.)
pub fn non_finite_name(n: f64) -> &'static str {
    if n.is_nan() {
        "NaN"
    } else if n == f64::INFINITY {
        "+Inf"
    } else if n == f64::NEG_INFINITY {
        "-Inf"
    } else {
        "finite"
    }
}

/// How far a value can be trusted (the quality contract in DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// The read succeeded and the value is usable.
    Good,
    /// No usable value; `detail` says why.
    Bad,
    /// A value was read but should not be trusted as is; `detail` says why.
    Uncertain,
}

impl Quality {
    pub const ALL: [Quality; 3] = [Quality::Good, Quality::Uncertain, Quality::Bad];

    /// Position in [`Quality::ALL`], for per-quality counters.
    pub fn index(self) -> usize {
        match self {
            Quality::Good => 0,
            Quality::Uncertain => 1,
            Quality::Bad => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad => "bad",
            Quality::Uncertain => "uncertain",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded value, after scale and offset.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Nothing usable was read (quality `bad`).
    None,
    Bool(bool),
    Number(f64),
    /// A `string` register's text (stored in `register_readings.value_text`).
    Text(String),
}

impl Value {
    /// The value for people: numbers in their shortest round-trip form
    /// ([`shortest`]), strings quoted, `—` for none.
    pub fn for_people(&self) -> String {
        match self {
            Value::None => "—".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => shortest(*n),
            Value::Text(t) => format!("{t:?}"),
        }
    }

    /// The value as stored in `register_readings.value` (bool as 0/1).
    /// NaN and infinity are none: stored as NULL, so that no aggregate
    /// (avg, min, max, the hourly rollup) ever meets one. The poller
    /// already turns them into [`Value::None`]; this keeps any other
    /// producer from storing one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::None => None,
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Number(n) => n.is_finite().then_some(*n),
            Value::Text(_) => None,
        }
    }

    /// The value as stored in `register_readings.value_text`.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The value as JSON: numbers as numbers, bools as true/false, none (and
    /// NaN or infinity, which JSON cannot carry) as null.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::None => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Text(t) => serde_json::Value::String(t.clone()),
        }
    }
}

/// One value of one register at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Index of the register in `PollReport::device.registers`.
    pub index: usize,
    /// When the request that carried this register was sent.
    pub ts: DateTime<Utc>,
    pub value: Value,
    pub quality: Quality,
    pub detail: Option<String>,
}

/// Everything one poll of one device produced.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub device: Arc<Device>,
    /// When the poll started (the first request was sent).
    pub started: DateTime<Utc>,
    /// How long the whole poll took.
    pub latency: Duration,
    /// The first error of the poll, if any request failed.
    pub error: Option<String>,
    /// Whether at least one request got an answer (good or uncertain values,
    /// or a Modbus exception: the device itself is reachable).
    pub reachable: bool,
    /// The device's unit is demoted (it timed out `demote_after` times in a
    /// row): this poll's requests were not sent.
    pub demoted: bool,
    pub readings: Vec<Reading>,
}

impl PollReport {
    /// The device's state as published: `up` (something answered), `down`,
    /// or `demoted` (not asked until its backoff expires).
    pub fn state(&self) -> &'static str {
        state_name(self.reachable, self.demoted)
    }

    pub fn register(&self, r: &Reading) -> &Register {
        &self.device.registers[r.index]
    }
}

/// `up`, `down` or `demoted`, as Redis, the API and the status page show it.
pub fn state_name(up: bool, demoted: bool) -> &'static str {
    match (up, demoted) {
        (true, _) => "up",
        (false, true) => "demoted",
        (false, false) => "down",
    }
}

#[cfg(test)]
mod tests {
    use super::Value;

    #[test]
    fn values_for_people_are_shortest_round_trip() {
        let n = |x: f64| Value::Number(x).for_people();
        assert_eq!(n(-48.0 / 10.0), "-4.8");
        // Six decimals cut what the device sent; every digit is kept.
        assert_eq!(n(123_456_789.012), "123456789.012");
        assert_eq!(n(0.001_234_567_8), "0.0012345678");
        // Noise that is really in the value is shown, as stored.
        assert_eq!(n(-48.0 * 0.1), "-4.800000000000001");
        assert_eq!(n(114.0), "114");
        assert_eq!(n(7_733_248.0), "7733248");
        assert_eq!(n(87.5), "87.5");
        assert_eq!(n(0.001), "0.001");
        assert_eq!(n(0.0), "0");
        assert_eq!(n(-0.0), "0");
        assert_eq!(n(1.2e-40), "1.2e-40");
        assert_eq!(n(3.0e20), "3e20");
        assert_eq!(n(f64::NAN), "NaN");
        assert_eq!(n(f64::NEG_INFINITY), "-Inf");
        for x in [
            230.1,
            1.0 / 3.0,
            1.2e-40,
            6.02e23,
            -0.000_1,
            999_999_999_999_999.9,
        ] {
            assert_eq!(n(x).parse::<f64>().unwrap(), x, "{x}");
        }
        assert_eq!(Value::Bool(true).for_people(), "true");
        assert_eq!(Value::None.for_people(), "—");
        assert_eq!(Value::Text("SN-1".into()).for_people(), "\"SN-1\"");
    }

    #[test]
    fn non_finite_numbers_are_never_stored_as_numbers() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Value::Number(x).as_f64(), None, "{x}");
            assert_eq!(Value::Number(x).to_json(), serde_json::Value::Null);
        }
        assert_eq!(Value::Number(230.1).as_f64(), Some(230.1));
    }
}
