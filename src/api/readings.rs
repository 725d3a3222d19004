//! `GET /api/readings`: a time range of a device's stored readings, raw or
//! per bucket, read through the API's own database pool.
//!
//! One answer holds at most `--api-max-response` bytes. The rows are
//! serialized straight into a buffer that refuses to grow past the cap (no
//! JSON tree in between: that tree cost several times the answer), and the
//! query asks for no more rows than the cap could hold, so a refused answer
//! never costs more than about the cap either. A range that does not fit is
//! a 400 that says how to page through it.

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;

use super::ApiState;
use super::caller::Scope;
use super::error::ApiError;
use super::limits::format_bytes;
use super::params::Params;
use crate::history::query::{self, QueryError, RangeQuery, Rows};
use crate::reading::rfc3339;
use crate::registry::{format_duration, parse_duration};

const PARAMS: &[&str] = &["device", "register", "from", "to", "bucket", "limit"];

/// No row serializes to fewer bytes (a unit test checks): the most rows an
/// answer of `max_response` bytes can hold is `max_response / MIN_ROW_BYTES`.
pub(super) const MIN_ROW_BYTES: usize = 64;

#[derive(Serialize)]
struct Answer<'a> {
    device: &'a str,
    register: Option<&'a str>,
    from: String,
    to: String,
    bucket: Option<String>,
    rows: &'a Rows,
}

/// For a tenant's scope, a device of another tenant is the same 404 as a
/// device the registry does not know.
pub(crate) async fn readings(
    State(state): State<ApiState>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let s = &state.0;
    let params = Params::parse(raw.as_deref(), PARAMS)?;
    let q = range_query(&params)?;
    query::validate(&q).map_err(|e| ApiError::from_query(e, &s.db_warn))?;
    let cap = s.limits.max_response;
    // Ask for no more rows than the cap can hold: more matching is refused
    // by the query before they are all read.
    let fitting = (cap / MIN_ROW_BYTES).max(1);
    let capped = RangeQuery {
        limit: q.limit.min(fitting),
        ..q.clone()
    };
    let rows = match query::range_of_tenant(&s.query_db, &capped, scope.tenant.as_deref()).await {
        Ok(rows) => rows,
        Err(QueryError::TooMany { limit, .. }) if limit < q.limit => {
            return Err(too_large(cap, &q));
        }
        Err(e) => return Err(ApiError::from_query(e, &s.db_warn)),
    };
    // Writing a few MiB of JSON is milliseconds of CPU: on the blocking
    // pool, so that it never holds a worker the pollers' timers need.
    let q2 = q.clone();
    let body = tokio::task::spawn_blocking(move || serialize(&q2, &rows, cap))
        .await
        .map_err(|e| ApiError::busy(format!("the answer could not be written: {e}")))?;
    match body {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response()),
        None => Err(too_large(cap, &q)),
    }
}

/// The answer's JSON, or `None` when it would pass `cap` bytes.
fn serialize(q: &RangeQuery, rows: &Rows, cap: usize) -> Option<Vec<u8>> {
    let answer = Answer {
        device: &q.device,
        register: q.register.as_deref(),
        from: rfc3339(q.from),
        to: rfc3339(q.to),
        bucket: q.bucket.map(format_duration),
        rows,
    };
    let mut out = Capped::new(cap);
    serde_json::to_writer(&mut out, &answer).ok()?;
    Some(out.buf)
}

/// The query the parameters describe (defaults: the last hour, 10,000 rows).
fn range_query(params: &Params) -> Result<RangeQuery, ApiError> {
    let device = params
        .non_empty("device")
        .ok_or_else(|| ApiError::bad_request("`device` is required, e.g. ?device=boiler-1"))?;
    let now = Utc::now();
    let instant = |key: &str, default: &str| {
        let text = params.get(key).unwrap_or(default);
        query::parse_instant(text, now).map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
    };
    let bucket = params
        .get("bucket")
        .map(|b| parse_duration(b).map_err(|e| ApiError::bad_request(format!("bucket: {e}"))))
        .transpose()?;
    let limit = match params.get("limit") {
        None => query::DEFAULT_LIMIT,
        Some(l) => l.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "limit: `{l}` is not a number between 1 and {}",
                query::MAX_LIMIT
            ))
        })?,
    };
    Ok(RangeQuery {
        device: device.to_string(),
        register: params.non_empty("register").map(str::to_string),
        from: instant("from", "now-1h")?,
        to: instant("to", "now")?,
        bucket,
        limit,
    })
}

/// The 400 for a range whose answer would pass the cap: how to page.
fn too_large(cap: usize, q: &RangeQuery) -> ApiError {
    let bucket = if q.bucket.is_some() {
        "a coarser bucket"
    } else {
        "a bucket (e.g. bucket=1m)"
    };
    ApiError::bad_request(format!(
        "the answer would be larger than {} (--api-max-response); page through the range with narrower from/to (each page's `to` the next page's `from`), pick one register, use {bucket}, or lower limit",
        format_bytes(cap)
    ))
}

/// A buffer that refuses to grow past `cap` bytes.
pub(super) struct Capped {
    pub(super) buf: Vec<u8>,
    cap: usize,
}

impl Capped {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap.min(64 * 1024)),
            cap,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > self.cap {
            return Err(std::io::Error::other("the answer passes the response cap"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::query::{BucketRow, RawRow};
    use std::io::Write as _;

    #[test]
    fn no_row_is_smaller_than_the_bound_the_cap_relies_on() {
        let ts = chrono::DateTime::from_timestamp(0, 0).unwrap();
        let raw = Rows::Raw(vec![RawRow {
            register: String::new(),
            ts,
            value: None,
            value_text: None,
            quality: String::new(),
            detail: None,
        }]);
        let bucket = Rows::Buckets(vec![BucketRow {
            register: String::new(),
            bucket: ts,
            avg: 0.0,
            min: 0.0,
            max: 0.0,
            count: 0,
        }]);
        for rows in [raw, bucket] {
            // Each row adds itself and a comma to the array.
            let row = serde_json::to_vec(&rows).unwrap().len() - 2 + 1;
            assert!(row >= MIN_ROW_BYTES, "{row} bytes: {rows:?}");
        }
    }

    #[test]
    fn the_capped_buffer_refuses_to_pass_its_cap() {
        let mut out = Capped::new(10);
        out.write_all(b"0123456789").unwrap();
        assert!(out.write_all(b"x").is_err());
        assert_eq!(out.buf.len(), 10);
    }
}
