//! The record that flows downstream from the poller to every sink.
//!
//! A poll of one device produces one [`PollReport`]: the device (shared, not
//! copied), the outcome of the connection, and one [`Reading`] per register
//! polled. Sinks receive the report behind an `Arc`, so fanning out to memory,
//! Redis and history costs no copies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::registry::{Device, Register};

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
