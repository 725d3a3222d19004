//! The database's health, against real PostgreSQL and SQLite: the history
//! tables' sizes and row estimates grow with rows, a rollup table shows once
//! it exists, TimescaleDB's figures come from its functions (as documented;
//! stood in for on plain PostgreSQL, since CI has no TimescaleDB), and all of
//! it reaches `/metrics`, `/api/database`, the status page's Database card
//! and `regpoll status`. Hostile: a health read refused (permission denied),
//! hung, or cut off by the server is an error on the card and a metric,
//! never a crash or a hang, and the next read that works clears it.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use common::{fresh_postgres, http_get, render_page, simulate, wait_for_polls};
use regpoll::app::{Running, Settings};
use regpoll::db::Db;
use regpoll::history::health::{DatabaseHealth, SqliteFile, TableKind, TableStorage};

const ONE_DEVICE: &str = r#"
defaults: { host: 127.0.0.1, every: 200ms, timeout: 300ms }
devices:
  - name: boiler
    port: {A}
    registers:
      - { name: level, kind: holding, address: 0, type: u16 }
"#;

const READ: Duration = Duration::from_secs(10);

/// `rows` readings of register 1, one a second up to now.
const INSERT_PG: &str = "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
     SELECT now() - make_interval(secs => i), 1, 1, i, 'good' FROM generate_series(1, $1) AS i";

fn table<'a>(h: &'a DatabaseHealth, name: &str) -> &'a TableStorage {
    h.storage
        .report
        .as_ref()
        .and_then(|r| r.table(name))
        .unwrap_or_else(|| panic!("no {name} in {h:#?}"))
}

#[tokio::test]
async fn postgres_sizes_grow_with_rows_and_a_rollup_table_shows_once_it_exists() {
    let url = fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    let pool = db.as_postgres().unwrap().clone();
    let empty = DatabaseHealth::read(&db, READ).await;
    assert_eq!(empty.read_error(), None, "{empty:#?}");
    assert!(empty.jobs.jobs.is_none(), "no TimescaleDB, no jobs");
    let before = table(&empty, "register_readings");
    assert_eq!(before.kind, TableKind::Table);
    assert_eq!(before.chunks, None);
    let rollup0 = table(&empty, "register_readings_1m").clone();
    assert_eq!(rollup0.kind, TableKind::Table, "kept by regpoll's job");
    assert_eq!(
        table(&empty, "register_readings_hourly").kind,
        TableKind::Table
    );
    let mark = empty.storage.report.as_ref().unwrap().rollup_watermark;
    assert!(mark.is_some(), "the migration sets the rollups' watermark");

    sqlx::query(INSERT_PG)
        .bind(20_000)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE register_readings")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO register_readings_1m (register_id, bucket, avg, min, max, count, last) \
         SELECT 1, date_bin('1 minute', now(), TIMESTAMPTZ '1970-01-01') - make_interval(mins => i), \
                i, i, i, 1, i FROM generate_series(1, 5000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let full = DatabaseHealth::read(&db, READ).await;
    let after = table(&full, "register_readings");
    let (b0, b1) = (before.total_bytes.unwrap(), after.total_bytes.unwrap());
    // 20,000 rows of about 60 bytes, with the primary key's index.
    assert!(b1 >= b0 + 1_000_000, "{b0} -> {b1} bytes");
    assert!(after.index_bytes.unwrap() > 0);
    let rows = after.rows_estimate.expect("analyzed");
    assert!((19_000..=21_000).contains(&rows), "{rows}");
    let rollup = table(&full, "register_readings_1m");
    assert!(
        rollup.total_bytes.unwrap() > rollup0.total_bytes.unwrap() + 200_000,
        "{rollup0:?} -> {rollup:?}"
    );
    assert_eq!(rollup.rows_estimate, None, "never analyzed: unknown, not 0");
    db.close().await;
}

fn sqlite_file(h: &DatabaseHealth) -> SqliteFile {
    let report = h.storage.report.as_ref();
    report
        .and_then(|r| r.sqlite.clone())
        .unwrap_or_else(|| panic!("no SQLite file in {h:#?}"))
}

