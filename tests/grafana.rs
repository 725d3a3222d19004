//! The Grafana dashboard (deploy/grafana/) against the real database and a
//! running service. Grafana cannot run here, so each panel's SQL is expanded
//! the way Grafana's PostgreSQL data source expands it (its macros and the
//! `${var:sqlstring}` format), run against PostgreSQL holding a known data
//! set, and checked for the columns and rows the panel needs; the variables'
//! queries are run the same way; every metric a Prometheus panel asks for
//! must be on a running service's /metrics.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, DurationRound, Utc};
use regpoll::db::Db;
use regpoll::history::row::Row;
use regpoll::reading::Quality;
use serde_json::Value;
use sqlx::{Column, Row as _, TypeInfo};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/regpoll.json"
);
const DATASOURCES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/provisioning/datasources/regpoll.yaml"
);

/// Two devices; the variables must follow the choice between them.
const DEVICES: &str = r#"
devices:
  - name: boiler
    host: 127.0.0.1
    port: 5020
    registers:
      - { name: supply_temp, kind: holding, address: 100, type: f32, unit: "°C" }
      - { name: pressure, kind: input, address: 0, type: u16, unit: bar }
  - name: "pump-2.b"
    host: 127.0.0.1
    port: 5021
    registers:
      - { name: flow, kind: input, address: 0, type: u16 }
"#;

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn sql_targets(dash: &Value) -> Vec<(String, String)> {
    panels(dash)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["rawSql"].as_str()?.to_string())))
        })
        .collect()
}

/// Grafana's text for a time in its macros: RFC 3339 in UTC, seconds.
fn grafana_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `sql` as Grafana's PostgreSQL data source sends it for the time range
/// `[from, to]`, the interval and the variables: `$__timeFilter(col)` is
/// `col BETWEEN 'from' AND 'to'`, `$__timeFrom()`/`$__timeTo()` the quoted
/// times, `$__interval_ms` the interval in milliseconds, and
/// `${name:sqlstring}` the value quoted as an SQL string.
fn expand(
    sql: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval_ms: i64,
    vars: &[(&str, &str)],
) -> String {
    let (f, t) = (grafana_time(from), grafana_time(to));
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__timeFilter(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "$__timeFilter(".len()..];
        let close = after.find(')').expect("$__timeFilter( is closed");
        out.push_str(&format!("{} BETWEEN '{f}' AND '{t}'", &after[..close]));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    let mut out = out
        .replace("$__timeFrom()", &format!("'{f}'"))
        .replace("$__timeTo()", &format!("'{t}'"))
        .replace("$__interval_ms", &interval_ms.to_string());
    for (name, value) in vars {
        out = out.replace(
            &format!("${{{name}:sqlstring}}"),
            &format!("'{}'", value.replace('\'', "''")),
        );
    }
    assert!(
        !out.contains("$__") && !out.contains("${"),
        "a macro or variable the test does not expand is left in:\n{out}"
    );
    out
}

/// A query's column names and types and its rows as JSON-ish values.
struct Answer {
    columns: Vec<(String, String)>,
    rows: Vec<sqlx::postgres::PgRow>,
}

async fn run(pool: &sqlx::PgPool, sql: String) -> Answer {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("the database refused a panel's query: {e}\n{sql}"));
    let columns = match rows.first() {
        Some(r) => r
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
            .collect(),
        None => Vec::new(),
    };
    Answer { columns, rows }
}

fn names(a: &Answer) -> Vec<&str> {
    a.columns.iter().map(|(n, _)| n.as_str()).collect()
}

/// The value of `supply_temp` at `ts`: a daily wave plus a slow ramp.
fn signal(ts: DateTime<Utc>) -> f64 {
    let s = ts.timestamp() as f64;
    50.0 + 10.0 * (s / 86_400.0 * std::f64::consts::TAU).sin() + s % 7.0
}

