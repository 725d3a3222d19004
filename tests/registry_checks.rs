//! Registry rows regpoll cannot use: the database refuses them (migrations
//! 0009, 0010 and 0012), a migration over rows that already break the rules stops and names
//! them, and what still gets through (rules only the loader can check, such
//! as a cron pattern) is shown on /ready, /metrics, /api/devices and Redis.
//! A reload also clears from Redis what is no longer polled.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use redis::AsyncCommands as _;
use regpoll::app::{self, DeviceSource, Running, Settings};
use regpoll::db::Db;
use sqlx::Executor as _;

const FLEET: &str = r#"
defaults: { host: 127.0.0.1, port: {A}, every: 200ms }
devices:
  - name: meter
    unit_id: 1
    registers:
      - { name: volts, kind: holding, address: 0 }
      - { name: amps, kind: holding, address: 1 }
  - name: pump
    unit_id: 2
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: retired
    unit_id: 4
    registers: [ { name: r, kind: holding, address: 0 } ]
"#;

fn pool(db: &Db) -> &sqlx::PgPool {
    let Db::Postgres(pool) = db else {
        unreachable!("a PostgreSQL test")
    };
    pool
}

/// The device every row check hangs its registers on.
const DEVICE_D: &str = "INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms) VALUES ('d', 'h', 502, 1, 1000, 1000)";

/// A fresh PostgreSQL registry holding `DEVICE_D` (id 1).
async fn postgres_with_device() -> Db {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    pool(&db).execute(DEVICE_D).await.unwrap();
    db
}

