//! What an operator sees of a cluster (`run --cluster`): two instances on
//! one PostgreSQL database polling the simulator, each answering
//! `/api/cluster`, `/ready`, `/metrics`, and the status page's cluster card,
//! in agreement with each other; and what `/api/cluster` answers when the
//! database is gone (the last heartbeat's view, without the owners) or when
//! the instance is not clustered at all (no database statement).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{HttpAnswer, SimFixture, fresh_postgres, http_get, set_reachable, simulate};
use regpoll::app::{Running, Settings};
use regpoll::cluster::ClusterSettings;
use serde_json::Value;

/// Short timings, so that settling and fencing take seconds: the checks
/// of `ClusterSettings::check` hold (heartbeat + margin < lease).
fn cluster(id: &str) -> ClusterSettings {
    ClusterSettings {
        instance_id: id.to_string(),
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
        fence_margin: Duration::from_millis(500),
        address: None,
    }
}

/// Gateways: 4 endpoints with 3 unit ids each, polled every 500 ms.
const GATEWAYS: usize = 4;
const UNITS: usize = 3;

fn fleet_yaml() -> (String, Vec<String>) {
    let mut yaml =
        String::from("defaults:\n  host: 127.0.0.1\n  every: 500ms\n  timeout: 300ms\ndevices:\n");
    let placeholders: Vec<String> = (0..GATEWAYS).map(|g| format!("{{G{g}}}")).collect();
    for (g, port) in placeholders.iter().enumerate() {
        for u in 1..=UNITS {
            yaml.push_str(&format!(
                "  - name: g{g}-u{u}\n    port: {port}\n    unit_id: {u}\n    registers:\n      - {{ name: level, kind: holding, address: 0, type: u16 }}\n"
            ));
        }
    }
    (yaml, placeholders)
}

async fn fleet() -> SimFixture {
    let (yaml, placeholders) = fleet_yaml();
    let refs: Vec<&str> = placeholders.iter().map(String::as_str).collect();
    simulate(&yaml, &refs).await
}

async fn instance(fixture: &SimFixture, url: &str, id: &str) -> (Running, SocketAddr) {
    let settings = Settings {
        database_url: Some(url.to_string()),
        cluster: Some(cluster(id)),
        ..Settings::default()
    };
    common::start_with_api(fixture, settings).await
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let answer = http_get(addr, path).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    answer.json()
}

