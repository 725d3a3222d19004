//! The whole path against real services: simulator → poll → PostgreSQL or
//! SQLite history + Redis or memory latest values.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use futures::StreamExt as _;
use redis::AsyncCommands as _;
use regpoll::app::{self, DeviceSource, Settings};
use regpoll::db::Db;
use regpoll::latest::memory::LatestMemory;
use regpoll::reading::Value;
use regpoll::registry::{DataType, Device};
use regpoll::sim::expected_value;

const FLEET: &str = r#"
defaults:
  host: 127.0.0.1
  every: 250ms
  timeout: 500ms
devices:
  - name: boiler
    port: {A}
    unit_id: 1
    registers:
      - { name: supply_temp, kind: holding, address: 100, type: f32, unit: "°C", valid: { min: 0, max: 150 } }
      - { name: return_temp, kind: holding, address: 102, type: f32, order: CDAB, unit: "°C" }
      - { name: pressure, kind: input, address: 0, type: u16, scale: 0.01, unit: bar }
      - { name: level, kind: input, address: 5, type: i16, scale: 0.1, offset: -10 }
      - { name: burner_on, kind: coil, address: 3 }
  - name: meter-1
    port: {B}
    unit_id: 1
    registers:
      - { name: energy, kind: input, address: 0, type: u32, unit: kWh }
      - { name: power, kind: input, address: 2, type: i32, order: CDAB, unit: W }
  - name: meter-2
    port: {B}
    unit_id: 2
    registers:
      - { name: energy, kind: input, address: 0, type: u32, unit: kWh }
      - { name: running, kind: discrete, address: 0 }
"#;

/// One stored reading, whichever database it came from (`ts_us`:
/// microseconds since the Unix epoch, how SQLite stores it).
#[derive(Debug, Clone, sqlx::FromRow)]
struct StoredRow {
    device: String,
    register: String,
    ts_us: i64,
    value: Option<f64>,
    value_text: Option<String>,
    quality: String,
    detail: Option<String>,
}

impl StoredRow {
    fn ts(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.ts_us).unwrap()
    }
}

async fn stored_rows(db: &Db) -> Vec<StoredRow> {
    let rows = match db {
        Db::Postgres(p) => sqlx::query_as(
            "SELECT device, register, (extract(epoch FROM ts) * 1000000)::bigint AS ts_us, value, value_text, quality, detail \
             FROM register_readings_named ORDER BY ts",
        )
        .fetch_all(p)
        .await,
        Db::Sqlite(p) => sqlx::query_as(
            "SELECT d.name AS device, m.name AS register, r.ts AS ts_us, r.value, r.value_text, r.quality, r.detail \
             FROM register_readings r JOIN device_register_map m ON m.id = r.register_id \
             JOIN devices d ON d.id = r.device_id ORDER BY r.ts",
        )
        .fetch_all(p)
        .await,
    };
    db.close().await;
    rows.unwrap()
}

async fn postgres_rows(url: &str) -> Vec<StoredRow> {
    stored_rows(&Db::postgres(url).await.unwrap()).await
}

async fn sqlite_rows(path: &std::path::Path) -> Vec<StoredRow> {
    stored_rows(&Db::sqlite(path).await.unwrap()).await
}

/// The value regpoll should have read at `ts`: the simulator changes values on
/// whole seconds, and the reply may come from the second after the send time.
fn matches_simulator(device: &Device, row: &StoredRow) -> bool {
    let reg = device
        .registers
        .iter()
        .find(|r| *r.name == *row.register)
        .unwrap();
    [row.ts(), row.ts() + ChronoDuration::seconds(1)]
        .iter()
        .any(|&t| {
            let want = expected_value(&device.name, reg, t);
            match (want, row.value) {
                (Value::Bool(b), Some(v)) => v == f64::from(u8::from(b)),
                (Value::Number(n), Some(v)) => (n - v).abs() <= 1e-9 * n.abs().max(1.0),
                (Value::Text(t), None) => row.value_text.as_deref() == Some(t.as_str()),
                _ => false,
            }
        })
}

/// Every register of every device has exactly one row per poll, each good and
/// equal to what the simulator served.
fn assert_history_matches(devices: &[Device], latest: &LatestMemory, rows: &[StoredRow]) {
    let snapshot = latest.snapshot();
    let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
    for row in rows {
        *counts.entry((&row.device, &row.register)).or_default() += 1;
        let device = devices
            .iter()
            .find(|d| d.name == row.device)
            .expect("row of a known device");
        assert_eq!(row.quality, "good", "{row:?}");
        assert_eq!(row.detail, None, "{row:?}");
        assert!(
            matches_simulator(device, row),
            "value differs from the simulator's: {row:?}"
        );
    }
    for d in devices {
        let polls = snapshot[&d.name].state.polls;
        assert!(polls >= 3, "{} polled {polls} times", d.name);
        for r in d.registers.iter() {
            assert_eq!(
                counts.get(&(d.name.as_str(), &*r.name)).copied(),
                Some(polls),
                "rows of {}.{}",
                d.name,
                r.name
            );
        }
    }
}

