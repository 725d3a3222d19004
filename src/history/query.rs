//! Reading history back: the latest stored value of each register of a device,
//! and a time range of one or all registers, raw or aggregated per bucket.
//! Shared by the HTTP API (`/api/readings`) and `regpoll query`, on
//! PostgreSQL (with or without TimescaleDB) and SQLite alike.
//!
//! The registry names the device's registers; the [`HistoryStore`] reads
//! their readings. Every query goes through the primary key
//! `(register_id, ts)`: one range scan per register, never a scan by device.
//! Buckets are aligned to the Unix epoch on both databases (`date_bin` on
//! PostgreSQL, integer division of the microsecond timestamps on SQLite), so
//! both return the same buckets. A bucket of whole hours is read from the
//! hourly rollup, one of whole minutes from the 1-minute rollup (see
//! [`rollup::read`]), any other from the raw rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::rollup;
use super::store::{self, HistoryStore, Span};
use crate::db::Db;
use crate::registry::format_duration;
use crate::registry::store::RegisterRef;

/// Rows returned when the caller does not say.
pub const DEFAULT_LIMIT: usize = 10_000;
/// The most rows one query may return.
pub const MAX_LIMIT: usize = 100_000;
/// Smallest bucket accepted.
pub const MIN_BUCKET: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The device or register does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// More rows match than the query's limit; the message says how to
    /// narrow it (HTTP 400). Apart from `Invalid` so that a caller that
    /// lowered the limit itself (the API's response cap) can say so.
    #[error("{message}")]
    TooMany { limit: usize, message: String },
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        QueryError::Db(anyhow::Error::new(e).context("history query failed"))
    }
}

/// A time range of readings of one device.
#[derive(Debug, Clone)]
pub struct RangeQuery {
    pub device: String,
    /// One register, or every register of the device.
    pub register: Option<String>,
    /// Inclusive start and exclusive end.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Aggregate per bucket of this width instead of returning raw rows.
    pub bucket: Option<Duration>,
    pub limit: usize,
}

/// One stored reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RawRow {
    pub register: String,
    #[serde(serialize_with = "ts_json")]
    pub ts: DateTime<Utc>,
    pub value: Option<f64>,
    pub value_text: Option<String>,
    pub quality: String,
    pub detail: Option<String>,
}

/// Aggregates of one register over one bucket, over its good and uncertain
/// readings (like `register_readings_hourly`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketRow {
    pub register: String,
    #[serde(serialize_with = "ts_json")]
    pub bucket: DateTime<Utc>,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Rows {
    Raw(Vec<RawRow>),
    Buckets(Vec<BucketRow>),
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Raw(r) => r.len(),
            Rows::Buckets(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The newest stored reading of one register (`None` fields when it has none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestRow {
    pub register: String,
    pub unit: Option<String>,
    #[serde(serialize_with = "opt_ts_json")]
    pub ts: Option<DateTime<Utc>>,
    /// A number, `true`/`false` for bit registers, a string, or null.
    pub value: serde_json::Value,
    pub quality: Option<String>,
    pub detail: Option<String>,
}

fn ts_json<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::reading::rfc3339(*ts))
}

fn opt_ts_json<S: serde::Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => ts_json(ts, s),
        None => s.serialize_none(),
    }
}

/// The device's registers (inactive ones too: their history stays queryable),
/// or `NotFound` naming the device. With `tenant`, a device of another
/// tenant (or of none) is not found either, with the same message, so that
/// a tenant cannot tell another's device from one that does not exist.
async fn registers(
    db: &Db,
    device: &str,
    tenant: Option<&str>,
) -> Result<Vec<RegisterRef>, QueryError> {
    db.device_registers(device, tenant).await?.ok_or_else(|| {
        QueryError::NotFound(format!(
            "no device named `{device}` in the registry (`regpoll devices list` shows them)"
        ))
    })
}

/// The newest stored reading of every register of `device`.
pub async fn latest(db: &Db, device: &str) -> Result<Vec<LatestRow>, QueryError> {
    let store = store::for_db(db);
    let mut out = Vec::new();
    for reg in registers(db, device, None).await? {
        let (ts, value, text, quality, detail) = match store.latest(reg.id).await? {
            Some(r) => (Some(r.ts), r.value, r.value_text, Some(r.quality), r.detail),
            None => (None, None, None, None, None),
        };
        let value = match (text, value) {
            (Some(t), _) => json!(t),
            (None, Some(v)) if reg.data_type == "bool" => json!(v != 0.0),
            (None, Some(v)) => json!(v),
            (None, None) => serde_json::Value::Null,
        };
        out.push(LatestRow {
            register: reg.name,
            unit: reg.unit,
            ts,
            value,
            quality,
            detail,
        });
    }
    Ok(out)
}