/// The next message on the subscribed channels that `wanted` accepts.
async fn message_where(
    pubsub: &mut redis::aio::PubSub,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut messages = pubsub.on_message();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = messages.next().await.expect("the subscription ended");
            let json: serde_json::Value =
                serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
            if wanted(&json) {
                return json;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no message with {what} within 10 s"))
}

async fn start(url: &str, redis: Option<(&str, &str)>) -> Running {
    let settings = Settings {
        database_url: Some(url.to_string()),
        redis_url: redis.map(|(u, _)| u.to_string()),
        redis_prefix: redis.map_or("regpoll".to_string(), |(_, p)| p.to_string()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    app::start(&settings, DeviceSource::Registry).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_register_leaves_redis_and_a_deactivated_device_is_published_inactive() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    db.sync_devices(&fixture.devices).await.unwrap();
    let (redis_url, prefix) = common::redis();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    for d in ["meter", "pump"] {
        pubsub
            .subscribe(format!("{prefix}:updates:{d}"))
            .await
            .unwrap();
    }
    // Deactivated while regpoll was not running: marked so at start, and
    // its values of an earlier run leave Redis.
    pool(&db)
        .execute("UPDATE devices SET active = false WHERE name = 'retired'")
        .await
        .unwrap();
    let _: () = con
        .hset(format!("{prefix}:latest:retired"), "r", "{}")
        .await
        .unwrap();
    let running = start(&url, Some((&redis_url, &prefix))).await;
    common::wait_for_polls(&running, 2).await;
    message_where(&mut pubsub, "both fields of meter", |m| {
        m["values"].as_object().is_some_and(|v| v.len() == 2)
    })
    .await;

    pool(&db)
        .execute("UPDATE device_register_map SET name = 'current' WHERE name = 'amps'")
        .await
        .unwrap();
    let removed = message_where(&mut pubsub, "removed registers", |m| {
        m.get("removed").is_some()
    })
    .await;
    assert_eq!(removed["device"], "meter");
    assert_eq!(removed["removed"], serde_json::json!(["amps"]));
    let fields: Vec<String> = con.hkeys(format!("{prefix}:latest:meter")).await.unwrap();
    assert!(!fields.contains(&"amps".to_string()), "{fields:?}");
    // Memory follows at once: the API never serves the old name again.
    let values = running.latest.device("meter").unwrap().values;
    assert!(!values.contains_key("amps"), "{values:?}");

    pool(&db)
        .execute("UPDATE devices SET active = false WHERE name = 'pump'")
        .await
        .unwrap();
    let stopped = message_where(&mut pubsub, "pump inactive", |m| {
        m["device"] == "pump" && m.get("values").is_none()
    })
    .await;
    assert_eq!(stopped["state"], "inactive");
    let state: HashMap<String, String> =
        con.hgetall(format!("{prefix}:device:pump")).await.unwrap();
    assert_eq!(state["state"], "inactive", "{state:?}");
    let latest: HashMap<String, String> =
        con.hgetall(format!("{prefix}:latest:pump")).await.unwrap();
    assert!(latest.is_empty(), "{latest:?}");
    let retired: HashMap<String, String> = con
        .hgetall(format!("{prefix}:device:retired"))
        .await
        .unwrap();
    assert_eq!(retired["state"], "inactive", "{retired:?}");
    let latest: HashMap<String, String> = con
        .hgetall(format!("{prefix}:latest:retired"))
        .await
        .unwrap();
    assert!(latest.is_empty(), "{latest:?}");
    running.shutdown().await.unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_registry_rows_regpoll_cannot_use() {
    let db = postgres_with_device().await;
    let pool = pool(&db);
    for (columns, values, constraint) in [
        (
            "kind, address, data_type",
            "'holding', 0, 'float'",
            "register_data_type_known",
        ),
        (
            "kind, address, data_type, word_order",
            "'holding', 0, 'u16', 'CDAB'",
            "register_word_order_fits_type",
        ),
        (
            "kind, address, data_type",
            "'holding', 0, 'bool'",
            "register_bool_word_needs_bit",
        ),
        (
            "kind, address, data_type",
            "'coil', 0, 'u16'",
            "register_bit_kinds_are_bool",
        ),
        (
            "kind, address, data_type, scale",
            "'holding', 0, 'u16', 'NaN'",
            "register_scale_finite_nonzero",
        ),
        (
            "kind, address, data_type",
            "'holding', 65533, 'f64'",
            "register_fits_address_space",
        ),
        (
            "kind, address, data_type, length",
            "'holding', 0, 'u16', 2",
            "register_length_only_for_string",
        ),
        (
            "kind, address, data_type, valid_min, valid_max",
            "'holding', 0, 'u16', 5, 1",
            "register_valid_range_ordered",
        ),
    ] {
        let sql = format!(
            "INSERT INTO device_register_map (device_id, name, {columns}) \
             SELECT id, 'r', {values} FROM devices WHERE name = 'd'"
        );
        let e = pool
            .execute(sqlx::AssertSqlSafe(sql.clone()))
            .await
            .expect_err(&sql)
            .to_string();
        assert!(e.contains(constraint), "{sql}: {e}");
    }
    // What devices.yaml accepts still goes in.
    pool.execute("INSERT INTO device_register_map (device_id, name, kind, address, data_type, word_order) SELECT id, 'ok', 'holding', 0, 'f64', 'GHEFCDAB' FROM devices")
        .await
        .unwrap();
    db.close().await;
}

/// Migration 0010: the types f16, bcd16, bcd32, u8 and i8, the `byte` a u8
/// or i8 reads, and strings that swap words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_the_new_types_and_refuses_a_byte_where_it_means_nothing() {
    let db = postgres_with_device().await;
    let pool = pool(&db);
    let insert = |columns: &str, values: &str| {
        format!(
            "INSERT INTO device_register_map (device_id, name, {columns}) \
             SELECT id, 'r', {values} FROM devices WHERE name = 'd'"
        )
    };
    for (columns, values, constraint) in [
        (
            "kind, address, data_type, byte",
            "'holding', 0, 'u8', 'middle'",
            "register_byte_known",
        ),
        (
            "kind, address, data_type, byte",
            "'holding', 0, 'u16', 'high'",
            "register_byte_only_on_bytes",
        ),
        (
            "kind, address, data_type",
            "'holding', 0, 'i8'",
            "register_byte_only_on_bytes",
        ),
        (
            "kind, address, data_type, byte, word_order",
            "'holding', 0, 'u8', 'low', 'BADC'",
            "register_word_order_fits_type",
        ),
        (
            "kind, address, data_type, word_order",
            "'holding', 0, 'bcd16', 'CDAB'",
            "register_word_order_fits_type",
        ),
        (
            "kind, address, data_type, word_order",
            "'holding', 0, 'f16', 'DCBA'",
            "register_word_order_fits_type",
        ),
        (
            "kind, address, data_type, length, word_order",
            "'holding', 0, 'string', 4, 'GHEFCDAB'",
            "register_word_order_fits_type",
        ),
        (
            "kind, address, data_type",
            "'holding', 65535, 'bcd32'",
            "register_fits_address_space",
        ),
    ] {
        let sql = insert(columns, values);
        let e = pool
            .execute(sqlx::AssertSqlSafe(sql.clone()))
            .await
            .expect_err(&sql)
            .to_string();
        assert!(e.contains(constraint), "{sql}: {e}");
    }

    // What devices.yaml accepts goes in, and comes back as it was written.
    let yaml = "devices:\n  - name: meter\n    host: 127.0.0.1\n    registers:\n      - { name: mode, kind: holding, address: 0, type: u8, byte: high }\n      - { name: trim, kind: holding, address: 0, type: i8, byte: low }\n      - { name: level, kind: input, address: 1, type: f16, order: BADC }\n      - { name: code, kind: input, address: 2, type: bcd16 }\n      - { name: hours, kind: input, address: 3, type: bcd32, order: CDAB }\n      - { name: label, kind: input, address: 5, type: string, length: 3, order: DCBA }\n";
    let devices = regpoll::config::parse(yaml, "devices.yaml").unwrap();
    db.sync_devices(&devices).await.unwrap();
    let loaded = db.load_devices().await.unwrap();
    assert_eq!(loaded.problems, Vec::<String>::new());
    let meter = loaded.devices.iter().find(|d| d.name == "meter").unwrap();
    assert_eq!(meter.registers, devices[0].registers);
    let stored: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, byte FROM device_register_map WHERE byte IS NOT NULL ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            ("mode".to_string(), Some("high".to_string())),
            ("trim".to_string(), Some("low".to_string()))
        ]
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_migration_names_rows_that_break_them_and_changes_nothing() {
    // Every migration before 0009, as a database migrated by an older regpoll.
    let older = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("migrations/postgres").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < "0009" {
            std::fs::copy(&path, older.path().join(name)).unwrap();
        }
    }
    let url = common::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(older.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool.execute(
        "WITH d AS (INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms) \
         VALUES ('pump-station', '127.0.0.1', 502, 1, 1000, 1000) RETURNING id) \
         INSERT INTO device_register_map (device_id, name, kind, address, data_type) \
         SELECT id, 'flow', 'holding', 0, 'float' FROM d",
    )
    .await
    .unwrap();

    let Err(e) = Db::postgres(&url).await else {
        panic!("the migration must fail");
    };
    let e = format!("{e:#}");
    for part in [
        "device pump-station register flow",
        "unknown data_type 'float'",
        "regpoll migrate again",
    ] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
    let kept: String = sqlx::query_scalar("SELECT data_type FROM device_register_map")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, "float", "the row was left as it was");
    pool.execute("UPDATE device_register_map SET data_type = 'f32'")
        .await
        .unwrap();
    Db::postgres(&url)
        .await
        .expect("migrates once the row is fixed");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_only_the_loader_can_refuse_is_shown_on_ready_metrics_devices_and_redis() {
    let fixture = common::simulate(FLEET, &["{A}"]).await;
    let url = common::fresh_postgres().await;
    let db = Db::postgres(&url).await.unwrap();
    db.sync_devices(&fixture.devices).await.unwrap();
    let (redis_url, prefix) = common::redis();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{prefix}:updates:tank"))
        .await
        .unwrap();
    let running = start(&url, Some((&redis_url, &prefix))).await;
    let http = running.http_addr().unwrap();
    common::wait_for_polls(&running, 1).await;

    // A new device whose cron pattern cannot be parsed: nothing to fall back on.
    let port = fixture.devices[0].port;
    pool(&db)
        .execute(sqlx::AssertSqlSafe(format!(
            "WITH d AS (INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms, cron) \
             VALUES ('tank', '127.0.0.1', {port}, 3, 200, 1000, 'every tuesday') RETURNING id) \
             INSERT INTO device_register_map (device_id, name, kind, address, data_type) SELECT id, 'r', 'holding', 0, 'u16' FROM d"
        )))
        .await
        .unwrap();
    let skipped = message_where(&mut pubsub, "tank skipped", |m| m["state"] == "skipped").await;
    assert!(
        skipped["error"].as_str().unwrap().contains("every tuesday"),
        "{skipped}"
    );
    let state: HashMap<String, String> =
        con.hgetall(format!("{prefix}:device:tank")).await.unwrap();
    assert_eq!(state["state"], "skipped");

    // A polled device's row goes bad: its previous definition keeps being polled.
    pool(&db)
        .execute("UPDATE devices SET timezone = 'Mars/Olympus', cron = '*/1 * * * * *' WHERE name = 'pump'")
        .await
        .unwrap();
    let ready = wait_for_body(http, "/ready", "pump: row rejected, still polling").await;
    let warnings = ready["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("registry: device tank skipped: ")),
        "{ready}"
    );
    assert_eq!(ready["ready"], true);
    assert!(running.devices().iter().any(|d| d.name == "pump"));
    let polls = running.latest.device("pump").unwrap().state.polls;
    common::wait_for_polls(&running, polls + 2).await;

    let devices = common::http_get(http, "/api/devices").await.json();
    let tank = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "tank")
        .expect("tank listed")
        .clone();
    assert_eq!(tank["state"], "skipped");
    assert!(tank["reason"].as_str().unwrap().contains("every tuesday"));
    // The status page's listing: both need attention and come first, the
    // skipped one counted under its own state.
    let fleet = common::http_get(http, "/api/fleet?state=attention")
        .await
        .json();
    assert_eq!(fleet["summary"]["states"]["skipped"], 1, "{fleet}");
    let names: Vec<&str> = fleet["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"tank") && names.contains(&"pump"),
        "{fleet}"
    );
    let metrics = common::http_get(http, "/metrics").await.body;
    for device in ["tank", "pump"] {
        assert!(
            metrics.contains(&format!(
                "regpoll_registry_rejected{{device=\"{device}\"}} 1"
            )),
            "{device}: {metrics}"
        );
    }
    let stats = common::http_get(http, "/api/stats").await.json();
    assert!(stats["registry"]["rejected"]["tank"].is_string(), "{stats}");

    // Fixed: every sign of it goes.
    pool(&db)
        .execute("UPDATE devices SET cron = NULL, timezone = NULL WHERE name IN ('tank', 'pump')")
        .await
        .unwrap();
    let metrics = wait_for_text(http, "/metrics", |t| {
        !t.contains("regpoll_registry_rejected{")
    })
    .await;
    assert!(metrics.contains("# TYPE regpoll_registry_rejected gauge"));
    let ready = common::http_get(http, "/ready").await.json();
    assert!(ready.get("warnings").is_none(), "{ready}");
    running.shutdown().await.unwrap();
    db.close().await;
}

/// Asks `path` until its body contains `part` (the reload runs in another task).
async fn wait_for_body(http: std::net::SocketAddr, path: &str, part: &str) -> serde_json::Value {
    let body = wait_for_text(http, path, |t| t.contains(part)).await;
    serde_json::from_str(&body).unwrap()
}

async fn wait_for_text(
    http: std::net::SocketAddr,
    path: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    for _ in 0..100 {
        let body = common::http_get(http, path).await.body;
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // another task's reload
    }
    panic!("{path} did not change within 5 s");
}

#[tokio::test]
async fn sqlite_refuses_registry_rows_regpoll_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("r.db")).await.unwrap();
    let Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    const ROW: &str = "INSERT INTO device_register_map (device_id, name, kind, address, data_type";
    // Each statement in turn: `Some(part)` must be refused with a message
    // containing `part`, `None` accepted.
    let steps: [(String, Option<&str>); 9] = [
        (DEVICE_D.into(), None),
        (
            format!("{ROW}) VALUES (1, 'r', 'holding', 0, 'float')"),
            Some("unknown data_type"),
        ),
        (format!("{ROW}) VALUES (1, 'r', 'holding', 0, 'u16')"), None),
        (
            "UPDATE device_register_map SET word_order = 'DCBA'".into(),
            Some("swaps words"),
        ),
        (
            format!("{ROW}, byte) VALUES (1, 'b', 'holding', 0, 'u8', 'middle')"),
            Some("unknown byte (valid: high, low)"),
        ),
        (
            format!("{ROW}) VALUES (1, 'b', 'holding', 0, 'i8')"),
            Some("byte (high or low) is required"),
        ),
        (
            format!("{ROW}, byte) VALUES (1, 'b', 'holding', 0, 'u8', 'high')"),
            None,
        ),
        (
            format!(
                "{ROW}, word_order, length) VALUES (1, 's', 'holding', 1, 'string', 'CDAB', 4)"
            ),
            None,
        ),
        (
            "UPDATE device_register_map SET byte = NULL WHERE name = 'b'".into(),
            Some("byte (high or low) is required"),
        ),
    ];
    for (sql, refused) in steps {
        let done = pool.execute(sqlx::AssertSqlSafe(sql.clone())).await;
        match (refused, done) {
            (None, Ok(_)) => {}
            (Some(part), Err(e)) => assert!(e.to_string().contains(part), "{sql}: {e}"),
            (refused, done) => panic!("{sql}: expected refused={refused:?}, got {done:?}"),
        }
    }
    pool.execute("UPDATE device_register_map SET active = false")
        .await
        .expect("deactivating is never refused");
    db.close().await;
}

