//! Database outages made on purpose during a fleet's window (`fleet
//! --outage AT/LENGTH`, the `outage` scenario): the service's database is
//! made unreachable AT into the window for LENGTH, as a stopped PostgreSQL
//! would be, then let in again. Reported: the spool's peak size and bytes
//! written, and how long the replay took once the database was back; the
//! window's overruns, lateness, rows lost and peak RSS are the fleet's own
//! figures.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value as Json, json};
use sqlx::{Connection as _, Executor as _};

/// An outage made on purpose: the database unreachable from `at` into the
/// window for `length`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    pub at: Duration,
    pub length: Duration,
}

/// Parses `AT/LENGTH`, e.g. `10s/33s`.
pub fn parse_outage(s: &str) -> Result<Outage, String> {
    let (at, length) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not AT/LENGTH; write e.g. 10s/33s"))?;
    let at = regpoll::registry::parse_duration(at.trim())?;
    let length = regpoll::registry::parse_duration(length.trim())?;
    if length.is_zero() {
        return Err(format!(
            "`{s}`: the outage must last longer than 0, e.g. 10s/33s"
        ));
    }
    Ok(Outage { at, length })
}

/// Refuses new connections to database `db` and ends the open ones, or lets
/// them in again; `admin` is a URL of another database on the same server.
pub async fn set_reachable(admin: &str, db: &str, reachable: bool) -> anyhow::Result<()> {
    // The name comes from fresh_database, which makes it of [a-z0-9_] only.
    anyhow::ensure!(
        db.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "unexpected database name {db}"
    );
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .context("cannot connect to the admin database to make the outage")?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS {reachable}"
    )))
    .await?;
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(db)
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// What one outage did to the spool, from `/api/stats` samples.
#[derive(Debug, Default)]
struct Samples {
    spool_peak_bytes: u64,
    rows_spooled_at_start: f64,
    bytes_written: u64,
    last_bytes: u64,
}

impl Samples {
    /// Spool bytes only grow during an outage, except when a segment is
    /// replayed; growth between samples is what was written.
    fn add(&mut self, stats: &Json) {
        let bytes = stats["history"]["spool_bytes"].as_u64().unwrap_or(0);
        self.spool_peak_bytes = self.spool_peak_bytes.max(bytes);
        self.bytes_written += bytes.saturating_sub(self.last_bytes);
        self.last_bytes = bytes;
    }
}

/// Makes the outage (after `outage.at`), samples the service's stats every
/// 250 ms until the writer has caught up after it (the spool replayed, the
/// memory backlog written), and returns its figures; `replay_s` is the time
/// from the database's return until then.
pub async fn make_outage(
    admin: String,
    db: String,
    http: std::net::SocketAddr,
    outage: Outage,
) -> anyhow::Result<Json> {
    tokio::time::sleep(outage.at).await;
    let stats = |http| super::fleet::stats_of(http);
    let mut samples = Samples {
        rows_spooled_at_start: super::fleet::counter(
            &stats(http).await?,
            &["history", "rows_spooled"],
        ),
        ..Samples::default()
    };
    set_reachable(&admin, &db, false).await?;
    let down = Instant::now();
    while down.elapsed() < outage.length {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.add(&stats(http).await?);
    }
    set_reachable(&admin, &db, true).await?;
    let back = Instant::now();
    let replayed = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = stats(http).await?;
        samples.add(&s);
        // Caught up: the spool replayed and memory down to the batch being
        // gathered.
        let batch = regpoll::settings::BATCH_ROWS.default_count() as u64;
        if s["history"]["spool_bytes"].as_u64() == Some(0)
            && s["history"]["rows_waiting"]
                .as_u64()
                .is_some_and(|w| w <= batch)
        {
            break back.elapsed();
        }
        if back.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the spool was not replayed within 10 minutes of the outage");
        }
    };
    let s = stats(http).await?;
    Ok(json!({
        "at_s": outage.at.as_secs_f64(),
        "length_s": outage.length.as_secs_f64(),
        "spool_rows_written": super::fleet::counter(&s, &["history", "rows_spooled"]) - samples.rows_spooled_at_start,
        "spool_bytes_written": samples.bytes_written,
        "spool_peak_bytes": samples.spool_peak_bytes,
        "replay_s": (replayed.as_secs_f64() * 10.0).round() / 10.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_written_at_slash_length() {
        assert_eq!(
            parse_outage("10s/33s"),
            Ok(Outage {
                at: Duration::from_secs(10),
                length: Duration::from_secs(33)
            })
        );
        for bad in ["10s", "10s/0s", "x/3s", "3s/y"] {
            assert!(parse_outage(bad).is_err(), "{bad}");
        }
        assert!(parse_outage("33s").unwrap_err().contains("e.g. 10s/33s"));
    }

    #[test]
    fn spool_bytes_written_count_growth_across_replays() {
        let mut s = Samples::default();
        for bytes in [0, 100, 250, 64, 200, 0] {
            s.add(&json!({ "history": { "spool_bytes": bytes } }));
        }
        assert_eq!((s.bytes_written, s.spool_peak_bytes), (250 + 136, 250));
    }
}
