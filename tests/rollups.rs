//! The rollups on real databases (plain PostgreSQL and SQLite): after the
//! refresh job, bucketed queries read from the rollups and answer what the
//! raw rows answer; late rows show after the next refresh; buckets after
//! the watermark come from the raw rows at once; bad and non-finite values
//! never enter; the rollups outlive the raw rows; and migration 0015 fills
//! the rollups from the history written before it.

mod common;

use std::time::Duration;

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use regpoll::db::Db;
use regpoll::history::query::{self, RangeQuery, Rows};
use regpoll::history::retention::{self, Tiers};
use regpoll::history::rollup::{self, Horizon};
use regpoll::history::row::Row;
use regpoll::history::store::{self, BucketAggregate, Span};
use regpoll::history::writer::write;
use regpoll::reading::Quality;

const DEVICES: &str = "
devices:
  - name: plant
    host: 127.0.0.1
    port: 5020
    registers:
      - { name: flow, kind: holding, address: 0 }
      - { name: level, kind: holding, address: 1 }
";

/// The widths every comparison covers: whole minutes (1-minute rollup),
/// whole hours (hourly rollup) and one that fits neither (raw rows).
const WIDTHS: [u64; 5] = [60, 300, 3600, 86_400, 7];

/// Runs `sql` with `$1..` bound to the given values on either database.
macro_rules! on_db {
    ($db:expr, $q:ident => $body:expr) => {
        match $db {
            Db::Postgres(p) => {
                let $q = p;
                $body
            }
            Db::Sqlite(p) => {
                let $q = p;
                $body
            }
        }
    };
}

/// The ids of register `name` of `plant` and of the device.
async fn ids(db: &Db, name: &str) -> (i32, i32) {
    const SQL: &str = "SELECT m.id, d.id FROM device_register_map m JOIN devices d \
                       ON d.id = m.device_id WHERE d.name = 'plant' AND m.name = $1";
    on_db!(db, p => sqlx::query_as(SQL).bind(name).fetch_one(p).await.unwrap())
}

/// Ten days ago at midnight: well before the watermark of any refresh.
fn base() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(10))
        .duration_trunc(TimeDelta::days(1))
        .unwrap()
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::milliseconds(s * 1000)
}

/// Three hours and a quarter of a register polled every `every` seconds,
/// some readings uncertain, one bad with a value that must not count.
fn signal(register: (i32, i32), every: i64, scale: f64) -> Vec<Row> {
    let (reg, dev) = register;
    let mut rows: Vec<Row> = (0..(3 * 3600 + 900) / every)
        .map(|i| {
            let quality = if i % 13 == 0 {
                Quality::Uncertain
            } else {
                Quality::Good
            };
            let value = ((i * 37) % 101) as f64 * scale - 10.0;
            Row::new(
                base() + secs(i * every),
                reg,
                dev,
                Some(value),
                None,
                quality,
                None,
            )
        })
        .collect();
    rows.push(Row::new(
        base() + secs(3) + TimeDelta::milliseconds(1),
        reg,
        dev,
        Some(1e9),
        None,
        Quality::Bad,
        Some("timeout after 1000 ms"),
    ));
    rows
}

/// Rows written before non-finite values were stored as NULL, straight
/// into the table (the writer stores them as NULL now).
async fn old_non_finite_rows(db: &Db, (reg, dev): (i32, i32)) {
    // `ts` bound as microseconds since the Unix epoch on both databases.
    let sql = match db {
        Db::Postgres(_) => {
            "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
                            VALUES (to_timestamp($1::float8 / 1e6), $2, $3, $4, 'uncertain')"
        }
        Db::Sqlite(_) => {
            "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
                          VALUES ($1, $2, $3, $4, 'uncertain')"
        }
    };
    for (i, v) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let ts = base() + secs(1) + TimeDelta::milliseconds(i as i64 + 1);
        let micros = ts.timestamp_micros();
        let n = on_db!(db, p => sqlx::query(sql).bind(micros).bind(reg).bind(dev).bind(v).execute(p).await.unwrap().rows_affected());
        assert_eq!(n, 1);
    }
}

/// Buckets of `width` of `register` in `[from, to)` through the query path
/// (which reads the rollups).
async fn queried(
    db: &Db,
    register: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    width: u64,
) -> Vec<BucketAggregate> {
    let q = RangeQuery {
        device: "plant".into(),
        register: Some(register.into()),
        from,
        to,
        bucket: Some(Duration::from_secs(width)),
        limit: query::MAX_LIMIT,
    };
    let Rows::Buckets(rows) = query::range(db, &q).await.unwrap() else {
        unreachable!("a bucketed query answers buckets")
    };
    rows.into_iter()
        .map(|b| BucketAggregate {
            start: b.bucket,
            avg: b.avg,
            min: b.min,
            max: b.max,
            count: b.count,
        })
        .collect()
}