/// Every type of issue 22 §4, in each order it supports, on one device:
/// halves, packed BCD, the bytes of a register, and strings in the four
/// byte orders (an odd length leaves its last register unpaired).
const TYPES: &str = r#"
defaults:
  host: 127.0.0.1
  every: 250ms
  timeout: 500ms
devices:
  - name: types
    port: {A}
    unit_id: 7
    registers:
      - { name: half, kind: holding, address: 0, type: f16, valid: { min: -40, max: 60 } }
      - { name: half_badc, kind: holding, address: 1, type: f16, order: BADC, scale: 0.5 }
      - { name: bcd4, kind: holding, address: 2, type: bcd16 }
      - { name: bcd4_badc, kind: holding, address: 3, type: bcd16, order: BADC, scale: 0.1 }
      - { name: bcd8, kind: holding, address: 4, type: bcd32 }
      - { name: bcd8_cdab, kind: holding, address: 6, type: bcd32, order: CDAB }
      - { name: bcd8_badc, kind: holding, address: 8, type: bcd32, order: BADC }
      - { name: bcd8_dcba, kind: holding, address: 10, type: bcd32, order: DCBA }
      - { name: mode, kind: holding, address: 12, type: u8, byte: high }
      - { name: trim, kind: holding, address: 12, type: i8, byte: low }
      - { name: level, kind: input, address: 0, type: u8, byte: low }
      - { name: bias, kind: input, address: 1, type: i8, byte: high, offset: -5 }
      - { name: ta, kind: holding, address: 20, type: string, length: 4 }
      - { name: tc, kind: holding, address: 24, type: string, length: 4, order: CDAB }
      - { name: tb, kind: holding, address: 28, type: string, length: 4, order: BADC }
      - { name: td, kind: holding, address: 32, type: string, length: 4, order: DCBA }
      - { name: te, kind: holding, address: 36, type: string, length: 3, order: DCBA }
"#;

