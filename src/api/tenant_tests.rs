//! The API as a caller of one tenant sees it: the router served on a free
//! port with the `Caller` the token check would have put on every request,
//! over a registry (SQLite) and latest values (memory) holding devices of
//! two tenants and one of none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use chrono::Utc;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use super::caller::Caller;
use super::{ApiLimits, ApiState, router};
use crate::db::{Connectivity, Db};
use crate::history::writer::HistoryStats;
use crate::latest::memory::LatestMemory;
use crate::reading::{PollReport, Quality, Reading, Value};
use crate::registry::Device;
use crate::sink::Sinks;
use crate::stats::Sources;

const FLEET: &str = "devices:
  - { name: acme-boiler, host: 127.0.0.1, tenant: acme, registers: [ { name: t, kind: holding, address: 0 } ] }
  - { name: globex-pump, host: 127.0.0.1, tenant: globex, registers: [ { name: t, kind: holding, address: 0 } ] }
  - { name: shared-meter, host: 127.0.0.1, registers: [ { name: t, kind: holding, address: 0 } ] }
";

/// A registry of `FLEET`, each device polled once (its value in memory),
/// and the API over them.
async fn fleet(dir: &tempfile::TempDir) -> ApiState {
    let db = Db::sqlite(&dir.path().join("t.db")).await.unwrap();
    db.sync_devices(&crate::config::parse(FLEET, "devices.yaml").unwrap())
        .await
        .unwrap();
    let devices: Vec<Arc<Device>> = (db.load_devices().await.unwrap().devices)
        .into_iter()
        .map(Arc::new)
        .collect();
    let latest = Arc::new(LatestMemory::default());
    for d in &devices {
        latest.slot(d).update(&PollReport {
            device: Arc::clone(d),
            started: Utc::now(),
            latency: Duration::from_millis(1),
            error: None,
            reachable: true,
            demoted: false,
            readings: vec![Reading {
                index: 0,
                ts: Utc::now(),
                value: Value::Number(1.0),
                quality: Quality::Good,
                detail: None,
            }],
        });
    }
    let (_devices_tx, devices_rx) = watch::channel(devices);
    let (history_tx, _history_rx) = mpsc::channel(1);
    let history = Arc::new(HistoryStats::default());
    let sinks = Sinks::new(Arc::clone(&latest), history_tx, Arc::clone(&history), None);
    let stats = Sources {
        latest,
        devices: devices_rx,
        counters: Arc::default(),
        history,
        history_depth: sinks.history_depth_probe(),
        redis: None,
        jobs: Arc::default(),
        storage: Arc::default(),
        registry: Arc::default(),
        cluster: None,
        maintenance: Arc::default(),
    };
    let (_scheduling_tx, scheduling) = watch::channel(true);
    ApiState::new(
        db.clone(),
        db,
        ApiLimits::default(),
        stats,
        None,
        scheduling,
        Connectivity::default(),
    )
}