/// The same buckets aggregated from the raw rows alone.
async fn from_raw(
    db: &Db,
    register: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    width: u64,
) -> Vec<BucketAggregate> {
    let span = Span {
        register_id: register,
        from,
        to,
        limit: query::MAX_LIMIT as i64,
    };
    store::for_db(db)
        .buckets(&span, Duration::from_secs(width))
        .await
        .unwrap()
}

fn assert_same(got: &[BucketAggregate], want: &[BucketAggregate], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?}\nwant {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.start, g.count, g.min, g.max),
            (w.start, w.count, w.min, w.max),
            "{what}"
        );
        assert!(
            (g.avg - w.avg).abs() <= 1e-9 * w.avg.abs().max(1.0),
            "{what}: avg {} vs {}",
            g.avg,
            w.avg
        );
    }
}

/// Every width over the whole data set and over a span that starts and
/// ends inside rollup buckets.
async fn assert_rollups_answer_as_raw(db: &Db, register: (&str, i32), what: &str) {
    let spans = [
        (base() - secs(3600), base() + secs(5 * 3600)),
        (
            base() + secs(7 * 60 + 13),
            base() + secs(2 * 3600 + 31 * 60),
        ),
    ];
    for (from, to) in spans {
        for w in WIDTHS {
            let got = queried(db, register.0, from, to, w).await;
            let want = from_raw(db, register.1, from, to, w).await;
            assert!(!want.is_empty());
            assert_same(
                &got,
                &want,
                &format!("{what}: {} bucket {w}s from {from}", register.0),
            );
        }
    }
}

