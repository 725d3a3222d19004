//! Numbers as users read them: an f32 reaches Redis, the database and every
//! output as the decimal the device meant (230.1, not 230.10000610351562),
//! NaN and infinity never reach an aggregate, and a bucket's average stays
//! inside its min and max.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use regpoll::app::{self, DeviceSource, Settings};
use regpoll::db::Db;
use regpoll::history::row::Row;
use regpoll::history::store::{self, Span};
use regpoll::history::writer::write;
use regpoll::reading::Quality;
use regpoll::sim::{FaultAction, SimFault};

const FLAT: f64 = 123_456.7;

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

fn row(us: i64, register_id: i32, value: f64, quality: Quality) -> Row {
    let detail = (quality != Quality::Good).then_some("as read");
    Row::new(at(us), register_id, 1, Some(value), None, quality, detail)
}

/// Inserts a row as an earlier regpoll stored it, NaN and infinity
/// included (SQLite itself turns NaN into NULL).
async fn insert_legacy(db: &Db, us: i64, register_id: i32, value: f64) {
    const SQL: &str = "INSERT INTO register_readings (ts, register_id, device_id, value, quality, detail) \
                       VALUES ($1, $2, 1, $3, 'uncertain', 'stored by an earlier version')";
    match db {
        Db::Postgres(p) => {
            sqlx::query(SQL)
                .bind(at(us))
                .bind(register_id)
                .bind(value)
                .execute(p)
                .await
                .unwrap();
        }
        Db::Sqlite(p) => {
            sqlx::query(SQL)
                .bind(us)
                .bind(register_id)
                .bind(value)
                .execute(p)
                .await
                .unwrap();
        }
    }
}

type Hourly = (i32, Option<f64>, Option<f64>, Option<f64>, i64, Option<f64>);

async fn hourly(db: &Db) -> Vec<Hourly> {
    let sql = "SELECT register_id, avg, min, max, count, last FROM register_readings_hourly ORDER BY register_id, bucket";
    match db {
        Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    }
}

/// Register 1: NaN and ±Inf written now (stored as NULL), the newest an
/// infinity; register 2: the same values as an earlier version stored them;
/// register 3: ten identical values in one minute.
async fn aggregates_ignore_non_finite_values(db: Db) {
    let hour = 1_700_002_800_000_000; // a whole hour, and a whole minute
    common::register_ids(&db, 3).await;
    let rows = vec![
        row(hour + 1, 1, 10.0, Quality::Good),
        row(hour + 2, 1, f64::NAN, Quality::Uncertain),
        row(hour + 3, 1, f64::INFINITY, Quality::Uncertain),
        row(hour + 4, 1, 20.0, Quality::Good),
        row(hour + 5, 1, f64::NEG_INFINITY, Quality::Uncertain),
    ];
    write(&db, &rows).await.unwrap();
    insert_legacy(&db, hour + 1, 2, 5.0).await;
    insert_legacy(&db, hour + 2, 2, f64::NAN).await;
    insert_legacy(&db, hour + 3, 2, f64::INFINITY).await;
    insert_legacy(&db, hour + 4, 2, f64::NEG_INFINITY).await;
    let flat: Vec<Row> = (0..10)
        .map(|i| row(hour + 10 + i, 3, FLAT, Quality::Good))
        .collect();
    write(&db, &flat).await.unwrap();

    let nulls = "SELECT count(*) FROM register_readings WHERE register_id = 1 AND value IS NULL";
    let nulls: i64 = match &db {
        Db::Postgres(p) => sqlx::query_scalar(nulls).fetch_one(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_scalar(nulls).fetch_one(p).await.unwrap(),
    };
    assert_eq!(nulls, 3, "NaN, +Inf and -Inf are stored as NULL");

    let horizon = regpoll::history::rollup::Horizon::default();
    regpoll::history::rollup::refresh(&db, horizon)
        .await
        .unwrap();
    let got = hourly(&db).await;
    assert_eq!(
        got[..2],
        [
            (1, Some(15.0), Some(10.0), Some(20.0), 2, Some(20.0)),
            (2, Some(5.0), Some(5.0), Some(5.0), 1, Some(5.0)),
        ],
        "{got:?}"
    );
    assert_eq!(
        (got[2].0, got[2].2, got[2].3, got[2].4, got[2].5),
        (3, Some(FLAT), Some(FLAT), 10, Some(FLAT))
    );

    let store = store::for_db(&db);
    for (register_id, want) in [(1, (15.0, 10.0, 20.0, 2)), (2, (5.0, 5.0, 5.0, 1))] {
        let span = Span {
            register_id,
            from: at(hour),
            to: at(hour + 3_600_000_000),
            limit: 100,
        };
        let b = store.buckets(&span, Duration::from_secs(60)).await.unwrap();
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].avg, b[0].min, b[0].max, b[0].count), want);
    }
    db.close().await;
}