/// The names `/api/devices` lists (every one a device this instance polls).
async fn polled(addr: SocketAddr) -> BTreeSet<String> {
    get_json(addr, "/api/devices").await["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// The owner map of an `/api/cluster` answer, every device owned.
fn owners(body: &Value) -> Option<BTreeMap<String, String>> {
    body["owners"]
        .as_object()?
        .iter()
        .map(|(d, o)| Some((d.clone(), o.as_str()?.to_string())))
        .collect()
}

/// Waits until both instances see both, every device has an owner, both
/// agree on the owners and on how many each has, and each polls exactly
/// the devices it owns; returns
/// their last `/api/cluster` answers. Panics after 30 s with what was seen.
async fn settled(addrs: [SocketAddr; 2], devices: &BTreeSet<String>) -> [Value; 2] {
    let started = Instant::now();
    loop {
        let answers = [
            get_json(addrs[0], "/api/cluster").await,
            get_json(addrs[1], "/api/cluster").await,
        ];
        let maps = [owners(&answers[0]), owners(&answers[1])];
        let polled = [polled(addrs[0]).await, polled(addrs[1]).await];
        let done = answers
            .iter()
            .all(|a| a["instances"].as_array().is_some_and(|i| i.len() == 2))
            && maps[0].is_some()
            && maps[0] == maps[1]
            && maps[0].as_ref().is_some_and(|m| {
                m.keys().cloned().collect::<BTreeSet<_>>() == *devices
                    && answers.iter().all(|a| counts_agree(a, m))
                    && answers.iter().zip(&polled).all(|(a, p)| {
                        let this = a["this"].as_str().unwrap();
                        *p == m
                            .iter()
                            .filter(|(_, o)| *o == this)
                            .map(|(d, _)| d.clone())
                            .collect::<BTreeSet<_>>()
                    })
            });
        if done {
            return answers;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not settled in 30 s:\n{}\n{}\npolled: {polled:?}",
            answers[0],
            answers[1]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every member's `devices_owned` is what `owners` gives it (the
/// others' counts are those of their last renewal, a heartbeat behind).
fn counts_agree(answer: &Value, owners: &BTreeMap<String, String>) -> bool {
    answer["instances"].as_array().unwrap().iter().all(|i| {
        let owned = owners.values().filter(|o| **o == i["instance_id"]).count();
        i["devices_owned"] == owned
    })
}

/// The value of the sample whose line starts with `start`.
fn sample(metrics: &str, start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{start}` in /metrics:\n{metrics}"))
}

/// The status page after `budget` of Chromium's virtual time (spent only
/// while no request is pending, so the page's refreshes are answered),
/// with a screenshot beside the build (target/, where CI keeps artefacts).
async fn render(addr: SocketAddr, budget: Duration, shot: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = common::chromium(profile.path());
    cmd.arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg(format!("--screenshot={}", dir.join(shot).display()))
        .arg(format!("http://{addr}/"));
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && dom.contains("data-summary"),
        "chromium failed or painted no summary ({}): {}\n{dom}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Two instances share 12 devices on 4 gateways: each lists both, both
/// agree on who owns each device, a gateway's devices share an owner, each
/// polls exactly its own, and `/ready`, `/metrics`, `/api/fleet` and the
/// status page say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_on_who_polls_each_device() {
    let fixture = fleet().await;
    let url = fresh_postgres().await;
    let (a, addr_a) = instance(&fixture, &url, "a").await;
    let (b, addr_b) = instance(&fixture, &url, "b").await;
    let devices: BTreeSet<String> = fixture.devices.iter().map(|d| d.name.clone()).collect();
    let [ca, cb] = settled([addr_a, addr_b], &devices).await;

    let owners = owners(&ca).unwrap();
    for (body, id) in [(&ca, "a"), (&cb, "b")] {
        assert_eq!(body["enabled"], true);
        assert_eq!(body["this"], id);
        assert_eq!(body["lease_s"], 2.0);
        assert_eq!(body["heartbeat_s"], 0.25);
        assert_eq!(body["fence_margin_s"], 0.5);
        assert!(body["session"].as_i64().is_some(), "{body}");
        assert_eq!(body["fenced"], false, "{body}");
        assert_eq!(body["last_error"], Value::Null, "{body}");
        assert!(body["renewed_at"].is_string(), "{body}");
        assert!(body.get("owners_error").is_none(), "{body}");
        let instances = body["instances"].as_array().unwrap();
        let ids: Vec<&str> = instances
            .iter()
            .map(|i| i["instance_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"], "{body}");
        for i in instances {
            let this = i["instance_id"] == id;
            assert_eq!(i["this"], this, "{body}");
            let age = i["heartbeat_age_s"].as_f64().unwrap();
            assert!((0.0..2.0).contains(&age), "a live member's age: {body}");
            assert!(
                i["address"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{body}"
            );
        }
        assert!(body["handovers"]["acquired"].as_u64().is_some(), "{body}");
    }
    // All of a gateway's devices have one owner.
    for g in 0..GATEWAYS {
        let of: BTreeSet<&String> = (1..=UNITS)
            .map(|u| &owners[&format!("g{g}-u{u}")])
            .collect();
        assert_eq!(of.len(), 1, "gateway {g} is split: {owners:?}");
    }
    let acquired = |c: &Value| c["handovers"]["acquired"].as_u64().unwrap();
    assert!(
        acquired(&ca) + acquired(&cb) >= GATEWAYS as u64,
        "{ca}\n{cb}"
    );

    // Each device entry names its owner: the instance that lists it.
    for (addr, id) in [(addr_a, "a"), (addr_b, "b")] {
        let listed = get_json(addr, "/api/devices").await;
        for d in listed["devices"].as_array().unwrap() {
            assert_eq!(d["owner"], id, "{d}");
        }
        let page = get_json(addr, "/api/fleet?per_page=50").await;
        for d in page["devices"].as_array().unwrap() {
            assert_eq!(d["owner"], id, "{d}");
        }
        let card = &page["summary"]["cluster"];
        assert_eq!(card["this"], id, "{page}");
        assert_eq!(card["instances"].as_array().unwrap().len(), 2, "{page}");
        assert!(
            card.get("owners").is_none(),
            "the page's refresh reads no owners"
        );

        let ready = get_json(addr, "/ready").await;
        assert_eq!(ready["ready"], true, "{ready}");
        let mine = owners.values().filter(|o| *o == id).count();
        assert_eq!(ready["cluster"]["fenced"], false, "{ready}");
        assert_eq!(ready["cluster"]["devices_owned"], mine, "{ready}");
        assert!(ready["cluster"]["session"].is_i64(), "{ready}");

        let metrics = http_get(addr, "/metrics").await.body;
        assert_eq!(sample(&metrics, "regpoll_cluster_instances "), 2.0);
        assert_eq!(
            sample(&metrics, "regpoll_cluster_devices_owned "),
            mine as f64
        );
        assert_eq!(sample(&metrics, "regpoll_cluster_fenced "), 0.0);
        let links = sample(&metrics, "regpoll_cluster_links_owned ");
        assert_eq!(links * UNITS as f64, mine as f64, "{metrics}");
        assert!(sample(&metrics, "regpoll_cluster_heartbeat_age_seconds ") < 2.0);
        assert!(
            sample(
                &metrics,
                "regpoll_cluster_handovers_total{kind=\"acquired\"} "
            ) >= links,
            "{metrics}"
        );
        assert_eq!(sample(&metrics, "regpoll_cluster_fenced_polls_total "), 0.0);
        assert!(metrics.contains("# TYPE regpoll_cluster_handovers_total counter"));
    }

    // The page of an instance with devices (the hash may give one all four
    // gateways): the cluster card lists both with this one marked, and the
    // device cards say who polls them.
    let count = |id: &str| owners.values().filter(|o| *o == id).count();
    let (addr, id) = if count("b") > 0 {
        (addr_b, "b")
    } else {
        (addr_a, "a")
    };
    let dom = render(addr, Duration::from_secs(3), "status-page-cluster.png").await;
    assert!(
        dom.contains(&format!("data-cluster=\"{id}\"")),
        "no cluster card: {dom}"
    );
    assert_eq!(dom.matches("data-instance=\"").count(), 2, "{dom}");
    assert!(
        dom.contains(&format!("class=\"this\" data-instance=\"{id}\"")),
        "{dom}"
    );
    assert!(!dom.contains("data-fenced=\""), "{dom}");
    let owner = format!("data-owner=\"{id}\"");
    assert_eq!(dom.matches(&owner).count(), count(id), "{dom}");
    assert!(dom.contains(&format!("polled by {id}")), "{dom}");

    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// With the database gone, `/api/cluster` still answers at once with the
/// last heartbeat's view: no owners, and why; then the instance fences
/// itself, and `/ready`, `/metrics` and the page say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_the_cluster_view_is_the_last_heartbeats() {
    let fixture = fleet().await;
    let url = fresh_postgres().await;
    let (a, addr) = instance(&fixture, &url, "a").await;
    let started = Instant::now();
    while owners(&get_json(addr, "/api/cluster").await).is_none_or(|o| o.len() < GATEWAYS * UNITS) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never owned the fleet"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    set_reachable(&url, false).await;
    let asked = Instant::now();
    let answer = http_get(addr, "/api/cluster").await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["owners"], Value::Null, "{body}");
    let why = body["owners_error"].as_str().expect("owners_error");
    assert!(why.contains("database"), "{why}");
    assert_eq!(body["instances"].as_array().unwrap().len(), 1, "{body}");

    // The lease runs out: fenced, and the answers say so.
    let fenced_by = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = get_json(addr, "/api/cluster").await;
        if body["fenced"] == true {
            break body;
        }
        assert!(Instant::now() < fenced_by, "not fenced in 10 s: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body["last_error"].is_string(), "{body}");
    let ready: HttpAnswer = http_get(addr, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(ready["cluster"]["fenced"], true, "{ready}");
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("cluster: fenced"), "{ready}");
    let metrics = http_get(addr, "/metrics").await.body;
    assert_eq!(sample(&metrics, "regpoll_cluster_fenced "), 1.0);
    assert!(
        sample(
            &metrics,
            "regpoll_cluster_handovers_total{kind=\"fenced\"} "
        ) >= 1.0
    );
    let dom = render(addr, Duration::from_secs(2), "status-page-fenced.png").await;
    assert!(dom.contains("data-fenced=\""), "no fenced warning: {dom}");

    set_reachable(&url, true).await;
    a.shutdown().await.unwrap();
}

/// Without `--cluster`: `enabled: false` and nothing else, no `owner` on
/// the devices, no cluster metrics, no `cluster` in `/ready`, no card; and
/// `/api/cluster` takes no parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_says_it_is_not_clustered() {
    let fixture = fleet().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("h.db"),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    common::wait_for_polls(&running, 1).await;

    let body = get_json(addr, "/api/cluster").await;
    assert_eq!(body["enabled"], false);
    assert_eq!(body["this"], Value::Null);
    assert_eq!(body["instances"], serde_json::json!([]));
    assert_eq!(body["owners"], Value::Null);
    let devices = get_json(addr, "/api/devices").await;
    for d in devices["devices"].as_array().unwrap() {
        assert!(d.get("owner").is_none(), "{d}");
    }
    assert_eq!(
        get_json(addr, "/api/fleet").await["summary"]["cluster"],
        Value::Null
    );
    let ready = get_json(addr, "/ready").await;
    assert!(ready.get("cluster").is_none(), "{ready}");
    let metrics = http_get(addr, "/metrics").await.body;
    assert!(!metrics.contains("regpoll_cluster"), "{metrics}");
    let dom = render(addr, Duration::from_secs(1), "status-page-single.png").await;
    assert!(!dom.contains("data-cluster=\""), "{dom}");

    for (path, fragment) in [
        ("/api/cluster?owners=false", "unknown parameter `owners`"),
        ("/api/cluster?%00=1", "control"),
    ] {
        let answer = http_get(addr, path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        let error = answer.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(fragment), "{path}: {error}");
    }
    running.shutdown().await.unwrap();
}