/// The known data set: `supply_temp` every 10 minutes over 30 days and
/// every 10 s over the last 2 hours (offset by 5 s so that no timestamp
/// repeats), a bad reading every 20 minutes of the last day, and `flow`
/// of the oddly named device every minute of the last hour. Returns the
/// good rows of `supply_temp` by time.
async fn fill(db: &Db, now: DateTime<Utc>) -> BTreeMap<DateTime<Utc>, f64> {
    let pool = db.as_postgres().unwrap();
    let ids = |device: &'static str, register: &'static str| async move {
        sqlx::query_as::<_, (i32, i32)>(
            "SELECT m.id, m.device_id FROM device_register_map m \
             JOIN devices d ON d.id = m.device_id WHERE d.name = $1 AND m.name = $2",
        )
        .bind(device)
        .bind(register)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let temp = ids("boiler", "supply_temp").await;
    let flow = ids("pump-2.b", "flow").await;
    let mut good = BTreeMap::new();
    let mut rows = Vec::new();
    let mut t = now - Duration::days(30);
    while t < now {
        good.insert(t, signal(t));
        t += Duration::minutes(10);
    }
    let mut t = now - Duration::hours(2) + Duration::seconds(5);
    while t < now {
        good.insert(t, signal(t));
        t += Duration::seconds(10);
    }
    for (ts, v) in &good {
        rows.push(Row::new(
            *ts,
            temp.0,
            temp.1,
            Some(*v),
            None,
            Quality::Good,
            None,
        ));
    }
    let mut t = now - Duration::days(1) + Duration::seconds(7);
    while t < now {
        rows.push(Row::new(
            t,
            temp.0,
            temp.1,
            None,
            None,
            Quality::Bad,
            Some("timeout after 1000 ms"),
        ));
        t += Duration::minutes(20);
    }
    let mut t = now - Duration::hours(1);
    while t < now {
        rows.push(Row::new(
            t,
            flow.0,
            flow.1,
            Some(3.0),
            None,
            Quality::Good,
            None,
        ));
        t += Duration::minutes(1);
    }
    regpoll::history::writer::write(db, &rows).await.unwrap();
    good
}

#[test]
fn the_dashboard_names_only_the_provisioned_data_sources() {
    let dash = dashboard();
    let provisioned = std::fs::read_to_string(DATASOURCES).unwrap();
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        assert!(ids.insert(p["id"].as_i64().expect("every panel has an id")));
        for t in p["targets"].as_array().into_iter().flatten() {
            let uid = t["datasource"]["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {} names no data source", p["title"]));
            assert!(
                provisioned.contains(&format!("uid: {uid}")),
                "panel {} uses data source {uid}, which {DATASOURCES} does not provision",
                p["title"]
            );
            assert!(
                t["rawSql"].is_string() || t["expr"].is_string(),
                "panel {}: a target without SQL or PromQL",
                p["title"]
            );
        }
    }
    assert_eq!(sql_targets(&dash).len(), 3, "the panels this test checks");
}