/// Checks the query's own parameters, before touching the database.
pub fn validate(q: &RangeQuery) -> Result<(), QueryError> {
    if q.from >= q.to {
        return Err(QueryError::Invalid(format!(
            "from ({}) must be before to ({})",
            crate::reading::rfc3339(q.from),
            crate::reading::rfc3339(q.to)
        )));
    }
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(QueryError::Invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {}",
            q.limit
        )));
    }
    if let Some(b) = q.bucket
        && b < MIN_BUCKET
    {
        return Err(QueryError::Invalid(format!(
            "bucket must be at least {}, e.g. 1m",
            format_duration(MIN_BUCKET)
        )));
    }
    Ok(())
}

/// Readings of the query's range, raw or per bucket, ordered by register
/// (in address order) and time. More matching rows than `limit` is an error
/// that says how to narrow the query, never a silently cut result.
pub async fn range(db: &Db, q: &RangeQuery) -> Result<Rows, QueryError> {
    range_of_tenant(db, q, None).await
}

/// [`range`] for a device of `tenant` only (`None`: any device): another
/// tenant's device is `NotFound` exactly as a device that does not exist.
pub async fn range_of_tenant(
    db: &Db,
    q: &RangeQuery,
    tenant: Option<&str>,
) -> Result<Rows, QueryError> {
    validate(q)?;
    let mut regs = registers(db, &q.device, tenant).await?;
    if let Some(name) = &q.register {
        regs.retain(|r| &r.name == name);
        if regs.is_empty() {
            return Err(QueryError::NotFound(format!(
                "device `{}` has no register named `{name}`",
                q.device
            )));
        }
    }
    let store = store::for_db(db);
    // Read once for every register, so all of them are cut at one instant.
    let watermark = match q.bucket.and_then(rollup::tier_for) {
        Some(_) => store.rollup_watermark().await?,
        None => None,
    };
    // One more than allowed, to tell "exactly the limit" from "too many".
    let mut left = q.limit + 1;
    let mut rows = match q.bucket {
        None => Rows::Raw(Vec::new()),
        Some(_) => Rows::Buckets(Vec::new()),
    };
    for reg in &regs {
        let n = match (&mut rows, q.bucket) {
            (Rows::Raw(out), _) => raw(&*store, reg, q, left, out).await?,
            (Rows::Buckets(out), Some(bucket)) => {
                let read = Bucketed {
                    width: bucket,
                    watermark,
                };
                buckets(&*store, reg, q, read, left, out).await?
            }
            (Rows::Buckets(_), None) => unreachable!("bucket rows only with a bucket"),
        };
        left -= n;
        if left == 0 {
            let hint = if q.bucket.is_some() {
                "a coarser bucket"
            } else {
                "a bucket (e.g. bucket=1m)"
            };
            return Err(QueryError::TooMany {
                limit: q.limit,
                message: format!(
                    "more than {} rows match; narrow from/to, pick one register, use {hint}, or raise limit (at most {MAX_LIMIT})",
                    q.limit
                ),
            });
        }
    }
    Ok(rows)
}

/// What one register's part of `q` reads, at most `limit` rows.
fn span(reg: &RegisterRef, q: &RangeQuery, limit: usize) -> Span {
    Span {
        register_id: reg.id,
        from: q.from,
        to: q.to,
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
    }
}

async fn raw(
    store: &dyn HistoryStore,
    reg: &RegisterRef,
    q: &RangeQuery,
    limit: usize,
    out: &mut Vec<RawRow>,
) -> Result<usize, QueryError> {
    let rows = store.range(&span(reg, q, limit)).await?;
    let n = rows.len();
    out.extend(rows.into_iter().map(|r| RawRow {
        register: reg.name.clone(),
        ts: r.ts,
        value: r.value,
        value_text: r.value_text,
        quality: r.quality,
        detail: r.detail,
    }));
    Ok(n)
}

/// How a bucketed query reads: the width, and where the rollups stop
/// answering (see [`HistoryStore::rollup_watermark`]).
#[derive(Debug, Clone, Copy)]
struct Bucketed {
    width: Duration,
    watermark: Option<DateTime<Utc>>,
}

