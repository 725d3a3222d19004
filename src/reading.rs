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
    /// The value for people: numbers without float noise (`-4.8`, not
    /// `-4.800000000000001`; integers without decimals), tiny and huge
    /// numbers in exponent form (a float read with the wrong word order shows
    /// as `1.2e-40`, not `0`), strings quoted, `—` for none.
    pub fn for_people(&self) -> String {
        match self {
            Value::None => "—".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => {
                // Six decimals cover every scale in use (0.001 and finer is
                // rare); trailing zeros carry no information.
                fn trim(digits: &str) -> &str {
                    if digits.contains('.') {
                        digits.trim_end_matches('0').trim_end_matches('.')
                    } else {
                        digits
                    }
                }
                let n = *n;
                if !n.is_finite() {
                    n.to_string()
                } else if n != 0.0 && !(1e-4..1e15).contains(&n.abs()) {
                    let e = format!("{n:.6e}");
                    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
                    format!("{}e{exp}", trim(mantissa))
                } else {
                    match trim(&format!("{n:.6}")) {
                        "-0" => "0".to_string(),
                        s => s.to_string(),
                    }
                }
            }
            Value::Text(t) => format!("{t:?}"),
        }
    }

    /// The value as stored in `register_readings.value` (bool as 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::None => None,
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Number(n) => Some(*n),
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
    pub readings: Vec<Reading>,
}

impl PollReport {
    pub fn register(&self, r: &Reading) -> &Register {
        &self.device.registers[r.index]
    }
}

#[cfg(test)]
mod tests {
    use super::Value;

    #[test]
    fn values_for_people_drop_float_noise_but_not_information() {
        let n = |x: f64| Value::Number(x).for_people();
        assert_eq!(n(-48.0 * 0.1), "-4.8");
        assert_eq!(n(114.0), "114");
        assert_eq!(n(7_733_248.0), "7733248");
        assert_eq!(n(87.5), "87.5");
        assert_eq!(n(0.001), "0.001");
        assert_eq!(n(0.0), "0");
        assert_eq!(n(-0.0), "0");
        assert_eq!(n(1.2e-40), "1.2e-40");
        assert_eq!(n(3.0e20), "3e20");
        assert_eq!(n(f64::NAN), "NaN");
        assert_eq!(Value::Bool(true).for_people(), "true");
        assert_eq!(Value::None.for_people(), "—");
        assert_eq!(Value::Text("SN-1".into()).for_people(), "\"SN-1\"");
    }
}