#[tokio::test]
async fn every_panel_query_answers_with_the_columns_and_rows_it_needs() {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    let pool = db.as_postgres().unwrap().clone();
    db.sync_devices(&regpoll::config::parse(DEVICES, "devices.yaml").unwrap())
        .await
        .unwrap();
    let now = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
    let good = fill(&db, now).await;
    regpoll::history::rollup::refresh(&db, Default::default())
        .await
        .unwrap();

    let dash = dashboard();
    let vars = [("device", "boiler"), ("register", "supply_temp")];

    // The variables: devices, then the chosen device's registers.
    let variables = dash["templating"]["list"].as_array().unwrap();
    let query_of = |name: &str| {
        variables.iter().find(|v| v["name"] == name).unwrap()["query"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let devices = run(&pool, expand(&query_of("device"), now, now, 1000, &vars)).await;
    let listed: Vec<String> = devices.rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(listed, ["boiler", "pump-2.b"]);
    for (device, want) in [
        ("boiler", vec!["pressure", "supply_temp"]),
        ("pump-2.b", vec!["flow"]),
    ] {
        let a = run(
            &pool,
            expand(&query_of("register"), now, now, 1000, &[("device", device)]),
        )
        .await;
        let got: Vec<String> = a.rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, want, "registers of {device}");
    }

    let sqls = sql_targets(&dash);
    let trend = &sqls
        .iter()
        .find(|(t, _)| t == "$device / $register")
        .unwrap()
        .1;

    // Up to 6 hours: the raw rows, good ones only, exactly.
    let from = now - Duration::hours(1);
    let a = run(&pool, expand(trend, from, now, 1000, &vars)).await;
    assert_eq!(names(&a), ["time", "value", "min", "max"]);
    assert_eq!(a.columns[0].1, "TIMESTAMPTZ", "Grafana needs a time column");
    let want: Vec<(DateTime<Utc>, f64)> = good.range(from..=now).map(|(t, v)| (*t, *v)).collect();
    let got: Vec<(DateTime<Utc>, f64)> = a
        .rows
        .iter()
        .map(|r| (r.get("time"), r.get("value")))
        .collect();
    assert_eq!(got, want, "raw rows of the last hour");

    // Up to 7 days: one row per minute holding data, avg/min/max of it.
    let from = now - Duration::days(3);
    let a = run(&pool, expand(trend, from, now, 60_000, &vars)).await;
    assert_eq!(names(&a), ["time", "value", "min", "max"]);
    let per_minute = per_bucket(&good, Duration::minutes(1), from, now);
    check_buckets(&a, &per_minute, "1-minute rollup over 3 days");

    // Beyond: the hourly rollup.
    let from = now - Duration::days(30);
    let a = run(&pool, expand(trend, from, now, 3_600_000, &vars)).await;
    assert_eq!(names(&a), ["time", "value", "min", "max"]);
    let per_hour = per_bucket(&good, Duration::hours(1), from, now);
    check_buckets(&a, &per_hour, "hourly rollup over 30 days");

    // The latest row of each register; a register with no rows has NULLs.
    let latest = &sqls
        .iter()
        .find(|(t, _)| t.starts_with("Latest"))
        .unwrap()
        .1;
    let a = run(&pool, expand(latest, now, now, 1000, &vars)).await;
    assert_eq!(
        names(&a),
        [
            "register",
            "unit",
            "time",
            "value",
            "value_text",
            "quality",
            "detail"
        ]
    );
    assert_eq!(a.rows.len(), 2);
    let pressure = &a.rows[0];
    assert_eq!(pressure.get::<String, _>("register"), "pressure");
    assert_eq!(pressure.get::<Option<String>, _>("quality"), None);
    let temp = &a.rows[1];
    assert_eq!(temp.get::<String, _>("register"), "supply_temp");
    let newest_bad = now - Duration::minutes(20) + Duration::seconds(7);
    let newest_good = *good.keys().next_back().unwrap();
    let (when, quality) = if newest_bad > newest_good {
        (newest_bad, "bad")
    } else {
        (newest_good, "good")
    };
    assert_eq!(temp.get::<DateTime<Utc>, _>("time"), when);
    assert_eq!(temp.get::<String, _>("quality"), quality);

    // Quality counts per bucket over the last day; empty beyond 2 days.
    let quality = &sqls
        .iter()
        .find(|(t, _)| t.contains("by quality"))
        .unwrap()
        .1;
    let from = now - Duration::days(1);
    let a = run(&pool, expand(quality, from, now, 3_600_000, &vars)).await;
    assert_eq!(names(&a), ["time", "good", "uncertain", "bad"]);
    let bad: i64 = a.rows.iter().map(|r| r.get::<i64, _>("bad")).sum();
    let good_rows: i64 = a.rows.iter().map(|r| r.get::<i64, _>("good")).sum();
    assert_eq!(bad, 72, "one bad row every 20 minutes of the day");
    assert_eq!(good_rows, good.range(from..=now).count() as i64);
    let a = run(
        &pool,
        expand(quality, now - Duration::days(5), now, 3_600_000, &vars),
    )
    .await;
    assert!(a.rows.is_empty(), "the raw scan is limited to 2 days");

    // The other device: the variables follow the choice.
    let odd = [("device", "pump-2.b"), ("register", "flow")];
    let a = run(
        &pool,
        expand(trend, now - Duration::hours(1), now, 1000, &odd),
    )
    .await;
    assert_eq!(a.rows.len(), 60);
    let a = run(&pool, expand(latest, now, now, 1000, &odd)).await;
    assert_eq!(a.rows.len(), 1);
}

/// avg, min, max of the good values per bucket of `width` (aligned to the
/// Unix epoch) whose start lies in `[from, to]`.
fn per_bucket(
    good: &BTreeMap<DateTime<Utc>, f64>,
    width: Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<DateTime<Utc>, (f64, f64, f64)> {
    let mut sums: BTreeMap<DateTime<Utc>, (f64, f64, f64, u32)> = BTreeMap::new();
    for (t, v) in good {
        let b = t.duration_trunc(width).unwrap();
        if b < from || b > to {
            continue;
        }
        let e = sums.entry(b).or_insert((0.0, f64::MAX, f64::MIN, 0));
        e.0 += v;
        e.1 = e.1.min(*v);
        e.2 = e.2.max(*v);
        e.3 += 1;
    }
    sums.into_iter()
        .map(|(b, (s, lo, hi, n))| (b, (s / n as f64, lo, hi)))
        .collect()
}

fn check_buckets(a: &Answer, want: &BTreeMap<DateTime<Utc>, (f64, f64, f64)>, what: &str) {
    let got: Vec<(DateTime<Utc>, f64, f64, f64)> = a
        .rows
        .iter()
        .map(|r| (r.get("time"), r.get("value"), r.get("min"), r.get("max")))
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: one row per bucket with data"
    );
    for ((t, avg, lo, hi), (wt, (wavg, wlo, whi))) in got.iter().zip(want) {
        assert_eq!(t, wt, "{what}");
        assert!(
            (avg - wavg).abs() < 1e-9,
            "{what} at {t}: avg {avg} vs {wavg}"
        );
        assert_eq!((*lo, *hi), (*wlo, *whi), "{what} at {t}");
    }
}

/// Every metric a Prometheus panel names is on a running service's
/// /metrics (a renamed metric would leave a panel silently empty).
#[tokio::test]
async fn every_metric_the_fleet_panels_use_is_exported() {
    let fixture = common::simulate(
        r#"
devices:
  - name: m
    host: 127.0.0.1
    port: {A}
    every: 200ms
    registers: [ { name: r, kind: holding, address: 0 } ]
"#,
        &["{A}"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = regpoll::app::Settings {
        sqlite_path: dir.path().join("h.db"),
        ..regpoll::app::Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    common::wait_for_polls(&running, 2).await;

    let dash = dashboard();
    let mut used = BTreeSet::new();
    for p in panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let Some(expr) = t["expr"].as_str() else {
                continue;
            };
            let mut rest = expr;
            while let Some(at) = rest.find("regpoll_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 8, "the fleet panels' metrics: {used:?}");
    let on = |metrics: &str, name: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
    };
    // Some appear after the first run of a job or read of the database's
    // health, which the service starts at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let metrics = common::http_get(addr, "/metrics").await.body;
        let missing = used
            .iter()
            .any(|n| !n.starts_with("regpoll_timescaledb_") && !on(&metrics, n));
        if !missing || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    running.shutdown().await.unwrap();

    // TimescaleDB's jobs are only there with TimescaleDB (not installed
    // here): those names must at least be ones regpoll writes.
    let source = include_str!("../src/api/metrics.rs");
    for name in &used {
        if name.starts_with("regpoll_timescaledb_") {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{name} (used by the dashboard) is not a metric regpoll writes"
            );
            continue;
        }
        assert!(
            on(&metrics, name),
            "{name} (used by the dashboard) is not on /metrics"
        );
    }
}
