//! Keeping history for a bounded time, per tier: the raw readings
//! (`--retention`), the 1-minute rollup (`--retention-1m`) and the hourly
//! one (`--retention-1h`). With TimescaleDB retention policies drop whole
//! chunks (cheap); without it, rows older than their tier's retention are
//! deleted in bounded batches, so one long DELETE never holds locks or
//! bloats the WAL while polling goes on.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;

use super::rollup::{Horizon, Tier};
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

/// A rollup's retention as given on the command line: a fixed one, or
/// `auto` (resolved against its source's by [`RollupRetention::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupRetention {
    Auto,
    Keep(Option<Duration>),
}

/// What `auto` keeps the 1-minute rollup for at least: two years.
pub const MINUTE_AUTO: Duration = Duration::from_secs(730 * 86_400);

impl RollupRetention {
    /// The retention to use when the rollup's source is kept for `source`:
    /// `auto` is [`MINUTE_AUTO`], or `source` when that is longer (forever
    /// when the source is kept forever), so it never trips
    /// [`Tiers::check`].
    pub fn resolve(self, source: Option<Duration>) -> Option<Duration> {
        match self {
            RollupRetention::Keep(keep) => keep,
            RollupRetention::Auto => source.map(|s| s.max(MINUTE_AUTO)),
        }
    }
}

/// `parse_retention` plus `auto`, for a rollup's retention.
pub fn parse_rollup_retention_arg(s: &str) -> Result<RollupRetention, String> {
    if s.trim() == "auto" {
        return Ok(RollupRetention::Auto);
    }
    parse_retention(s)
        .map(RollupRetention::Keep)
        .map_err(|e| format!("{e} (or auto)"))
}

/// How long each tier of history is kept (`None`: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    pub raw: Option<Duration>,
    pub minute: Option<Duration>,
    pub hour: Option<Duration>,
}

impl Tiers {
    /// Refuses a rollup kept for less time than its source (the raw rows
    /// for the 1-minute rollup, the 1-minute rollup for the hourly one):
    /// its rows would expire while the rows it is made from are kept, and
    /// a query reading it would miss history that is still stored.
    pub fn check(&self) -> Result<(), String> {
        let pairs = [
            (self.minute, "retention-1m", self.raw, "retention"),
            (self.hour, "retention-1h", self.minute, "retention-1m"),
        ];
        for (keep, flag, source, source_flag) in pairs {
            let shorter = match (keep, source) {
                (Some(k), Some(s)) => k < s,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if shorter {
                return Err(format!(
                    "--{flag} {} is shorter than --{source_flag} {}: a rollup must be kept at least as long as what it is made from; raise --{flag} (or set it to off) or lower --{source_flag}",
                    show(keep),
                    show(source),
                ));
            }
        }
        Ok(())
    }

    /// How far back the rollup refresh may recompute.
    pub fn horizon(&self) -> Horizon {
        Horizon {
            raw: self.raw,
            minute: self.minute,
        }
    }

    /// Each table with its retention, raw first.
    fn tables(&self) -> [(Option<Tier>, Option<Duration>); 3] {
        [
            (None, self.raw),
            (Some(Tier::Minute), self.minute),
            (Some(Tier::Hour), self.hour),
        ]
    }
}

/// A retention as the command line writes it (`off` for none).
fn show(keep: Option<Duration>) -> String {
    match keep {
        None => "off".into(),
        Some(d) if d.as_secs().is_multiple_of(365 * 86_400) => {
            format!("{}y", d.as_secs() / (365 * 86_400))
        }
        Some(d) if d.as_secs().is_multiple_of(86_400) => format!("{}d", d.as_secs() / 86_400),
        Some(d) => format!("{}h", d.as_secs() / 3600),
    }
}

/// Parses a retention setting: a number of years of 365 days (`2y`), days
/// (`365d`), weeks (`52w`) or hours (`48h`), or `off` to keep everything.
pub fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a retention; write e.g. 2y, 365d, 52w, 48h or off"))?;
    let per_unit: u64 = match unit {
        "h" => 1,
        "d" => 24,
        "w" => 24 * 7,
        "y" => 24 * 365,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit; write e.g. 2y, 365d, 52w, 48h or off"
            ));
        }
    };
    // Beyond this a deadline before the Unix epoch could not be computed.
    let hours = n
        .checked_mul(per_unit)
        .filter(|h| *h <= 1000 * 24 * 365)
        .ok_or_else(|| format!("`{s}` is too long; at most 1000y, or `off` to keep everything"))?;
    if hours == 0 {
        return Err("retention must be longer than 0; use `off` to keep everything".into());
    }
    Ok(Some(Duration::from_secs(hours * 3600)))
}

