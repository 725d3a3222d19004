//! The history writers against real databases: the binary COPY stream carries
//! every column type and NULL exactly, and a replayed batch is neither
//! duplicated nor dropped.

mod common;

use chrono::{DateTime, Utc};
use regpoll::db::Db;
use regpoll::history::row::Row;
use regpoll::history::writer::{write, write_pieces};
use regpoll::reading::Quality;

fn row(
    ts_us: i64,
    register_id: i32,
    value: Option<f64>,
    text: Option<&str>,
    quality: Quality,
    detail: Option<&str>,
) -> Row {
    Row::new(
        DateTime::from_timestamp_micros(ts_us).unwrap(),
        register_id,
        register_id ^ 0x55,
        value,
        text,
        quality,
        detail,
    )
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Back {
    ts: DateTime<Utc>,
    register_id: i32,
    device_id: i32,
    value: Option<f64>,
    value_text: Option<String>,
    quality: String,
    detail: Option<String>,
}

#[tokio::test]
async fn binary_copy_round_trips_every_column_type_and_null() {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    let rows = vec![
        row(
            1_700_000_000_123_456,
            1,
            Some(21.5),
            None,
            Quality::Good,
            None,
        ),
        row(
            -86_400_000_001,
            2,
            None,
            None,
            Quality::Bad,
            Some("timeout after 1000 ms"),
        ), // before 1970
        row(631_152_000_000_007, 9, Some(1.0), None, Quality::Good, None), // 1990: before the PostgreSQL epoch
        row(
            946_684_800_000_000,
            3,
            Some(f64::NAN),
            None,
            Quality::Uncertain,
            Some("NaN float"),
        ),
        row(
            4_102_444_800_000_000,
            4,
            Some(f64::NEG_INFINITY),
            None,
            Quality::Uncertain,
            Some("-Inf float"),
        ),
        row(1, 5, Some(-0.0), Some(""), Quality::Good, Some("")),
        row(
            2,
            6,
            Some(1e-300),
            Some("pump ñ 7 — ✓"),
            Quality::Good,
            None,
        ),
        row(3, i32::MAX, Some(f64::MAX), None, Quality::Good, None),
        row(
            4,
            i32::MIN,
            Some(9_007_199_254_740_993.0),
            None,
            Quality::Good,
            None,
        ),
    ];
    assert_eq!(write(&db, &rows).await.unwrap(), rows.len() as u64);
    let Db::Postgres(pool) = &db else {
        unreachable!()
    };
    let back: Vec<Back> = sqlx::query_as("SELECT ts, register_id, device_id, value, value_text, quality, detail FROM register_readings ORDER BY register_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut want = rows.clone();
    want.sort_by_key(|r| r.register_id);
    assert_eq!(back.len(), want.len());
    for (b, w) in back.iter().zip(&want) {
        assert_eq!(
            (b.ts, b.register_id, b.device_id),
            (w.ts, w.register_id, w.device_id)
        );
        // Compare bits: NaN != NaN, and -0.0 == 0.0 would hide a sign loss.
        assert_eq!(
            b.value.map(f64::to_bits),
            w.value().map(f64::to_bits),
            "{b:?}"
        );
        assert_eq!(
            (
                b.value_text.as_deref(),
                b.quality.as_str(),
                b.detail.as_deref()
            ),
            (w.value_text(), w.quality.as_str(), w.detail())
        );
    }
}

async fn replay_is_neither_duplicated_nor_dropped(db: Db) {
    // More rows than fit in two pieces of a PostgreSQL COPY (8,192 rows each),
    // so that both the COPY and the staged rewrite span several pieces.
    let first: Vec<Row> = (0..20_000)
        .map(|i| {
            row(
                1_700_000_000_000_000 + i * 1000,
                (i % 7) as i32,
                Some(i as f64),
                None,
                Quality::Good,
                None,
            )
        })
        .collect();
    assert_eq!(write(&db, &first).await.unwrap(), 20_000);
    // The same 20,000 again, plus 5,000 new ones, in one batch.
    let mut replay = first.clone();
    replay.extend((20_000..25_000).map(|i| {
        row(
            1_700_000_000_000_000 + i * 1000,
            (i % 7) as i32,
            Some(i as f64),
            None,
            Quality::Good,
            None,
        )
    }));
    // Written as the writer holds a batch, in pieces (uneven here, so the
    // COPY's own pieces straddle them): still one batch.
    let pieces = [&replay[..3_000], &replay[3_000..3_001], &replay[3_001..]];
    assert_eq!(
        write_pieces(&db, &pieces).await.unwrap(),
        5_000,
        "only the new rows are written"
    );
    let count: i64 = match &db {
        Db::Postgres(p) => sqlx::query_scalar("SELECT count(*) FROM register_readings")
            .fetch_one(p)
            .await
            .unwrap(),
        Db::Sqlite(p) => sqlx::query_scalar("SELECT count(*) FROM register_readings")
            .fetch_one(p)
            .await
            .unwrap(),
    };
    assert_eq!(count, 25_000);
    db.close().await;
}

#[tokio::test]
async fn postgres_replay_is_neither_duplicated_nor_dropped() {
    replay_is_neither_duplicated_nor_dropped(
        Db::postgres(&common::fresh_postgres().await).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_replay_is_neither_duplicated_nor_dropped() {
    let dir = tempfile::tempdir().unwrap();
    replay_is_neither_duplicated_nor_dropped(Db::sqlite(&dir.path().join("h.db")).await.unwrap())
        .await;
}

/// Two registers over two hours; bad readings stay out of the rollup.
fn hourly_rows(hour0_us: i64) -> Vec<Row> {
    let h = 3_600_000_000;
    vec![
        row(hour0_us + 1, 1, Some(10.0), None, Quality::Good, None),
        row(
            hour0_us + 2,
            1,
            Some(30.0),
            None,
            Quality::Uncertain,
            Some("outside valid range"),
        ),
        row(
            hour0_us + 3,
            1,
            None,
            None,
            Quality::Bad,
            Some("timeout after 1000 ms"),
        ),
        row(hour0_us + 4, 1, Some(20.0), None, Quality::Good, None),
        row(hour0_us + h + 5, 1, Some(5.0), None, Quality::Good, None),
        row(hour0_us + 6, 2, Some(-1.0), None, Quality::Good, None),
    ]
}

async fn hourly_rollup_counts_good_and_uncertain_values(db: Db) {
    let hour0 = 1_700_002_800_000_000; // a whole hour
    common::register_ids(&db, 2).await;
    write(&db, &hourly_rows(hour0)).await.unwrap();
    let horizon = regpoll::history::rollup::Horizon::default();
    regpoll::history::rollup::refresh(&db, horizon)
        .await
        .unwrap();
    let sql = "SELECT register_id, avg, min, max, count, last FROM register_readings_hourly ORDER BY register_id, bucket";
    type Bucket = (i32, Option<f64>, Option<f64>, Option<f64>, i64, Option<f64>);
    let got: Vec<Bucket> = match &db {
        Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
    };
    assert_eq!(
        got,
        [
            (1, Some(20.0), Some(10.0), Some(30.0), 3, Some(20.0)),
            (1, Some(5.0), Some(5.0), Some(5.0), 1, Some(5.0)),
            (2, Some(-1.0), Some(-1.0), Some(-1.0), 1, Some(-1.0))
        ]
    );
    db.close().await;
}

#[tokio::test]
async fn postgres_hourly_rollup_counts_good_and_uncertain_values() {
    hourly_rollup_counts_good_and_uncertain_values(
        Db::postgres(&common::fresh_postgres().await).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_hourly_rollup_counts_good_and_uncertain_values() {
    let dir = tempfile::tempdir().unwrap();
    hourly_rollup_counts_good_and_uncertain_values(
        Db::sqlite(&dir.path().join("h.db")).await.unwrap(),
    )
    .await;
}

async fn retention_deletes_expired_rows_in_batches(db: Db) {
    use regpoll::history::retention::{DELETE_BATCH, Tiers, delete_older};
    let now = chrono::Utc::now().timestamp_micros();
    let old_start = now - 40 * 86_400_000_000;
    let expired = 2 * DELETE_BATCH + 7;
    let mut rows: Vec<Row> = (0..expired)
        .map(|i| {
            row(
                old_start + i * 1000,
                (i % 5) as i32,
                Some(1.0),
                None,
                Quality::Good,
                None,
            )
        })
        .collect();
    rows.extend((0..10).map(|i| row(now - i * 1000, 9, Some(2.0), None, Quality::Good, None)));
    for chunk in rows.chunks(5000) {
        write(&db, chunk).await.unwrap();
    }
    let keep = Tiers {
        raw: Some(std::time::Duration::from_secs(30 * 86_400)),
        minute: None,
        hour: None,
    };
    let deleted = delete_older(&db, &keep).await.unwrap();
    assert_eq!(deleted, expired as u64);
    let left: i64 = match &db {
        Db::Postgres(p) => sqlx::query_scalar("SELECT count(*) FROM register_readings")
            .fetch_one(p)
            .await
            .unwrap(),
        Db::Sqlite(p) => sqlx::query_scalar("SELECT count(*) FROM register_readings")
            .fetch_one(p)
            .await
            .unwrap(),
    };
    assert_eq!(left, 10, "recent readings stay");
    db.close().await;
}

#[tokio::test]
async fn postgres_retention_deletes_expired_rows_in_batches() {
    retention_deletes_expired_rows_in_batches(
        Db::postgres(&common::fresh_postgres().await).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_retention_deletes_expired_rows_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    retention_deletes_expired_rows_in_batches(Db::sqlite(&dir.path().join("h.db")).await.unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_left_by_an_earlier_run_is_replayed_at_start_around_its_damage() {
    use regpoll::app::{self, DeviceSource, Settings};
    use regpoll::history::spool::Spool;
    use regpoll::history::writer::BatchSettings;

    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let batches: Vec<Vec<Row>> = (0..3)
        .map(|b| {
            (0..20)
                .map(|i| {
                    row(
                        1_700_000_000_000_000 + b * 1000 + i,
                        1,
                        Some(i as f64),
                        None,
                        Quality::Good,
                        None,
                    )
                })
                .collect()
        })
        .collect();
    {
        let mut spool = Spool::open(&spool_dir, None).unwrap();
        for b in &batches {
            spool.append(b).unwrap();
        }
    }
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55; // inside the second record
    std::fs::write(&segment, &bytes).unwrap();

    let url = common::fresh_postgres().await;
    let settings = Settings {
        database_url: Some(url.clone()),
        batch: BatchSettings {
            spool_dir: Some(spool_dir.clone()),
            ..BatchSettings::default()
        },
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(Vec::new()))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut waited = 0;
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await
        .unwrap()
        < 40
    {
        assert!(waited < 100, "the spool was not replayed at start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the writer runs on its own
        waited += 1;
    }
    let summary = running.shutdown().await.unwrap();
    assert_eq!(
        (summary.history.rows_replayed, summary.history.spool_damage),
        (40, 1),
        "{summary:?}"
    );
    let stored: Vec<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM ts) * 1000000)::bigint FROM register_readings ORDER BY ts",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let want: Vec<i64> = batches[0]
        .iter()
        .chain(&batches[2])
        .map(|r| r.ts.timestamp_micros())
        .collect();
    assert_eq!(
        stored, want,
        "the first and third batches, not the damaged second"
    );
    assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
}

/// While a COPY waits on the database (here a lock held by another session;
/// in production a disk stall), the writer keeps taking reports, so pollers
/// handing over theirs do not wait; everything is written once it clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollers_do_not_wait_while_a_copy_is_stalled() {
    use regpoll::history::writer::{BatchSettings, HistoryStats, run_writer};
    use regpoll::reading::{PollReport, Reading, Value};
    use std::sync::Arc;
    use std::time::Duration;

    let url = common::fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    let yaml = r#"
defaults: { host: 127.0.0.1, port: 5020, every: 1s }
devices:
  - name: meter
    registers:
      - { name: a, kind: holding, address: 0, type: u16 }
      - { name: b, kind: holding, address: 1, type: u16 }
"#;
    let mut device = regpoll::config::parse(yaml, "devices.yaml")
        .unwrap()
        .remove(0);
    device.id = 1;
    device.register_ids = (1..=device.registers.len() as i32).collect();
    let device = Arc::new(device);
    let report = |n: i64| {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_000_000 + n * 1000).unwrap();
        Arc::new(PollReport {
            device: Arc::clone(&device),
            started: ts,
            latency: Duration::from_millis(1),
            error: None,
            reachable: true,
            demoted: false,
            readings: (0..2)
                .map(|index| Reading {
                    index,
                    ts,
                    value: Value::Number(n as f64),
                    quality: Quality::Good,
                    detail: None,
                })
                .collect(),
        })
    };

    // Another session holds the table, so the writer's first COPY waits.
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE register_readings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let stats = Arc::new(HistoryStats::default());
    let (_abort, abort_rx) = tokio::sync::watch::channel(false);
    // Batches of up to 1,000 rows: the 100 reports taken during the stuck
    // COPY are still one partial batch when the queue closes.
    let settings = BatchSettings {
        max_rows: 1_000,
        max_delay: Duration::from_millis(5),
        ..BatchSettings::default()
    };
    let writer = tokio::spawn(run_writer(
        db.clone(),
        rx,
        settings,
        Arc::clone(&stats),
        abort_rx,
    ));
    tx.send(report(0)).await.unwrap();
    until_activity(
        &admin,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY register_readings%' AND wait_event_type = 'Lock'",
        "the writer's COPY waiting for the lock",
    )
    .await;

    // 100 reports through a queue of 2, while the COPY is still stuck.
    tokio::time::timeout(Duration::from_secs(10), async {
        for n in 1..=100 {
            tx.send(report(n)).await.unwrap();
        }
    })
    .await
    .expect("pollers waited on the stalled COPY");
    assert_eq!(
        stats
            .rows_written
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The queue closes while the COPY is still stuck: what was taken during
    // it is written too, after it.
    drop(tx);
    lock.rollback().await.unwrap();
    writer.await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(stored, 202);
    db.close().await;
}

/// Holds `register_readings` locked for `hold` in a transaction of its own,
/// as the benchmark's `--stall` does (regpoll-bench's `stall_once`).
async fn stall_once(
    conn: &mut sqlx::PgConnection,
    hold: std::time::Duration,
) -> anyhow::Result<()> {
    use sqlx::{Connection as _, Executor as _};
    let mut tx = conn.begin().await?;
    tx.execute("LOCK TABLE register_readings IN ACCESS EXCLUSIVE MODE")
        .await?;
    sqlx::query("SELECT pg_sleep($1)")
        .bind(hold.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The benchmark's `--stall` holds the history table as a disk stall would:
/// a write started during one waits until it ends, then goes through.
#[tokio::test]
async fn a_made_stall_holds_writes_until_it_ends() {
    use sqlx::Connection as _;
    use std::time::{Duration, Instant};

    let url = common::fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let hold = Duration::from_millis(600);
    let stall = tokio::spawn(async move {
        stall_once(&mut conn, hold).await.unwrap();
    });
    until_activity(
        &admin,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
        "the stall",
    )
    .await;
    let started = Instant::now();
    let rows = [row(
        1_700_000_000_000_000,
        1,
        Some(1.0),
        None,
        Quality::Good,
        None,
    )];
    assert_eq!(write(&db, &rows).await.unwrap(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the write did not wait for the stall: {:?}",
        started.elapsed()
    );
    stall.await.unwrap();
    db.close().await;
}

/// Waits until `count_sql`, a count over `pg_stat_activity`, finds another
/// session in the state it asks for. That state cannot be awaited from here,
/// so it is polled, for up to 10 s; `what` names it in the failure.
async fn until_activity(admin: &sqlx::PgPool, count_sql: &'static str, what: &str) {
    for _ in 0..400 {
        let found: i64 = sqlx::query_scalar(count_sql)
            .fetch_one(admin)
            .await
            .unwrap();
        if found > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{what} never began");
}

/// After an outage the spool is replayed record by record, and new readings
/// are written between the records: a reading taken after the database came
/// back is stored long before the replay of the old ones is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_readings_are_written_while_the_spool_replays() {
    use regpoll::history::writer::{BatchSettings, HistoryStats, run_writer};
    use regpoll::reading::{PollReport, Reading, Value};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    // 300 records of 100 rows left by an outage.
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    {
        let mut spool = regpoll::history::spool::Spool::open(&spool_dir, None).unwrap();
        for b in 0..300 {
            let rows: Vec<Row> = (0..100)
                .map(|i| {
                    row(
                        1_600_000_000_000_000 + b * 1_000 + i,
                        1,
                        Some(i as f64),
                        None,
                        Quality::Good,
                        None,
                    )
                })
                .collect();
            spool.append_pieces(&[&rows]).unwrap();
        }
        spool.sync().unwrap();
    }
    let url = common::fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    let mut device = regpoll::config::parse(
        "devices:\n  - name: meter\n    host: 127.0.0.1\n    registers: [ { name: a, kind: holding, address: 0 } ]\n",
        "devices.yaml",
    )
    .unwrap()
    .remove(0);
    device.id = 1;
    device.register_ids = vec![2].into();
    let ts = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
    let report = Arc::new(PollReport {
        device: Arc::new(device),
        started: ts,
        latency: Duration::from_millis(1),
        error: None,
        reachable: true,
        demoted: false,
        readings: vec![Reading {
            index: 0,
            ts,
            value: Value::Number(1.0),
            quality: Quality::Good,
            detail: None,
        }],
    });

    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stats = Arc::new(HistoryStats::default());
    let (_abort, abort_rx) = tokio::sync::watch::channel(false);
    let settings = BatchSettings {
        max_rows: 100,
        max_delay: Duration::from_millis(10),
        spool_dir: Some(spool_dir.clone()),
        ..BatchSettings::default()
    };
    let writer = tokio::spawn(run_writer(
        db.clone(),
        rx,
        settings,
        Arc::clone(&stats),
        abort_rx,
    ));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while stats.rows_replayed.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the replay began");
    tx.send(report).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let new: i64 =
                sqlx::query_scalar("SELECT count(*) FROM register_readings WHERE register_id = 2")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if new == 1 {
                break;
            }
        }
    })
    .await
    .expect("the new reading was stored");
    let replayed = stats.rows_replayed.load(Ordering::Relaxed);
    assert!(
        replayed < 15_000,
        "the new reading waited for half the replay: {replayed} of 30,000 rows replayed before it"
    );
    drop(tx);
    writer.await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM register_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 30_001);
    assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
    db.close().await;
}