/// The router served on a free port, every request carrying `caller` (no
/// caller: as without tokens).
async fn serve(state: ApiState, caller: Option<Caller>) -> SocketAddr {
    let app = match caller {
        Some(c) => router(state).layer(Extension(c)),
        None => router(state),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// GET over HTTP/1.0 (the answer ends when the server closes): status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

async fn json(addr: SocketAddr, path: &str) -> Json {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn of(tenant: &str) -> Option<Caller> {
    Some(Caller {
        name: format!("{tenant}-token").into(),
        tenant: Some(tenant.into()),
    })
}

fn listed(answer: &Json, list: &str) -> Vec<String> {
    let mut names: Vec<String> = answer[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_tenants_caller_lists_and_reads_only_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let state = fleet(&dir).await;
    let acme = serve(state.clone(), of("acme")).await;
    let admin = serve(state.clone(), None).await;
    let operator = serve(
        state,
        Some(Caller {
            name: "ops".into(),
            tenant: None,
        }),
    )
    .await;

    assert_eq!(
        listed(&json(acme, "/api/devices").await, "devices"),
        ["acme-boiler"]
    );
    for everyone in [admin, operator] {
        assert_eq!(
            listed(&json(everyone, "/api/devices").await, "devices"),
            ["acme-boiler", "globex-pump", "shared-meter"]
        );
    }
    let fleet = json(acme, "/api/fleet").await;
    assert_eq!(listed(&fleet, "devices"), ["acme-boiler"]);
    assert_eq!(fleet["summary"]["devices"], 1);
    for fleet_wide in ["readings", "history", "redis", "cluster", "database"] {
        assert!(fleet["summary"][fleet_wide].is_null(), "{fleet_wide}");
    }
    assert!(json(admin, "/api/fleet").await["summary"]["history"].is_object());

    let latest = json(
        acme,
        "/api/latest?devices=acme-boiler,globex-pump,shared-meter,no-such",
    )
    .await;
    let devices: Vec<&String> = latest["devices"].as_object().unwrap().keys().collect();
    assert_eq!(devices, ["acme-boiler"]);
    assert_eq!(
        latest["unknown"],
        serde_json::json!(["globex-pump", "shared-meter", "no-such"])
    );
    let (status, _) = get(acme, "/api/devices/acme-boiler/latest").await;
    assert_eq!(status, 200);
    let (status, _) = get(acme, "/api/readings?device=acme-boiler").await;
    assert_eq!(status, 200);
    let buckets = json(acme, "/api/buckets?devices=acme-boiler,globex-pump,no-such").await;
    let devices: Vec<&String> = buckets["devices"].as_object().unwrap().keys().collect();
    assert_eq!(devices, ["acme-boiler"]);
    assert_eq!(
        buckets["unknown"],
        serde_json::json!(["globex-pump", "no-such"])
    );
}

#[tokio::test]
async fn another_tenants_device_is_not_found_exactly_as_one_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let state = fleet(&dir).await;
    let acme = serve(state.clone(), of("acme")).await;
    for (theirs, unknown) in [
        (
            "/api/devices/globex-pump/latest",
            "/api/devices/no-such/latest",
        ),
        (
            "/api/devices/shared-meter/latest",
            "/api/devices/no-such/latest",
        ),
        (
            "/api/readings?device=globex-pump",
            "/api/readings?device=no-such",
        ),
        (
            "/api/readings?device=shared-meter&bucket=1m",
            "/api/readings?device=no-such&bucket=1m",
        ),
    ] {
        let (status, body) = get(acme, theirs).await;
        let (unknown_status, unknown_body) = get(acme, unknown).await;
        assert_eq!(status, 404, "{theirs}: {body}");
        assert_eq!(unknown_status, 404);
        let theirs_name = theirs
            .split(['/', '=', '&'])
            .find(|p| p.contains('-') && *p != "no-such")
            .unwrap();
        assert_eq!(
            body.replace(theirs_name, "no-such"),
            unknown_body,
            "{theirs}: the same answer but for the name asked"
        );
    }
    // Without a tenant the same device is there.
    let admin = serve(state, None).await;
    assert_eq!(get(admin, "/api/devices/globex-pump/latest").await.0, 200);
    assert_eq!(get(admin, "/api/readings?device=globex-pump").await.0, 200);
}

#[tokio::test]
async fn fleet_wide_endpoints_do_not_exist_for_a_tenants_caller() {
    let dir = tempfile::tempdir().unwrap();
    let state = fleet(&dir).await;
    let acme = serve(state.clone(), of("acme")).await;
    let admin = serve(state, None).await;
    let (_, nowhere) = get(acme, "/no-such-endpoint").await;
    for path in [
        "/metrics",
        "/ready",
        "/api/stats",
        "/api/database",
        "/api/cluster",
    ] {
        let (status, body) = get(acme, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(
            body.replacen(path, "/no-such-endpoint", 1),
            nowhere,
            "{path} answers as an endpoint that does not exist"
        );
        assert_ne!(get(admin, path).await.0, 404, "{path} without a tenant");
    }
    // What every caller may reach.
    assert_eq!(get(acme, "/health").await.0, 200);
    assert_eq!(get(acme, "/").await.0, 200);
}