/// A full run polls the new types and stores what the simulator serves,
/// in PostgreSQL (numbers in `value`, text in `value_text`) and in SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_types_are_stored_as_the_simulator_serves_them() {
    let fixture = common::simulate(TYPES, &["{A}"]).await;
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let database_url = common::fresh_postgres().await;
    let sqlite_path = dir.path().join("regpoll.db");
    for settings in [
        Settings {
            database_url: Some(database_url.clone()),
            devices_file: Some(path.clone()),
            ..Settings::default()
        },
        Settings {
            sqlite_path: sqlite_path.clone(),
            devices_file: Some(path.clone()),
            ..Settings::default()
        },
    ] {
        let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
        let latest = Arc::clone(&running.latest);
        common::wait_for_polls(&running, 3).await;
        let summary = running.shutdown().await.unwrap();
        let rows = match settings.database_url {
            Some(url) => postgres_rows(&url).await,
            None => sqlite_rows(&sqlite_path).await,
        };
        assert_eq!(rows.len() as u64, summary.history.rows_written);
        assert_history_matches(&fixture.devices, &latest, &rows);
        let texts: Vec<&str> = rows
            .iter()
            .filter(|r| r.register == "te")
            .filter_map(|r| r.value_text.as_deref())
            .collect();
        assert!(
            !texts.is_empty() && texts.iter().all(|t| t.starts_with("te-")),
            "{texts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_and_redis_latest_match_the_simulator() {
    let fixture = common::simulate(FLEET, &["{A}", "{B}"]).await;
    let (_dir, path) = common::write_yaml(&fixture.yaml);
    let (settings, client, mut pubsub) = common::postgres_and_redis(path, "boiler").await;
    let database_url = settings.database_url.clone().unwrap();
    let prefix = settings.redis_prefix.clone();
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    let latest = Arc::clone(&running.latest);
    common::wait_for_polls(&running, 3).await;
    let summary = running.shutdown().await.unwrap();
    assert_eq!(summary.history.rows_lost, 0);

    let rows = postgres_rows(&database_url).await;
    assert_eq!(rows.len() as u64, summary.history.rows_written);
    assert_history_matches(&fixture.devices, &latest, &rows);

    // Redis holds the newest value of every register, in the contract's shape.
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for d in &fixture.devices {
        let hash: HashMap<String, String> = con
            .hgetall(format!("{prefix}:latest:{}", d.name))
            .await
            .unwrap();
        assert_eq!(hash.len(), d.registers.len(), "fields of {}", d.name);
        for r in d.registers.iter() {
            let newest = rows
                .iter()
                .filter(|x| x.device == d.name && *x.register == *r.name)
                .max_by_key(|x| x.ts_us)
                .unwrap();
            let json: serde_json::Value = serde_json::from_str(&hash[&*r.name]).unwrap();
            let expected_value = match r.data_type {
                DataType::Bool => serde_json::json!(newest.value == Some(1.0)),
                _ => serde_json::json!(newest.value.unwrap()),
            };
            assert_eq!(
                json,
                serde_json::json!({
                    "value": expected_value,
                    "quality": "good",
                    "ts": newest.ts().to_rfc3339_opts(SecondsFormat::Millis, true),
                    "unit": r.unit,
                }),
                "{}.{}",
                d.name,
                r.name
            );
        }
        let state: HashMap<String, String> = con
            .hgetall(format!("{prefix}:device:{}", d.name))
            .await
            .unwrap();
        assert_eq!(
            state.get("state").map(String::as_str),
            Some("up"),
            "{state:?}"
        );
        for field in ["last_poll", "last_success", "latency_ms"] {
            assert!(state.contains_key(field), "{field} missing from {state:?}");
        }
        assert!(!state.contains_key("error"), "{state:?}");
    }

    // One message per poll on the device's channel.
    let msg = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        pubsub.on_message().next(),
    )
    .await
    .unwrap()
    .unwrap();
    let update: serde_json::Value =
        serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(update["device"], "boiler");
    assert_eq!(update["state"], "up");
    assert_eq!(update["values"].as_object().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_defaults_keep_history_in_sqlite_and_latest_in_memory() {
    let fixture = common::simulate(FLEET, &["{A}", "{B}"]).await;
    let (dir, path) = common::write_yaml(&fixture.yaml);
    let sqlite_path = dir.path().join("regpoll.db");
    let settings = Settings {
        sqlite_path: sqlite_path.clone(),
        devices_file: Some(path),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    let latest = Arc::clone(&running.latest);
    common::wait_for_polls(&running, 3).await;
    let summary = running.shutdown().await.unwrap();

    let rows = sqlite_rows(&sqlite_path).await;
    assert_eq!(rows.len() as u64, summary.history.rows_written);
    assert_history_matches(&fixture.devices, &latest, &rows);
    let boiler = latest.device("boiler").unwrap();
    assert!(boiler.state.up);
    assert_eq!(boiler.values.len(), 5);
    let newest = rows
        .iter()
        .filter(|r| r.register == "pressure")
        .max_by_key(|r| r.ts_us)
        .unwrap();
    assert_eq!(
        boiler.values["pressure"].value,
        Value::Number(newest.value.unwrap())
    );
    assert_eq!(boiler.values["pressure"].unit.as_deref(), Some("bar"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_gives_bad_readings_while_other_devices_stay_good() {
    let template = format!(
        "{FLEET}  - name: dead\n    port: {{DEAD}}\n    registers:\n      - {{ name: a, kind: holding, address: 0 }}\n      - {{ name: b, kind: coil, address: 0 }}\n"
    );
    let fixture = common::simulate(&template, &["{A}", "{B}"]).await;
    let (_dir, path) = common::write_yaml(&fixture.yaml);
    let database_url = common::fresh_postgres().await;
    let settings = Settings {
        database_url: Some(database_url.clone()),
        devices_file: Some(path),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Registry).await.unwrap();
    let latest = Arc::clone(&running.latest);
    common::wait_for_polls(&running, 3).await;
    running.shutdown().await.unwrap();

    let rows = postgres_rows(&database_url).await;
    let (dead, alive): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.device == "dead");
    assert!(
        dead.len() >= 6,
        "each poll of `dead` stores a bad reading per register: {dead:?}"
    );
    for r in &dead {
        assert_eq!(r.quality, "bad");
        assert_eq!(r.value, None);
        assert_eq!(
            r.detail.as_deref(),
            Some("connect: connection refused"),
            "{r:?}"
        );
    }
    let healthy: Vec<Device> = fixture
        .devices
        .iter()
        .filter(|d| d.name != "dead")
        .cloned()
        .collect();
    let state = latest.device("dead").unwrap().state;
    assert!(!state.up);
    assert_eq!(state.error.as_deref(), Some("connect: connection refused"));
    assert_eq!(state.last_success, None);
    assert!(
        alive.iter().all(|r| r.quality == "good"),
        "healthy devices stay good"
    );
    for d in &healthy {
        assert!(
            alive
                .iter()
                .filter(|r| r.device == d.name)
                .all(|r| matches_simulator(d, r))
        );
    }
}