#[tokio::test]
async fn sqlite_pages_and_table_sizes_grow_with_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("h.db")).await.unwrap();
    let empty = DatabaseHealth::read(&db, READ).await;
    assert_eq!(empty.read_error(), None, "{empty:#?}");
    let file0 = sqlite_file(&empty);
    assert!(file0.page_size >= 512 && file0.page_count > 0, "{file0:?}");
    assert_eq!(file0.tables_note, None, "this SQLite has dbstat");
    let t0 = table(&empty, "register_readings").clone();
    assert_eq!(t0.rows_estimate, Some(0));

    let Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
         INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
         SELECT i * 1000000, 1, 1, i, 'good' FROM n",
    )
    .execute(pool)
    .await
    .unwrap();
    let full = DatabaseHealth::read(&db, READ).await;
    let t1 = table(&full, "register_readings");
    assert_eq!(t1.rows_estimate, Some(5000), "counted from its pages");
    assert!(
        t1.total_bytes.unwrap() > t0.total_bytes.unwrap() + 50_000,
        "{t0:?} -> {t1:?}"
    );
    let file1 = sqlite_file(&full);
    assert!(
        file1.page_count > file0.page_count,
        "{file0:?} -> {file1:?}"
    );
    assert!(file1.file_bytes + file1.wal_bytes > file0.file_bytes + file0.wal_bytes);
    db.close().await;
}

/// TimescaleDB's informational views and size functions with the columns
/// and signatures its documentation gives (those regpoll reads), so that
/// the TimescaleDB path runs on plain PostgreSQL: `register_readings` as a
/// hypertable of 3 chunks, 2 of them compressed 10:1, and the 1-minute
/// rollup as a continuous aggregate on a materialization hypertable. The
/// sizes are the real tables' own.
const FAKE_TIMESCALEDB: &str = "
CREATE SCHEMA timescaledb_information;
CREATE SCHEMA _timescaledb_internal;
CREATE TABLE _timescaledb_internal._materialized_hypertable_3 (
    register_id int, bucket timestamptz, avg float8, PRIMARY KEY (register_id, bucket));
CREATE TABLE timescaledb_information.hypertables (
    hypertable_schema name, hypertable_name name, compression_enabled boolean);
INSERT INTO timescaledb_information.hypertables VALUES
    ('public', 'register_readings', true),
    ('_timescaledb_internal', '_materialized_hypertable_3', false);
CREATE TABLE timescaledb_information.continuous_aggregates (
    view_name name, materialization_hypertable_schema name,
    materialization_hypertable_name name, compression_enabled boolean);
INSERT INTO timescaledb_information.continuous_aggregates VALUES
    ('register_readings_1m', '_timescaledb_internal', '_materialized_hypertable_3', false);
CREATE TABLE timescaledb_information.chunks (
    hypertable_schema name, hypertable_name name, chunk_name name, is_compressed boolean);
INSERT INTO timescaledb_information.chunks VALUES
    ('public', 'register_readings', '_hyper_1_1_chunk', true),
    ('public', 'register_readings', '_hyper_1_2_chunk', true),
    ('public', 'register_readings', '_hyper_1_3_chunk', false),
    ('_timescaledb_internal', '_materialized_hypertable_3', '_hyper_3_4_chunk', false),
    ('public', 'someone_elses', '_hyper_9_9_chunk', false);
CREATE FUNCTION hypertable_detailed_size(hypertable regclass) RETURNS TABLE (
    table_bytes bigint, index_bytes bigint, toast_bytes bigint, total_bytes bigint, node_name name)
LANGUAGE sql AS $$
    SELECT pg_table_size(hypertable), pg_indexes_size(hypertable), 0::bigint,
           pg_total_relation_size(hypertable), NULL::name
