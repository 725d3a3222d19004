//! Deadband and heartbeat against real services: the simulator's ramp and a
//! register held fixed, polled into PostgreSQL and Redis. Redis gets every
//! poll; history gets exactly the rows the rule picks from them. The README's
//! plain-PostgreSQL "last observation carried forward" query is run on what
//! was stored.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt as _;
use regpoll::app::{self, DeviceSource};
use regpoll::db::Db;
use regpoll::sim::{FaultAction, SimFault};

/// `ramp` climbs 1 a second (the simulator's signal, wrapping every minute)
/// with a band of 2.5 and no heartbeat; `flat` holds 42 with `deadband: 0`
/// (changes only) and a 1.1 s heartbeat, away from the 250 ms grid of the
/// polls so that the millisecond times Redis publishes decide it as the
/// microsecond ones history uses; `every` has no deadband.
const TANK: &str = r#"
defaults: { host: 127.0.0.1, every: 250ms, timeout: 500ms }
devices:
  - name: tank
    port: {A}
    registers:
      - { name: ramp, kind: holding, address: 0, deadband: 2.5 }
      - { name: flat, kind: holding, address: 10, deadband: 0, heartbeat: 1100ms }
      - { name: every, kind: holding, address: 20 }
"#;

/// One register's value in one poll, as Redis published it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    ts: DateTime<Utc>,
    value: Option<f64>,
    quality: String,
}

/// The rows the rule keeps of `polls`: the first, then each whose quality
/// differs from the last kept one, or whose value is more than `band` from
/// it, or that comes `heartbeat` or more after it. Written apart from
/// `history::deadband`, from the README's words.
fn kept(polls: &[Seen], band: Option<f64>, heartbeat: Option<TimeDelta>) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    for p in polls {
        let keep = match (out.last(), band) {
            (None, _) | (_, None) => true,
            (Some(last), Some(band)) => {
                last.quality != p.quality
                    || heartbeat.is_some_and(|h| p.ts - last.ts >= h)
                    || match (last.value, p.value) {
                        (Some(a), Some(b)) => (b - a).abs() > band,
                        (None, None) => false,
                        _ => true,
                    }
            }
        };
        if keep {
            out.push(p.clone());
        }
    }
    out
}

async fn stored(url: &str, register: &str) -> Vec<Seen> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(DateTime<Utc>, Option<f64>, String)> = sqlx::query_as(
        "SELECT ts, value, quality FROM register_readings_named \
         WHERE device = 'tank' AND register = $1 ORDER BY ts",
    )
    .bind(register)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(ts, value, quality)| Seen {
            // Redis publishes milliseconds.
            ts: DateTime::from_timestamp_millis(ts.timestamp_millis()).unwrap(),
            value,
            quality,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_what_the_deadband_picks_and_redis_gets_every_poll() {
    let fault = SimFault {
        device: "tank".into(),
        register: Some("flat".into()),
        action: FaultAction::Words(vec![42]),
    };
    let fixture = common::simulate_with_faults(TANK, &["{A}"], vec![fault]).await;
    let (_dir, path) = common::write_yaml(&fixture.yaml);
    let (settings, _client, mut pubsub) = common::postgres_and_redis(path, "tank").await;
    let database_url = settings.database_url.clone().unwrap();
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    // About 5 s: five heartbeats of `flat`, a few steps out of `ramp`'s band.
    common::wait_for_polls(&running, 20).await;
    let summary = running.shutdown().await.unwrap();
    let redis = summary.redis.as_ref().unwrap();
    assert_eq!(
        (redis.polls_written, redis.coalesced),
        (summary.polls, 0),
        "Redis must get every poll"
    );

    // Every poll's message, in order.
    let mut by_register: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut messages = pubsub.on_message();
    for _ in 0..summary.polls {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("one message per poll")
            .unwrap();
        let update: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        for (name, v) in update["values"].as_object().unwrap() {
            let ts = DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap();
            by_register.entry(name.clone()).or_default().push(Seen {
                ts: ts.with_timezone(&Utc),
                value: v["value"].as_f64(),
                quality: v["quality"].as_str().unwrap().to_string(),
            });
        }
    }
    let polls = |r: &str| by_register[r].as_slice();
    assert_eq!(polls("every").len() as u64, summary.polls);

    let ramp = stored(&database_url, "ramp").await;
    let flat = stored(&database_url, "flat").await;
    let every = stored(&database_url, "every").await;
    assert_eq!(ramp, kept(polls("ramp"), Some(2.5), None));
    assert_eq!(
        flat,
        kept(
            polls("flat"),
            Some(0.0),
            Some(TimeDelta::milliseconds(1_100))
        )
    );
    assert_eq!(every, polls("every"));

    // The history is thinner on purpose, and says by how much.
    assert!(ramp.len() * 2 < polls("ramp").len(), "{ramp:?}");
    assert!(flat.iter().all(|r| r.value == Some(42.0)));
    for pair in flat.windows(2) {
        let gap = pair[1].ts - pair[0].ts;
        assert!(
            gap >= TimeDelta::milliseconds(1_100) && gap < TimeDelta::milliseconds(1_600),
            "flat stored {gap} apart: {flat:?}"
        );
    }
    let left_out = 2 * summary.polls - (ramp.len() + flat.len()) as u64;
    assert_eq!(summary.history.deadband_suppressed, left_out);
    assert_eq!(summary.history.rows_lost, 0);

    readme_locf_query_carries_the_stored_values_forward(&database_url, polls("ramp"), &ramp).await;
}

/// The README's plain-PostgreSQL query, with its device, register and range
/// swapped for this run's: each bucket's value is the last stored one at or
/// before it, which is within the band of what was polled then.
async fn readme_locf_query_carries_the_stored_values_forward(
    url: &str,
    polled: &[Seen],
    stored: &[Seen],
) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- locf-postgres -->")
        .expect("README has the plain-PostgreSQL LOCF query");
    let block = &readme[start..];
    let sql_start = block.find("```sql\n").unwrap() + "```sql\n".len();
    let sql = &block[sql_start..sql_start + block[sql_start..].find("```").unwrap()];
    // Halfway between two polls: history's times are finer than the
    // milliseconds Redis publishes, so a grid on the polls' own instants
    // could fall between the two.
    let from = stored[0].ts + TimeDelta::milliseconds(125);
    let until = polled.last().unwrap().ts;
    let sql = sql
        .replace("'boiler-1'", "'tank'")
        .replace("'supply_temp'", "'ramp'")
        .replace(
            "'2026-01-05 00:00:00+00'",
            &format!("'{}'", from.to_rfc3339()),
        )
        .replace(
            "'2026-01-06 00:00:00+00'",
            &format!("'{}'", until.to_rfc3339()),
        )
        .replace("'15 minutes'", "'250 milliseconds'");
    assert!(sql.contains("'tank'") && sql.contains("'ramp'"), "{sql}");
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(DateTime<Utc>, Option<f64>, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert!(rows.len() >= 4, "{rows:?}");
    for (bucket, value, quality) in &rows {
        let last_stored = stored.iter().rev().find(|s| s.ts <= *bucket).unwrap();
        assert_eq!(*value, last_stored.value, "at {bucket}");
        assert_eq!(quality.as_deref(), Some(last_stored.quality.as_str()));
        // What was polled at or before the bucket is within the band of it.
        let polled_then = polled.iter().rev().find(|p| p.ts <= *bucket).unwrap();
        let off = (polled_then.value.unwrap() - value.unwrap()).abs();
        assert!(off <= 2.5, "at {bucket}: {off}");
    }
}

const REGISTRY: &str = r#"
devices:
  - name: tank
    host: 127.0.0.1
    deadband_percent: 0.5
    heartbeat: 15m
    registers:
      - { name: level, kind: input, address: 0, type: f32 }
      - { name: temp, kind: input, address: 2, type: f32, deadband: 0.2 }
      - { name: serial, kind: input, address: 4, type: string, length: 4 }
      - { name: plain, kind: input, address: 9 }
  - name: plain
    host: 127.0.0.1
    registers: [ { name: r, kind: holding, address: 0 } ]
"#;

/// Each register's deadband as the registry loads it, by device and name.
async fn loaded_deadbands(db: &Db) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for d in db.load_devices().await.unwrap().devices {
        for r in d.registers.iter() {
            let band = r.deadband.as_deref().map(|b| b.describe());
            out.push((d.name.clone(), r.name.to_string(), band));
        }
    }
    out.sort();
    out
}