async fn rollups_answer_as_raw_rows_do(db: Db) {
    let devices = regpoll::config::parse(DEVICES, "devices.yaml").unwrap();
    db.sync_devices(&devices).await.unwrap();
    let (flow, level) = (ids(&db, "flow").await, ids(&db, "level").await);
    old_non_finite_rows(&db, flow).await;
    let mut rows = signal(flow, 7, 0.5);
    rows.extend(signal(level, 11, 3.25));
    write(&db, &rows).await.unwrap();

    // Before any refresh the rollups know nothing of these rows.
    let stale = queried(&db, "flow", base(), base() + secs(3600), 60).await;
    assert!(stale.is_empty(), "{stale:?}");
    let refreshed = rollup::refresh(&db, Horizon::default()).await.unwrap();
    let refreshed = refreshed.expect(
        "regpoll keeps the rollups itself here; this test covers its tables and refresh \
         (with TimescaleDB they are continuous aggregates, which it does not cover)",
    );
    assert!(refreshed > 0, "the refresh wrote rollup rows");
    assert_rollups_answer_as_raw(&db, ("flow", flow.0), "after the refresh").await;
    assert_rollups_answer_as_raw(&db, ("level", level.0), "after the refresh").await;

    // More buckets than the limit is an error that says how to narrow the
    // query, from the rollups as from the raw rows.
    let too_many = RangeQuery {
        device: "plant".into(),
        register: Some("flow".into()),
        from: base(),
        to: base() + secs(3 * 3600),
        bucket: Some(Duration::from_secs(60)),
        limit: 100,
    };
    match query::range(&db, &too_many).await {
        Err(query::QueryError::TooMany {
            limit: 100,
            message,
        }) => {
            assert!(message.contains("coarser bucket"), "{message}")
        }
        other => panic!("180 minutes with a limit of 100: {other:?}"),
    }

    // Bad, NaN and infinite values are in no rollup row; the counts are
    // those of the good and uncertain finite readings.
    let good = rows.iter().filter(|r| r.quality != Quality::Bad).count() as i64;
    for table in ["register_readings_1m", "register_readings_hourly"] {
        let sql = format!(
            "SELECT CAST(sum(count) AS BIGINT), count(*) FILTER (WHERE NOT (max < 1e9 AND min > -1e9 AND last < 1e9 AND last > -1e9 AND avg < 1e9 AND avg > -1e9)) FROM {table}"
        );
        let (counted, outside): (i64, i64) =
            on_db!(&db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(p).await.unwrap());
        assert_eq!(counted, good, "{table}");
        assert_eq!(outside, 0, "{table}");
    }

    // A late batch (as a spool replay writes) shows after the next refresh.
    let late: Vec<Row> = (1..=3)
        .map(|i| {
            let ts = base() + secs(30 * 60) + TimeDelta::milliseconds(100 * i);
            Row::new(ts, flow.0, flow.1, Some(1000.0), None, Quality::Good, None)
        })
        .collect();
    write(&db, &late).await.unwrap();
    let (from, to) = (base(), base() + secs(3600));
    assert_ne!(
        queried(&db, "flow", from, to, 60).await,
        from_raw(&db, flow.0, from, to, 60).await,
        "before the refresh, the rollup does not have the late rows yet"
    );
    rollup::refresh(&db, Horizon::default()).await.unwrap();
    assert_rollups_answer_as_raw(&db, ("flow", flow.0), "after late rows").await;

    // The same batch again (a replay after an ambiguous failure) with one
    // new row: written without the duplicates, and still recorded.
    let mut again = late.clone();
    again.push(Row::new(
        base() + secs(50 * 60) + TimeDelta::milliseconds(100),
        flow.0,
        flow.1,
        Some(-1000.0),
        None,
        Quality::Good,
        None,
    ));
    assert_eq!(
        write(&db, &again).await.unwrap(),
        1,
        "only the new row is new"
    );
    rollup::refresh(&db, Horizon::default()).await.unwrap();
    assert_rollups_answer_as_raw(&db, ("flow", flow.0), "after a replay with duplicates").await;

    // Rows after the watermark answer from the raw rows at once.
    let now = Utc::now();
    let fresh: Vec<Row> = (0..2)
        .map(|i| {
            let ts = now + TimeDelta::milliseconds(i);
            Row::new(ts, flow.0, flow.1, Some(5.0), None, Quality::Good, None)
        })
        .collect();
    write(&db, &fresh).await.unwrap();
    let (from, to) = (now - secs(600), now + secs(60));
    for w in [60, 3600] {
        let got = queried(&db, "flow", from, to, w).await;
        assert_eq!(got.iter().map(|b| b.count).sum::<i64>(), 2, "{got:?}");
        assert_same(
            &got,
            &from_raw(&db, flow.0, from, to, w).await,
            "fresh rows",
        );
    }

    // The raw rows expire; the rollups keep answering for them.
    let (from, to) = (base() - secs(3600), base() + secs(5 * 3600));
    let mut before = Vec::new();
    for w in [60, 300, 3600, 86_400] {
        before.push(queried(&db, "flow", from, to, w).await);
    }
    let expire = Tiers {
        raw: Some(Duration::from_secs(86_400)),
        minute: None,
        hour: None,
    };
    assert!(retention::delete_older(&db, &expire).await.unwrap() > 0);
    assert!(
        from_raw(&db, flow.0, from, to, 7).await.is_empty(),
        "raw rows gone"
    );
    // A row replayed into an expired minute does not replace the minute's
    // rollup by itself alone.
    let replayed = Row::new(
        base() + secs(40 * 60) + TimeDelta::milliseconds(500),
        flow.0,
        flow.1,
        Some(-500.0),
        None,
        Quality::Good,
        None,
    );
    write(&db, &[replayed]).await.unwrap();
    rollup::refresh(&db, expire.horizon()).await.unwrap();
    for (w, want) in [60, 300, 3600, 86_400].into_iter().zip(before) {
        assert_eq!(
            queried(&db, "flow", from, to, w).await,
            want,
            "bucket {w}s after expiry"
        );
    }
    db.close().await;
}

#[tokio::test]
async fn postgres_rollups_answer_as_raw_rows_do() {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    rollups_answer_as_raw_rows_do(db).await;
}

#[tokio::test]
async fn sqlite_rollups_answer_as_raw_rows_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("rollups.db")).await.unwrap();
    rollups_answer_as_raw_rows_do(db).await;
}

/// The migrations before the rollups.
async fn migrator_before_rollups(dir: &str) -> sqlx::migrate::Migrator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let all = sqlx::migrate::Migrator::new(path).await.unwrap();
    sqlx::migrate::Migrator::with_migrations(
        all.iter().filter(|m| m.version < 15).cloned().collect(),
    )
}

/// One register read every 20 s for 70 minutes (values 0, 1, 2, …), one
/// bad reading and one NaN among them.
const BACKFILL_ROWS: i64 = 210;

fn backfill_row(i: i64) -> (DateTime<Utc>, f64, &'static str) {
    let quality = match i {
        5 => "bad",
        _ => "good",
    };
    let value = if i == 6 { f64::NAN } else { i as f64 };
    (base() + secs(20 * i), value, quality)
}

type Rollup = (f64, f64, f64, i64, f64);

/// avg, min, max, count and last of register 1's rows of a rollup table,
/// oldest first.
async fn rollup_rows(db: &Db, table: &str) -> Vec<Rollup> {
    let sql = format!(
        "SELECT avg, min, max, count, last FROM {table} WHERE register_id = 1 ORDER BY bucket"
    );
    on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(p).await.unwrap())
}