$$;
CREATE FUNCTION approximate_row_count(relation regclass) RETURNS bigint
LANGUAGE sql AS $$ SELECT 12345::bigint $$;
CREATE FUNCTION hypertable_compression_stats(hypertable regclass) RETURNS TABLE (
    total_chunks bigint, number_compressed_chunks bigint,
    before_compression_total_bytes bigint, after_compression_total_bytes bigint, node_name name)
LANGUAGE sql AS $$ SELECT 3::bigint, 2::bigint, 1000000::bigint, 100000::bigint, NULL::name $$;
";

/// The stand-in's size function made to fail as a read can: refused,
/// hung past the timeout, or cut off by the server.
const REFUSED: &str =
    "CREATE OR REPLACE FUNCTION hypertable_detailed_size(hypertable regclass) RETURNS TABLE (
    table_bytes bigint, index_bytes bigint, toast_bytes bigint, total_bytes bigint, node_name name)
LANGUAGE plpgsql AS $$ BEGIN
    RAISE EXCEPTION 'permission denied for table _hyper_1_1_chunk' USING ERRCODE = '42501';
END $$";
const HUNG: &str = "CREATE OR REPLACE FUNCTION hypertable_detailed_size(hypertable regclass) RETURNS TABLE (
    table_bytes bigint, index_bytes bigint, toast_bytes bigint, total_bytes bigint, node_name name)
LANGUAGE sql AS $$ SELECT pg_sleep(60); SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, NULL::name $$";
const CUT_OFF: &str =
    "CREATE OR REPLACE FUNCTION hypertable_detailed_size(hypertable regclass) RETURNS TABLE (
    table_bytes bigint, index_bytes bigint, toast_bytes bigint, total_bytes bigint, node_name name)
LANGUAGE sql AS $$ SELECT pg_terminate_backend(pg_backend_pid());
    SELECT 0::bigint, 0::bigint, 0::bigint, 0::bigint, NULL::name $$";
const WORKING: &str =
    "CREATE OR REPLACE FUNCTION hypertable_detailed_size(hypertable regclass) RETURNS TABLE (
    table_bytes bigint, index_bytes bigint, toast_bytes bigint, total_bytes bigint, node_name name)
LANGUAGE sql AS $$ SELECT 1::bigint, 2::bigint, 0::bigint, 777::bigint, NULL::name $$";

async fn fake_timescaledb() -> (String, sqlx::PgPool) {
    let url = fresh_postgres().await;
    Db::postgres(&url).await.unwrap().close().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(FAKE_TIMESCALEDB)
        .execute(&pool)
        .await
        .unwrap();
    (url, pool)
}

#[tokio::test]
async fn timescaledb_figures_come_from_its_size_chunk_and_compression_functions() {
    let (url, pool) = fake_timescaledb().await;
    sqlx::query(INSERT_PG)
        .bind(5_000)
        .execute(&pool)
        .await
        .unwrap();
    let db = Db::postgres(&url).await.unwrap();
    let h = DatabaseHealth::read(&db, READ).await;
    assert_eq!(h.read_error(), None, "{h:#?}");
    let raw = table(&h, "register_readings");
    assert_eq!(raw.kind, TableKind::Hypertable);
    assert_eq!((raw.chunks, raw.compressed_chunks), (Some(3), Some(2)));
    assert_eq!(raw.rows_estimate, Some(12345), "approximate_row_count's");
    assert!(raw.total_bytes.unwrap() > 100_000, "{raw:?}");
    let c = raw.compression.expect("compressed chunks");
    assert_eq!(
        (c.before_bytes, c.after_bytes, c.ratio()),
        (1_000_000, 100_000, Some(10.0))
    );
    let rollup = table(&h, "register_readings_1m");
    assert_eq!(rollup.kind, TableKind::ContinuousAggregate);
    assert_eq!(
        (rollup.chunks, rollup.compressed_chunks),
        (Some(1), Some(0))
    );
    assert_eq!(rollup.compression, None, "compression is off there");
    assert!(
        rollup.total_bytes.unwrap() > 0,
        "the materialization hypertable's"
    );
    assert_eq!(table(&h, "register_readings_hourly").kind, TableKind::Table);
    db.close().await;
    pool.close().await;
}