#[tokio::test]
async fn postgres_aggregates_ignore_non_finite_values() {
    aggregates_ignore_non_finite_values(
        Db::postgres(&common::fresh_postgres().await).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_aggregates_ignore_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    aggregates_ignore_non_finite_values(Db::sqlite(&dir.path().join("h.db")).await.unwrap()).await;
}

const METER: &str = "devices:\n  - name: meter\n    host: 127.0.0.1\n    port: {A}\n    registers:\n      - { name: volts, kind: holding, address: 0, type: f32, unit: V }\n      - { name: broken, kind: holding, address: 2, type: f32 }\n      - { name: flat, kind: holding, address: 4, type: f32 }\n";

fn words(x: f32) -> Vec<u16> {
    let b = x.to_bits();
    vec![(b >> 16) as u16, b as u16]
}

/// A meter whose `volts` is 230.1f32, `broken` a NaN and `flat` 123456.7f32,
/// all three in one request.
async fn meter() -> common::SimFixture {
    let fault = |register: &str, w: Vec<u16>| SimFault {
        device: "meter".into(),
        register: Some(register.into()),
        action: FaultAction::Words(w),
    };
    let faults = vec![
        fault("volts", words(230.1)),
        fault("broken", words(f32::NAN)),
        fault("flat", words(123_456.7)),
    ];
    common::simulate_with_faults(METER, &["{A}"], faults).await
}

fn regpoll(args: &[&str], db: &[&str], dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(args)
        .args(db)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("regpoll runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    stdout
}

/// Adds, just before the meter's first poll, rows an earlier version stored
/// (NaN and infinity) and ten more readings of `flat`. Returns the first
/// poll's instant.
async fn add_older_rows(db: &Db) -> i64 {
    let ids = "SELECT m.id FROM device_register_map m JOIN devices d ON d.id = m.device_id \
               WHERE d.name = 'meter' ORDER BY m.name";
    let ids: Vec<i32> = match db {
        Db::Postgres(p) => sqlx::query_scalar(ids).fetch_all(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_scalar(ids).fetch_all(p).await.unwrap(),
    };
    let (broken, flat, volts) = (ids[0], ids[1], ids[2]);
    // Just before the first poll: beside its readings, but not the newest.
    let first = "SELECT min(ts) FROM register_readings";
    let first = match db {
        Db::Postgres(p) => sqlx::query_scalar::<_, DateTime<Utc>>(first)
            .fetch_one(p)
            .await
            .unwrap()
            .timestamp_micros(),
        Db::Sqlite(p) => sqlx::query_scalar(first).fetch_one(p).await.unwrap(),
    };
    for (i, v) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        insert_legacy(db, first - 1 - i as i64, volts, v).await;
        insert_legacy(db, first - 1 - i as i64, broken, v).await;
    }
    let flat_rows: Vec<Row> = (0..10)
        .map(|i| row(first - 10 - i, flat, FLAT, Quality::Good))
        .collect();
    write(db, &flat_rows).await.unwrap();
    first
}

/// What `query` prints for the meter after [`add_older_rows`].
fn query_prints_the_decimal_and_never_nan(db_args: &[&str], dir: &std::path::Path) {
    let table = regpoll(&["query", "latest", "meter"], db_args, dir);
    let volts_line = table.lines().find(|l| l.starts_with("volts ")).unwrap();
    assert!(
        volts_line.split_whitespace().nth(1) == Some("230.1"),
        "{table}"
    );
    let csv = regpoll(&["query", "latest", "meter", "--csv"], db_args, dir);
    let volts_line = csv.lines().find(|l| l.starts_with("volts,")).unwrap();
    assert!(volts_line.contains(",230.1,good,"), "{csv}");
    let json = regpoll(&["query", "latest", "meter", "--json"], db_args, dir);
    assert!(json.contains("\"value\": 230.1,"), "{json}");
    assert!(!json.contains("230.1000"), "{json}");

    for format in [&[][..], &["--csv"], &["--json"]] {
        for register in ["volts", "broken", "flat"] {
            let mut args = vec![
                "query", "range", "meter", register, "--since", "1h", "--bucket", "1m",
            ];
            args.extend_from_slice(format);
            let out = regpoll(&args, db_args, dir);
            let lower = out.to_lowercase();
            assert!(
                !lower.contains("nan") && !lower.contains("inf"),
                "{args:?}: {out}"
            );
            assert!(
                !out.contains("230.1000") && !out.contains("123456.6999"),
                "{args:?}: {out}"
            );
        }
    }
    // Every bucket of `flat` is exactly the value: avg within [min, max].
    let json = regpoll(
        &[
            "query", "range", "meter", "flat", "--since", "1h", "--bucket", "1m", "--json",
        ],
        db_args,
        dir,
    );
    let buckets: serde_json::Value = serde_json::from_str(&json).unwrap();
    let buckets = buckets.as_array().unwrap();
    assert!(!buckets.is_empty());
    for b in buckets {
        for k in ["avg", "min", "max"] {
            assert_eq!(b[k].as_f64(), Some(FLAT), "{k} in {b}");
        }
    }
    let json = regpoll(
        &[
            "query", "range", "meter", "volts", "--since", "1h", "--bucket", "1m", "--json",
        ],
        db_args,
        dir,
    );
    let buckets: serde_json::Value = serde_json::from_str(&json).unwrap();
    for b in buckets.as_array().unwrap() {
        assert_eq!(b["avg"].as_f64(), Some(230.1), "{b}");
    }
}

/// One poll's readings of one request: one instant for all of them.
fn assert_one_ts_per_request(rows: &[(i32, DateTime<Utc>)]) {
    let mut per_ts: HashMap<DateTime<Utc>, usize> = HashMap::new();
    for (_, ts) in rows {
        *per_ts.entry(*ts).or_default() += 1;
    }
    assert!(per_ts.values().all(|&n| n == 3), "{per_ts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_f32_230_1_is_230_1_in_redis_postgres_and_query_and_nan_is_null() {
    let fixture = meter().await;
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let url = common::fresh_postgres().await;
    let (redis_url, prefix) = common::redis();
    let settings = Settings {
        database_url: Some(url.clone()),
        redis_url: Some(redis_url.clone()),
        redis_prefix: prefix.clone(),
        devices_file: Some(path),
        ..Settings::default()
    };
    let settings = Settings {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..settings
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    common::wait_for_polls(&running, 2).await;
    let db = Db::postgres(&url).await.unwrap();
    let first = add_older_rows(&db).await;
    let addr = running.http_addr().expect("HTTP is on");
    let flat = common::http_get(addr, "/api/readings?device=meter&register=flat&bucket=1m").await;
    let flat = flat.json();
    let rows = flat["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{flat}");
    for b in rows {
        for k in ["avg", "min", "max"] {
            assert_eq!(b[k].as_f64(), Some(FLAT), "{k} in {b}");
        }
    }
    let volts = common::http_get(addr, "/api/readings?device=meter&register=volts&bucket=1m").await;
    let volts = volts.json();
    for b in volts["rows"].as_array().unwrap() {
        assert_eq!(b["avg"].as_f64(), Some(230.1), "{b}");
    }
    // Only NaN and infinities: no bucket at all, rather than a NaN one.
    let broken =
        common::http_get(addr, "/api/readings?device=meter&register=broken&bucket=1m").await;
    assert_eq!(broken.json()["rows"], serde_json::json!([]));
    let summary = running.shutdown().await.unwrap();
    assert_eq!(summary.history.rows_lost, 0);

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let hash: HashMap<String, String> =
        con.hgetall(format!("{prefix}:latest:meter")).await.unwrap();
    assert!(
        hash["volts"].starts_with("{\"value\":230.1,\"quality\":\"good\""),
        "{hash:?}"
    );
    let broken: serde_json::Value = serde_json::from_str(&hash["broken"]).unwrap();
    assert_eq!(
        (&broken["value"], &broken["quality"], &broken["detail"]),
        (
            &serde_json::Value::Null,
            &serde_json::json!("uncertain"),
            &serde_json::json!("NaN float")
        )
    );

    let pool = db.as_postgres().unwrap();
    // value::text is PostgreSQL's own shortest round-trip output.
    let volts: Vec<(Option<f64>, Option<String>)> = sqlx::query_as(
        "SELECT value, value::text FROM register_readings_named WHERE register = 'volts' AND ts >= $1",
    )
    .bind(at(first))
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!volts.is_empty());
    assert!(
        volts
            .iter()
            .all(|v| *v == (Some(230.1), Some("230.1".into()))),
        "{volts:?}"
    );
    let broken: Vec<(Option<f64>, String, Option<String>)> = sqlx::query_as(
        "SELECT value, quality, detail FROM register_readings_named WHERE register = 'broken' AND ts >= $1",
    )
    .bind(at(first))
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        broken
            .iter()
            .all(|b| *b == (None, "uncertain".into(), Some("NaN float".into()))),
        "{broken:?}"
    );
    let stamps: Vec<(i32, DateTime<Utc>)> =
        sqlx::query_as("SELECT register_id, ts FROM register_readings WHERE ts >= $1")
            .bind(at(first))
            .fetch_all(pool)
            .await
            .unwrap();
    assert_one_ts_per_request(&stamps);

    query_prints_the_decimal_and_never_nan(&["--database-url", url.as_str()], dir.path());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_f32_230_1_is_230_1_in_sqlite_and_query_never_prints_nan() {
    let fixture = meter().await;
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let sqlite = dir.path().join("history.db");
    let settings = Settings {
        sqlite_path: sqlite.clone(),
        devices_file: Some(path),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    common::wait_for_polls(&running, 2).await;
    running.shutdown().await.unwrap();

    let db = Db::sqlite(&sqlite).await.unwrap();
    let Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    let volts: Vec<Option<f64>> =
        sqlx::query_scalar("SELECT value FROM register_readings_named WHERE register = 'volts'")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(
        !volts.is_empty() && volts.iter().all(|v| *v == Some(230.1)),
        "{volts:?}"
    );
    let stamps: Vec<(i32, i64)> = sqlx::query_as("SELECT register_id, ts FROM register_readings")
        .fetch_all(pool)
        .await
        .unwrap();
    let stamps: Vec<(i32, DateTime<Utc>)> = stamps.into_iter().map(|(r, t)| (r, at(t))).collect();
    assert_one_ts_per_request(&stamps);
    add_older_rows(&db).await;

    let path = sqlite.to_str().unwrap().to_string();
    query_prints_the_decimal_and_never_nan(&["--sqlite-path", &path], dir.path());
    db.close().await;
}
