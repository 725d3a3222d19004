//! The JSON of a latest value (the Redis hash field contract, also served
//! by the HTTP API) written fast, straight into the bytes
//! the Redis writer sends.

use chrono::{DateTime, Utc};
use serde_json::json;

pub use crate::reading::rfc3339;
use crate::reading::{PollReport, Quality, Reading, Value};

/// A latest value as JSON (the Redis hash field contract, also served by the
/// HTTP API): `detail` only when the quality is not good.
pub fn latest_json(
    value: &Value,
    quality: Quality,
    ts: DateTime<Utc>,
    unit: Option<&str>,
    detail: Option<&str>,
) -> serde_json::Value {
    let mut v = json!({
        "value": value.to_json(),
        "quality": quality.as_str(),
        "ts": rfc3339(ts),
        "unit": unit,
    });
    if quality != Quality::Good {
        v["detail"] = json!(detail);
    }
    v
}

/// Writes `ts` as `rfc3339` does (UTC, milliseconds, `Z`) without the
/// formatting machinery: it runs for every value of every poll.
pub(crate) fn push_rfc3339(out: &mut Vec<u8>, ts: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    // The naive UTC time, so that the fields below are not each computed
    // through the time zone (Utc's offset is zero, but adding it is not free).
    let ts = ts.naive_utc();
    let year = ts.year();
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(rfc3339(ts.and_utc()).as_bytes());
        return;
    }
    let digits = |out: &mut Vec<u8>, v: u32, n: u32| {
        for i in (0..n).rev() {
            out.push(b'0' + ((v / 10u32.pow(i)) % 10) as u8);
        }
    };
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, ts.month(), 2);
    out.push(b'-');
    digits(out, ts.day(), 2);
    out.push(b'T');
    digits(out, ts.hour(), 2);
    out.push(b':');
    digits(out, ts.minute(), 2);
    out.push(b':');
    // A leap second shows as :60, as chrono writes it.
    let nanos = ts.nanosecond();
    digits(out, ts.second() + nanos / 1_000_000_000, 2);
    out.push(b'.');
    digits(out, (nanos % 1_000_000_000) / 1_000_000, 3);
    out.push(b'Z');
}

/// A JSON string or number, written by serde_json (escaping, shortest
/// round-trip floats) without building a `serde_json::Value`.
pub(crate) fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a number into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Where a timestamp was last written into a buffer, to copy rather than
/// format again: the readings of one request share theirs.
pub(crate) type LastTs = Option<(DateTime<Utc>, std::ops::Range<usize>)>;

/// The bytes of [`latest_json`] for one reading, written straight into `out`.
pub(crate) fn push_latest_json(
    out: &mut Vec<u8>,
    report: &PollReport,
    r: &Reading,
    last_ts: &mut LastTs,
) {
    out.extend_from_slice(b"{\"value\":");
    match &r.value {
        Value::None => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) if n.is_finite() => push_json(out, n),
        Value::Number(_) => out.extend_from_slice(b"null"),
        Value::Text(t) => push_json(out, t.as_str()),
    }
    out.extend_from_slice(b",\"quality\":\"");
    out.extend_from_slice(r.quality.as_str().as_bytes());
    out.extend_from_slice(b"\",\"ts\":\"");
    match last_ts {
        Some((ts, at)) if *ts == r.ts => out.extend_from_within(at.clone()),
        _ => {
            let from = out.len();
            push_rfc3339(out, r.ts);
            *last_ts = Some((r.ts, from..out.len()));
        }
    }
    out.extend_from_slice(b"\",\"unit\":");
    match &report.register(r).unit {
        Some(u) => push_json(out, u),
        None => out.extend_from_slice(b"null"),
    }
    if r.quality != Quality::Good {
        out.extend_from_slice(b",\"detail\":");
        match &r.detail {
            Some(d) => push_json(out, d.as_str()),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}