/// A service on the stand-in TimescaleDB reading its health every 100 ms.
async fn service_on(url: String, timeout: Duration) -> (common::SimFixture, Running, SocketAddr) {
    let fixture = simulate(ONE_DEVICE, &["{A}"]).await;
    let settings = Settings {
        database_url: Some(url),
        jobs_check_interval: Duration::from_millis(100),
        db_health_timeout: timeout,
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 1).await;
    (fixture, running, addr)
}

/// Asks `/api/database` until `done` holds of it (30 s at most).
async fn database_until(
    addr: SocketAddr,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http_get(addr, "/api/database").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never came: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(metrics: &str, start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `{start}` in\n{metrics}"))
}

fn read_error(body: &serde_json::Value) -> Option<String> {
    body["storage"]["read_error"].as_str().map(str::to_string)
}

/// The Database card of the page, as Chromium painted it.
async fn card(addr: SocketAddr) -> String {
    let (dom, _) = render_page(&format!("http://{addr}/"), Duration::from_secs(3), None).await;
    let at = dom.find("id=\"database\"").expect("the Database card");
    let card = &dom[at..];
    card[..card.find("</section>").unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_reach_metrics_the_api_and_the_status_page() {
    let (url, pool) = fake_timescaledb().await;
    let (_fixture, running, addr) = service_on(url, Duration::from_secs(5)).await;
    let body = database_until(addr, |b| b["storage"]["read_at"].is_string()).await;
    assert_eq!(body["kind"], "postgres");
    assert!(!body.to_string().contains("password"), "{body}");
    let tables = body["storage"]["tables"].as_array().unwrap();
    assert_eq!(tables[0]["name"], "register_readings");
    assert_eq!(tables[0]["kind"], "hypertable");

    let metrics = http_get(addr, "/metrics").await.body;
    let raw = "{table=\"register_readings\"}";
    assert!(metric(&metrics, &format!("regpoll_db_table_bytes{raw} ")) > 0.0);
    assert!(metric(&metrics, &format!("regpoll_db_index_bytes{raw} ")) > 0.0);
    assert_eq!(
        metric(&metrics, &format!("regpoll_db_rows_estimate{raw} ")),
        12345.0
    );
    assert_eq!(metric(&metrics, &format!("regpoll_db_chunks{raw} ")), 3.0);
    assert_eq!(
        metric(&metrics, &format!("regpoll_db_compressed_chunks{raw} ")),
        2.0
    );
    assert_eq!(
        metric(&metrics, &format!("regpoll_db_compression_ratio{raw} ")),
        10.0
    );
    assert_eq!(
        metric(
            &metrics,
            "regpoll_db_chunks{table=\"register_readings_1m\"} "
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "regpoll_db_health_read_ok "), 1.0);
    assert_eq!(
        metric(&metrics, "regpoll_db_health_read_failures_total "),
        0.0
    );
    assert!(metric(&metrics, "regpoll_db_health_age_seconds ") < 30.0);
    assert!(
        !metrics.contains("regpoll_sqlite_"),
        "PostgreSQL has no SQLite file"
    );

    let card = card(addr).await;
    assert!(card.contains(">Database<"), "{card}");
    assert!(card.contains("data-table=\"register_readings\""), "{card}");
    assert!(card.contains("10.0×"), "the compression ratio: {card}");
    assert!(card.contains("continuous aggregate"), "{card}");
    assert!(!card.contains("data-db-error"), "{card}");
    running.shutdown().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hung_or_cut_off_read_is_an_error_on_the_card_and_a_metric_until_one_works() {
    let (url, pool) = fake_timescaledb().await;
    let (_fixture, running, addr) = service_on(url, Duration::from_millis(700)).await;
    database_until(addr, |b| b["storage"]["read_at"].is_string()).await;

    sqlx::raw_sql(REFUSED).execute(&pool).await.unwrap();
    let body = database_until(addr, |b| read_error(b).is_some()).await;
    let e = read_error(&body).unwrap();
    assert!(
        e.contains("permission denied for table _hyper_1_1_chunk"),
        "{e}"
    );
    assert!(
        e.contains("hypertable_detailed_size of register_readings"),
        "{e}"
    );
    assert!(
        body["storage"]["tables"].is_array(),
        "the last figures stay"
    );
    let metrics = http_get(addr, "/metrics").await.body;
    assert_eq!(metric(&metrics, "regpoll_db_health_read_ok "), 0.0);
    assert!(metric(&metrics, "regpoll_db_health_read_failures_total ") >= 1.0);
    let ready = http_get(addr, "/ready").await;
    assert_eq!(ready.status, 200, "polling goes on: {}", ready.body);
    assert!(
        ready
            .body
            .contains("database health: cannot read table sizes"),
        "{}",
        ready.body
    );
    let card = card(addr).await;
    assert!(card.contains("data-db-error"), "{card}");
    assert!(card.contains("permission denied"), "{card}");

    for (bad, expected) in [
        (HUNG, &["timeout", "no answer within"][..]),
        (CUT_OFF, &["terminat", "closed", "connection"][..]),
    ] {
        sqlx::raw_sql(bad).execute(&pool).await.unwrap();
        let body = database_until(addr, |b| {
            read_error(b).is_some_and(|e| expected.iter().any(|x| e.contains(x)))
        })
        .await;
        // The API answered all along: the read is bounded, not in its way.
        assert!(read_error(&body).is_some());
    }

    sqlx::raw_sql(WORKING).execute(&pool).await.unwrap();
    let body = database_until(addr, |b| read_error(b).is_none()).await;
    assert_eq!(body["storage"]["tables"][0]["total_bytes"], 777);
    let metrics = http_get(addr, "/metrics").await.body;
    assert_eq!(metric(&metrics, "regpoll_db_health_read_ok "), 1.0);
    assert!(metric(&metrics, "regpoll_db_health_read_failures_total ") >= 3.0);
    assert!(
        !http_get(addr, "/ready")
            .await
            .body
            .contains("database health")
    );
    running.shutdown().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_service_shows_its_file_on_metrics_and_the_card() {
    let fixture = simulate(ONE_DEVICE, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("h.db"),
        jobs_check_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 3).await;
    let body = database_until(addr, |b| {
        b["storage"]["tables"][0]["rows_estimate"].as_i64() > Some(0)
    })
    .await;
    assert_eq!(body["kind"], "sqlite");
    assert!(
        body["storage"]["sqlite"]["page_count"].as_i64() > Some(0),
        "{body:#}"
    );
    let metrics = http_get(addr, "/metrics").await.body;
    assert!(metric(&metrics, "regpoll_sqlite_file_bytes ") > 0.0);
    assert!(metric(&metrics, "regpoll_sqlite_pages ") > 0.0);
    metric(&metrics, "regpoll_sqlite_free_pages ");
    assert!(
        metric(
            &metrics,
            "regpoll_db_rows_estimate{table=\"register_readings\"} "
        ) > 0.0
    );
    assert!(
        !metrics.contains("regpoll_db_chunks"),
        "no chunks without TimescaleDB"
    );
    let card = card(addr).await;
    assert!(card.contains("SQLite file"), "{card}");
    assert!(
        card.contains("data-table=\"register_readings_1m\""),
        "{card}"
    );
    assert!(card.contains("rollups complete up to"), "{card}");
    running.shutdown().await.unwrap();
}

/// `regpoll status ARGS`, with no database variable of the caller's.
async fn status(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .arg("status")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("regpoll status ends")
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[tokio::test]
async fn regpoll_status_prints_the_health_of_postgres_and_sqlite_without_the_service() {
    let (url, pool) = fake_timescaledb().await;
    let out = status(&["--database-url", &url]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("database: postgres at "), "{stdout}");
    for cell in [
        "register_readings ",
        "hypertable",
        "continuous_aggregate",
        "10.0x",
        "12345",
    ] {
        assert!(stdout.contains(cell), "no `{cell}` in\n{stdout}");
    }
    let json = status(&["--database-url", &url, "--json"]).await;
    let body: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(body["storage"]["tables"][0]["chunks"], 3);

    // A refused read: what could be read is printed, and the exit says so.
    sqlx::raw_sql(REFUSED).execute(&pool).await.unwrap();
    let out = status(&["--database-url", &url]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    pool.close().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    Db::sqlite(&path).await.unwrap().close().await;
    let out = status(&["--sqlite-path", path.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("database: sqlite at "), "{stdout}");
    assert!(stdout.contains("sqlite file "), "{stdout}");
    assert!(
        stdout.contains("register_readings_hourly    table"),
        "{stdout}"
    );
    assert!(stdout.contains("rollups complete up to "), "{stdout}");
}

#[tokio::test]
async fn regpoll_status_says_when_the_database_is_unreachable_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://regpoll:S3cret@127.0.0.1:{port}/regpoll");
    let started = std::time::Instant::now();
    let out = status(&["--database-url", &url, "--db-health-timeout", "2s"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    assert!(
        stderr.contains(&format!(
            "cannot reach the database at postgres://regpoll:***@127.0.0.1:{port}/regpoll"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains("S3cret") && !stdout.contains("S3cret"));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.db");
    let out = status(&["--sqlite-path", missing.to_str().unwrap()]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no SQLite database at"), "{stderr}");
    assert!(!missing.exists(), "status never creates a database");
}

/// regpoll's own maintenance jobs: the rollup refresh's runs on the API,
/// `/metrics` and the card, and a failing run as a `/ready` warning and a
/// red row until a run works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_runs_show_and_a_failing_refresh_is_a_warning_until_one_works() {
    let fixture = simulate(ONE_DEVICE, &["{A}"]).await;
    let url = fresh_postgres().await;
    let settings = Settings {
        database_url: Some(url.clone()),
        jobs_check_interval: Duration::from_millis(100),
        rollup_interval: Duration::from_millis(200),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 2).await;
    let refresh = |b: &serde_json::Value, done: fn(&serde_json::Value) -> bool| {
        b["maintenance"]
            .as_array()
            .is_some_and(|runs| runs.iter().any(|r| r["job"] == "rollup_refresh" && done(r)))
    };
    database_until(addr, |b| refresh(b, |r| r["last_success"].is_string())).await;
    let metrics = http_get(addr, "/metrics").await.body;
    let job = "{job=\"rollup_refresh\"}";
    let success = format!("regpoll_maintenance_job_last_run_success{job} ");
    assert_eq!(metric(&metrics, &success), 1.0);
    let run_age = format!("regpoll_maintenance_job_last_run_age_seconds{job} ");
    assert!(metric(&metrics, &run_age) < 30.0);
    assert!(metric(&metrics, "regpoll_rollup_watermark_age_seconds ") < 120.0);
    let page = card(addr).await;
    assert!(
        page.contains("data-maintenance=\"rollup_refresh\""),
        "{page}"
    );

    // The refresh cannot write its table: its runs fail while polling goes on.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rename = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(rename("register_readings_1m", "away")))
        .execute(&pool)
        .await
        .unwrap();
    database_until(addr, |b| refresh(b, |r| r["last_error"].is_string())).await;
    let ready = http_get(addr, "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let warned = "maintenance: rollup_refresh failed (last success ";
    assert!(ready.body.contains(warned), "{}", ready.body);
    let metrics = http_get(addr, "/metrics").await.body;
    assert_eq!(metric(&metrics, &success), 0.0);
    let page = card(addr).await;
    let red = "class=\"failing\" data-maintenance=\"rollup_refresh\"";
    assert!(page.contains(red), "{page}");

    sqlx::raw_sql(sqlx::AssertSqlSafe(rename("away", "register_readings_1m")))
        .execute(&pool)
        .await
        .unwrap();
    database_until(addr, |b| refresh(b, |r| r["last_error"].is_null())).await;
    assert!(!http_get(addr, "/ready").await.body.contains("maintenance:"));
    running.shutdown().await.unwrap();
    pool.close().await;
}
