//! Keeping history for a bounded time. With TimescaleDB a retention policy
//! drops whole chunks (cheap); without it, readings older than the retention
//! are deleted in bounded batches, so one long DELETE never holds locks or
//! bloats the WAL while polling goes on.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;

use super::store;
use crate::db::Db;

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
    store::for_db(db).set_retention_policy(keep).await
}

/// Deletes readings older than `keep`, `DELETE_BATCH` rows per statement;
/// returns how many were deleted.
pub async fn delete_older(db: &Db, keep: Duration) -> anyhow::Result<u64> {
    let store = store::for_db(db);
    let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let n = store
            .delete_before(cutoff, DELETE_BATCH)
            .await
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
