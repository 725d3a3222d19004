//! Keeping history for a bounded time. With TimescaleDB a retention policy
//! drops whole chunks (cheap); without it, readings older than the retention
//! are deleted in bounded batches, so one long DELETE never holds locks or
//! bloats the WAL while polling goes on.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;

use crate::db::{Db, has_timescaledb};

/// Rows deleted per statement by the batched retention job.
pub const DELETE_BATCH: i64 = 10_000;
/// How often the batched retention job runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// A retention setting as given on the command line (`None`: keep everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// `parse_retention` for clap, which needs one concrete type per argument.
pub fn parse_retention_arg(s: &str) -> Result<Retention, String> {
    parse_retention(s).map(Retention)
}

/// Parses a retention setting: a number of days (`365d`), weeks (`52w`) or
/// hours (`48h`), or `off` to keep everything.
pub fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a retention; write e.g. 365d, 52w, 48h or off"))?;
    let hours = match unit {
        "h" => n,
        "d" => n * 24,
        "w" => n * 24 * 7,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit; write e.g. 365d, 52w, 48h or off"
            ));
        }
    };
    if hours == 0 {
        return Err("retention must be longer than 0; use `off` to keep everything".into());
    }
    Ok(Some(Duration::from_secs(hours * 3600)))
}

/// Sets TimescaleDB's retention policy to `keep`, replacing any earlier one.
/// Returns false when the database has no TimescaleDB (run [`delete_older`]
/// periodically instead).
pub async fn set_policy(db: &Db, keep: Option<Duration>) -> anyhow::Result<bool> {
    let Db::Postgres(pool) = db else {
        return Ok(false);
    };
    if !has_timescaledb(pool).await? {
        return Ok(false);
    }
    sqlx::query("SELECT remove_retention_policy('register_readings', if_exists => true)")
        .execute(pool)
        .await
        .context("cannot remove the old retention policy")?;
    if let Some(keep) = keep {
        sqlx::query("SELECT add_retention_policy('register_readings', drop_after => make_interval(secs => $1))")
            .bind(keep.as_secs_f64())
            .execute(pool)
            .await
            .context("cannot add the retention policy")?;
    }
    Ok(true)
}

/// One batch of expired rows; the same SQL on PostgreSQL and SQLite (row
/// values in `IN`), with `ts` bound as timestamptz or as microseconds.
const DELETE_EXPIRED: &str = "DELETE FROM register_readings WHERE (register_id, ts) IN \
     (SELECT register_id, ts FROM register_readings WHERE ts < $1 LIMIT $2)";

/// Deletes readings older than `keep`, `DELETE_BATCH` rows per statement;
/// returns how many were deleted.
pub async fn delete_older(db: &Db, keep: Duration) -> anyhow::Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let n = match db {
            Db::Postgres(p) => sqlx::query(DELETE_EXPIRED)
                .bind(cutoff)
                .bind(DELETE_BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Db::Sqlite(p) => sqlx::query(DELETE_EXPIRED)
                .bind(cutoff.timestamp_micros())
                .bind(DELETE_BATCH)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .context("cannot delete expired readings")?;
        total += n;
        if n < DELETE_BATCH as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_settings_parse_days_weeks_hours_and_off() {
        assert_eq!(
            parse_retention("365d"),
            Ok(Some(Duration::from_secs(365 * 86_400)))
        );
        assert_eq!(
            parse_retention("2w"),
            Ok(Some(Duration::from_secs(14 * 86_400)))
        );
        assert_eq!(
            parse_retention("48h"),
            Ok(Some(Duration::from_secs(48 * 3600)))
        );
        assert_eq!(parse_retention("off"), Ok(None));
        assert!(parse_retention("0d").unwrap_err().contains("use `off`"));
        assert!(parse_retention("1y").unwrap_err().contains("unknown unit"));
    }
}