/// What migration 0015 made of the rows: every minute (3 readings) and
/// both hours, with `last` the newest value.
async fn assert_backfilled(db: &Db) {
    let minutes = rollup_rows(db, "register_readings_1m").await;
    let hours = rollup_rows(db, "register_readings_hourly").await;
    assert_eq!(minutes.len() as i64, BACKFILL_ROWS / 3);
    // Minute 1 holds readings 3, 4 and 5 (bad); minute 2 readings 6 (NaN), 7, 8.
    assert_eq!(minutes[0], (1.0, 0.0, 2.0, 3, 2.0));
    assert_eq!(minutes[1], (3.5, 3.0, 4.0, 2, 4.0));
    assert_eq!(minutes[2], (7.5, 7.0, 8.0, 2, 8.0));
    assert_eq!(hours.len(), 2);
    let first_hour: Vec<f64> = (0..180)
        .filter(|i| ![5, 6].contains(i))
        .map(|i| i as f64)
        .collect();
    let avg = first_hour.iter().sum::<f64>() / first_hour.len() as f64;
    assert!((hours[0].0 - avg).abs() < 1e-9, "{hours:?}");
    assert_eq!(
        (hours[0].1, hours[0].2, hours[0].3, hours[0].4),
        (0.0, 179.0, 178, 179.0)
    );
    assert_eq!(
        (hours[1].1, hours[1].2, hours[1].3, hours[1].4),
        (180.0, 209.0, 30, 209.0)
    );
}

/// Migrates `$pool` up to the migration before the rollups, writes the
/// backfill rows into it (`$ts` makes the database's `ts` of a time) and
/// closes it.
macro_rules! old_history {
    ($pool:expr, $dir:literal, $ts:expr) => {{
        migrator_before_rollups($dir)
            .await
            .run(&$pool)
            .await
            .unwrap();
        for i in 0..BACKFILL_ROWS {
            let (ts, value, quality) = backfill_row(i);
            sqlx::query(INSERT_OLD)
                .bind($ts(ts))
                .bind(value)
                .bind(quality)
                .execute(&$pool)
                .await
                .unwrap();
        }
        $pool.close().await;
    }};
}

const INSERT_OLD: &str = "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
                          VALUES ($1, 1, 1, $2, $3)";

#[tokio::test]
async fn postgres_migration_fills_the_rollups_from_history_written_before_it() {
    let url = common::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    old_history!(pool, "migrations/postgres", |ts| ts);
    let db = Db::postgres(&url).await.unwrap();
    assert_backfilled(&db).await;
    db.close().await;
}

#[tokio::test]
async fn sqlite_migration_fills_the_rollups_from_history_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    old_history!(pool, "migrations/sqlite", |ts: DateTime<Utc>| ts
        .timestamp_micros());
    let db = Db::sqlite(&path).await.unwrap();
    assert_backfilled(&db).await;
    db.close().await;
}

#[tokio::test]
async fn a_rollup_kept_shorter_than_the_raw_rows_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let settings = regpoll::app::Settings {
        sqlite_path: dir.path().join("never.db"),
        retention_1m: Some(Duration::from_secs(30 * 86_400)),
        ..Default::default()
    };
    let Err(e) = regpoll::app::start(&settings, regpoll::app::DeviceSource::Registry).await else {
        panic!("a 1-minute rollup kept 30 days beside raw rows kept a year must be refused");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("--retention-1m 30d") && e.contains("--retention 1y"),
        "{e}"
    );
    assert!(!settings.sqlite_path.exists(), "nothing was opened");
}

#[tokio::test]
async fn the_service_refreshes_the_rollups_and_applies_retention_and_records_both() {
    use regpoll::history::maintenance::Job;
    let dir = tempfile::tempdir().unwrap();
    let settings = regpoll::app::Settings {
        sqlite_path: dir.path().join("service.db"),
        ..Default::default()
    };
    let running = regpoll::app::start(&settings, regpoll::app::DeviceSource::Devices(vec![]))
        .await
        .unwrap();
    let runs = running.maintenance();
    let both_ran = || {
        let snap = runs.snapshot();
        let ok = |job| {
            snap.iter()
                .any(|(j, r)| *j == job && r.last_success.is_some())
        };
        ok(Job::RollupRefresh) && ok(Job::Retention)
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let next = runs.recorded();
            if both_ran() {
                break;
            }
            next.await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no run of both jobs in 30 s: {:?}", runs.snapshot()));
    assert!(runs.snapshot().iter().all(|(_, r)| r.last_error.is_none()));
    running.shutdown().await.unwrap();
}