/// The rows sync stores come back as they were written, on both databases,
/// a changed deadband is a changed device, and the database itself refuses
/// what devices.yaml's validation refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadbands_round_trip_through_the_registry_and_the_database_refuses_nonsense() {
    let devices = regpoll::config::parse(REGISTRY, "devices.yaml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_postgres().await;
    for db in [
        Db::postgres(&url).await.unwrap(),
        Db::sqlite(&dir.path().join("regpoll.db")).await.unwrap(),
    ] {
        db.sync_devices(&devices).await.unwrap();
        let some = |s: &str| Some(s.to_string());
        let row = |d: &str, r: &str, b: Option<String>| (d.to_string(), r.to_string(), b);
        assert_eq!(
            loaded_deadbands(&db).await,
            [
                row("plain", "r", None),
                row("tank", "level", some("deadband_percent 0.5, heartbeat 15m")),
                row("tank", "plain", some("deadband_percent 0.5, heartbeat 15m")),
                row("tank", "serial", some("deadband 0, heartbeat 15m")),
                row("tank", "temp", some("deadband 0.2, heartbeat 15m")),
            ]
        );
        let again = db.sync_devices(&devices).await.unwrap();
        assert_eq!(again.unchanged, 2);
        let changed = regpoll::config::parse(
            &REGISTRY.replace("deadband: 0.2", "deadband: 0.3"),
            "devices.yaml",
        )
        .unwrap();
        assert_eq!(db.sync_devices(&changed).await.unwrap().changed, ["tank"]);

        for (set, why) in [
            ("deadband = -1", "negative"),
            ("deadband = 1, deadband_percent = 1", "both forms"),
            ("deadband_percent = 101", "above 100"),
            (
                "deadband = NULL, deadband_percent = NULL, heartbeat_ms = 1000",
                "heartbeat alone",
            ),
            ("deadband = 1, heartbeat_ms = 0", "zero heartbeat"),
        ] {
            let sql = format!("UPDATE device_register_map SET {set} WHERE name = 'temp'");
            assert!(execute(&db, &sql).await.is_err(), "{why} was taken");
        }
        let sql = "UPDATE device_register_map SET deadband = 1 WHERE name = 'serial'";
        assert!(
            execute(&db, sql).await.is_err(),
            "a band on a string was taken"
        );
        db.close().await;
    }
}

async fn execute(db: &Db, sql: &str) -> Result<(), sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match db {
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
}