/// Sets TimescaleDB's retention policies (and the rollups' refresh
/// policies) to `keep`, replacing earlier ones. Returns false when the
/// database has no TimescaleDB (run [`delete_older`] periodically instead).
pub async fn set_policy(db: &Db, keep: &Tiers) -> anyhow::Result<bool> {
    store::for_db(db).set_retention_policy(keep).await
}

/// Deletes the rows of each tier older than its retention, `DELETE_BATCH`
/// rows per statement; returns how many were deleted.
pub async fn delete_older(db: &Db, keep: &Tiers) -> anyhow::Result<u64> {
    let store = store::for_db(db);
    let mut total = 0;
    for (tier, keep) in keep.tables() {
        let Some(keep) = keep else { continue };
        let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let table = tier.map_or("register_readings", Tier::table);
        loop {
            let n = store
                .delete_before(tier, cutoff, DELETE_BATCH)
                .await
                .with_context(|| format!("cannot delete expired rows of {table}"))?;
            total += n;
            if n < DELETE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_keeps_the_minutes_two_years_or_as_long_as_the_raw_rows() {
        let days = |n: u64| Some(Duration::from_secs(n * 86_400));
        let auto = parse_rollup_retention_arg("auto").unwrap();
        assert_eq!(auto.resolve(days(365)), days(730));
        assert_eq!(auto.resolve(days(1000)), days(1000));
        assert_eq!(
            auto.resolve(None),
            None,
            "raw kept forever: so are the minutes"
        );
        for raw in [days(1), days(730), days(5000), None] {
            let tiers = Tiers {
                raw,
                minute: auto.resolve(raw),
                hour: None,
            };
            assert_eq!(tiers.check(), Ok(()), "auto with --retention {raw:?}");
        }
        assert_eq!(
            parse_rollup_retention_arg("90d").unwrap().resolve(None),
            days(90),
            "an explicit value is kept (and checked by Tiers::check)"
        );
        let e = parse_rollup_retention_arg("soon").unwrap_err();
        assert!(e.contains("or auto"), "{e}");
    }

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
        assert_eq!(
            parse_retention("2y"),
            Ok(Some(Duration::from_secs(730 * 86_400)))
        );
        assert!(parse_retention("0d").unwrap_err().contains("use `off`"));
        assert!(parse_retention("1mo").unwrap_err().contains("unknown unit"));
        assert!(parse_retention("-1d").is_err());
        assert!(parse_retention("").is_err());
        assert!(parse_retention("99999999999999999999d").is_err());
        assert!(parse_retention("1001y").unwrap_err().contains("too long"));
        assert!(
            parse_retention("18446744073709551615y")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn a_rollup_kept_shorter_than_its_source_is_refused_naming_both_flags() {
        let d = |n: u64| Some(Duration::from_secs(n * 86_400));
        let tiers = |raw, minute, hour| Tiers { raw, minute, hour };
        assert!(tiers(d(365), d(730), None).check().is_ok());
        assert!(tiers(d(365), d(365), d(365)).check().is_ok());
        assert!(tiers(None, None, None).check().is_ok());
        let e = tiers(d(365), d(30), None).check().unwrap_err();
        assert!(
            e.contains("--retention-1m 30d") && e.contains("--retention 1y"),
            "{e}"
        );
        let e = tiers(None, d(730), None).check().unwrap_err();
        assert!(
            e.contains("--retention-1m 2y") && e.contains("--retention off"),
            "{e}"
        );
        let e = tiers(d(365), d(730), d(400)).check().unwrap_err();
        assert!(
            e.contains("--retention-1h 400d") && e.contains("--retention-1m 2y"),
            "{e}"
        );
    }
}