async fn buckets(
    store: &dyn HistoryStore,
    reg: &RegisterRef,
    q: &RangeQuery,
    read: Bucketed,
    limit: usize,
    out: &mut Vec<BucketRow>,
) -> Result<usize, QueryError> {
    let span = span(reg, q, limit);
    let rows = match rollup::tier_for(read.width) {
        Some(tier) => rollup::read(store, &span, tier, read.width, read.watermark).await?,
        None => store.buckets(&span, read.width).await?,
    };
    let n = rows.len();
    out.extend(rows.into_iter().map(|b| BucketRow {
        register: reg.name.clone(),
        bucket: b.start,
        avg: clamp_avg(b.avg, b.min, b.max),
        min: b.min,
        max: b.max,
        count: b.count,
    }));
    Ok(n)
}

/// A bucket's average kept inside its own [min, max]. The database sums in
/// floating point, so the average of values that are all 123456.7 can come
/// back as 123456.70000000011, above the max: a chart scaled to the bucket's
/// range then draws rounding noise as a spike. The true average of finite
/// numbers always lies in [min, max], so clamping only removes that error.
fn clamp_avg(avg: f64, min: f64, max: f64) -> f64 {
    if min <= max { avg.clamp(min, max) } else { avg }
}

/// How far back a query reaches: a duration like `30m`, `6h`, `7d` or `52w`
/// (at most 100 years).
pub fn parse_lookback(text: &str) -> Result<std::time::Duration, String> {
    crate::registry::parse_span(text, 100 * 366 * 86_400_000, "100 years")
}

/// Parses an instant: RFC 3339 (`2026-11-23T10:00:00Z`), `now`, or `now-` and
/// a [`parse_lookback`] duration (`now-1h`, `now-7d`).
pub fn parse_instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-") {
        let d = parse_lookback(ago)?;
        return chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("`{text}` is too far back"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "`{text}` is not a time; use RFC 3339 (2026-11-23T10:00:00Z), `now` or `now-1h`"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_bucket_average_never_leaves_its_range() {
        // What PostgreSQL's avg gives for ten readings of 123456.7.
        let sum: f64 = std::iter::repeat_n(123_456.7, 10).sum();
        let avg = sum / 10.0;
        assert_ne!(avg, 123_456.7, "the rounding this guards against");
        assert_eq!(clamp_avg(avg, 123_456.7, 123_456.7), 123_456.7);
        assert_eq!(clamp_avg(1.0 - 1e-16, 1.0, 2.0), 1.0);
        assert_eq!(clamp_avg(1.5, 1.0, 2.0), 1.5);
    }

    #[test]
    fn instants_parse_in_three_forms() {
        let now = at("2026-11-23T10:00:00Z");
        assert_eq!(parse_instant("now", now).unwrap(), now);
        assert_eq!(
            parse_instant("now-90m", now).unwrap(),
            at("2026-11-23T08:30:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-23T11:00:00+01:00", now).unwrap(),
            now
        );
        let e = parse_instant("yesterday", now).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        assert!(parse_instant("now-1x", now).is_err());
        // Analysts look back days and weeks, beyond devices.yaml's 7-day cap.
        assert_eq!(
            parse_instant("now-30d", now).unwrap(),
            at("2026-10-24T10:00:00Z")
        );
        assert_eq!(
            parse_instant("now-2w", now).unwrap(),
            at("2026-11-09T10:00:00Z")
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let now = at("2026-11-23T10:00:00Z");
        let ok = RangeQuery {
            device: "d".into(),
            register: None,
            from: at("2026-11-23T09:00:00Z"),
            to: now,
            bucket: None,
            limit: DEFAULT_LIMIT,
        };
        assert!(validate(&ok).is_ok());
        let backwards = RangeQuery {
            from: now,
            to: at("2026-11-23T09:00:00Z"),
            ..ok.clone()
        };
        assert!(
            matches!(validate(&backwards), Err(QueryError::Invalid(m)) if m.contains("must be before"))
        );
        let too_many = RangeQuery {
            limit: MAX_LIMIT + 1,
            ..ok.clone()
        };
        assert!(matches!(validate(&too_many), Err(QueryError::Invalid(m)) if m.contains("limit")));
        let tiny = RangeQuery {
            bucket: Some(Duration::from_micros(10)),
            ..ok
        };
        assert!(matches!(validate(&tiny), Err(QueryError::Invalid(m)) if m.contains("bucket")));
    }
}