/// Migration 0012: a device's pacing and demotion settings are stored and
/// loaded as written, and rows outside devices.yaml's bounds are refused.
async fn pacing_is_stored_and_rows_outside_its_bounds_refused(db: Db) {
    let devices = regpoll::config::parse(
        "devices:\n  - { name: gw-unit, host: 10.0.0.5, delay_after_connect: 250ms, demote_after: 5, demote_max: 10m, max_in_flight: 4, registers: [{ name: r, kind: holding, address: 0 }] }\n",
        "devices.yaml",
    )
    .unwrap();
    db.sync_devices(&devices).await.unwrap();
    let loaded = db.load_devices().await.unwrap();
    assert_eq!(loaded.devices[0].limits, devices[0].limits);
    for (set, refused) in [
        ("demote_after = 0", "demote_after"),
        ("demote_after = 101", "demote_after"),
        ("demote_max_ms = 999", "demote_max_ms"),
        ("demote_max_ms = 86400001", "demote_max_ms"),
        ("delay_after_connect_ms = -1", "delay_after_connect_ms"),
        ("delay_after_connect_ms = 60001", "delay_after_connect_ms"),
        ("max_in_flight = 0", "max_in_flight"),
        ("max_in_flight = 17", "max_in_flight"),
    ] {
        let sql = format!("UPDATE devices SET {set}");
        let e = match &db {
            Db::Postgres(p) => p.execute(sqlx::AssertSqlSafe(sql.clone())).await.map(drop),
            Db::Sqlite(p) => p.execute(sqlx::AssertSqlSafe(sql.clone())).await.map(drop),
        }
        .expect_err(&sql)
        .to_string();
        assert!(e.contains(refused), "{sql}: {e}");
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_pacing_and_refuses_rows_outside_its_bounds() {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    pacing_is_stored_and_rows_outside_its_bounds_refused(db).await;
}

#[tokio::test]
async fn sqlite_stores_pacing_and_refuses_rows_outside_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("r.db")).await.unwrap();
    pacing_is_stored_and_rows_outside_its_bounds_refused(db).await;
}
