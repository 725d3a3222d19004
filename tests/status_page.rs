//! The status page at fleet scale, in headless Chromium against a running
//! service polling the simulator: the summary paints fast, one refresh costs
//! the server a fixed number of requests whatever the fleet size, polling
//! stays on time while the page is open, devices needing attention come
//! first and the rest in natural order; values show every digit and rounding
//! noise draws a flat sparkline. The bulk endpoints the page uses
//! (`/api/fleet`, `/api/latest`, `/api/buckets`) refuse what they must.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{HttpAnswer, fresh_postgres, http_get, simulate, wait_for_polls};
use regpoll::app::Settings;
use regpoll::db::Db;
use regpoll::telemetry::DistributionSnapshot;

/// Devices served by the simulator: 4 endpoints of 50 unit ids each, as
/// gateways hold them.
const SERVED: usize = 200;
/// The routine fleet's page budget: first paint with the summary, measured
/// from Chromium's start (so including the browser's own start-up).
const FIRST_PAINT_MAX: Duration = Duration::from_secs(2);
/// Added to twice the lateness p99 without the page (as in `api_load`):
/// scheduler noise on a shared 2-core machine, which no page can remove.
const LATENESS_SLACK: Duration = Duration::from_millis(25);

/// `s0`…`s199` on the simulator, tagged by site, and `z1`, `z2` where
/// nothing listens: down, so they need attention.
fn fleet_yaml() -> (String, Vec<String>) {
    let mut yaml =
        String::from("defaults:\n  host: 127.0.0.1\n  every: 1s\n  timeout: 300ms\ndevices:\n");
    let placeholders: Vec<String> = (0..4).map(|i| format!("{{P{i}}}")).collect();
    for i in 0..SERVED {
        let site = if i % 2 == 0 { "plant-a" } else { "plant-b" };
        yaml.push_str(&format!(
            "  - name: s{i}\n    port: {}\n    unit_id: {}\n    tags: {{ site: {site} }}\n    registers:\n      - {{ name: level, kind: holding, address: 0, type: u16 }}\n      - {{ name: temp, kind: input, address: 0, type: f32, unit: \"°C\" }}\n",
            placeholders[i % 4],
            i / 4 + 1
        ));
    }
    for name in ["z1", "z2"] {
        yaml.push_str(&format!(
            "  - name: {name}\n    port: {{DEAD}}\n    unit_id: 1\n    registers:\n      - {{ name: level, kind: holding, address: 0, type: u16 }}\n"
        ));
    }
    (yaml, placeholders)
}

/// The fleet of `fleet_yaml` polled with SQLite history and the API on,
/// once every device has `polls` polls.
async fn fleet_service(
    polls: u64,
) -> (
    common::SimFixture,
    tempfile::TempDir,
    regpoll::app::Running,
    SocketAddr,
) {
    let (yaml, placeholders) = fleet_yaml();
    let refs: Vec<&str> = placeholders.iter().map(String::as_str).collect();
    let fixture = simulate(&yaml, &refs).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("h.db"),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, polls).await;
    (fixture, dir, running, addr)
}

/// Renders the page in headless Chromium for `budget` of virtual time
/// (spent only while no request is pending, so every request the page makes
/// in that time is answered), optionally saving a screenshot; returns the
/// DOM and the wall-clock time Chromium took from its start to the dump.
async fn render(url: &str, budget: Duration, shot: Option<&Path>) -> (String, Duration) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = common::chromium(profile.path());
    cmd.arg(format!("--virtual-time-budget={}", budget.as_millis()));
    if let Some(path) = shot {
        cmd.arg(format!("--screenshot={}", path.display()));
    }
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.arg(url).output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    let took = started.elapsed();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && dom.contains("data-summary"),
        "chromium failed or painted no summary ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        dom
    );
    (dom, took)
}

fn page(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// A page that makes no request (marked so that `render` accepts it).
const BLANK: &str = "data:text/html,<body><p data-summary>blank</p></body>";

/// The value of `attr="…"` on the page's `<body>`.
fn body_attr(dom: &str, attr: &str) -> u64 {
    let at = dom
        .find(&format!("{attr}=\""))
        .unwrap_or_else(|| panic!("no {attr} in {dom}"));
    let rest = &dom[at + attr.len() + 2..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

/// The device cards in page order.
fn cards(dom: &str) -> Vec<String> {
    dom.split("data-device=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_string())
        .collect()
}

async fn stats(addr: SocketAddr) -> serde_json::Value {
    let answer = http_get(addr, "/api/stats").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

fn lateness(stats: &serde_json::Value) -> DistributionSnapshot {
    DistributionSnapshot::from_json(&stats["distributions"]["lateness"])
        .expect("lateness in /api/stats")
}

fn p99(later: &serde_json::Value, earlier: &serde_json::Value) -> Duration {
    lateness(later)
        .since(&lateness(earlier))
        .quantiles(&[0.99])
        .expect("polls in the window")[0]
}

fn requests(later: &serde_json::Value, earlier: &serde_json::Value, route: &str) -> u64 {
    let n = |s: &serde_json::Value| s["http_requests"][route].as_u64().unwrap_or(0);
    n(later) - n(earlier)
}

fn screenshot_path(name: &str) -> PathBuf {
    // Beside the build, where CI keeps artefacts: target/ of this checkout.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// 202 devices: the summary paints within 2 s of Chromium's start, each
/// refresh costs the same three requests (plus the sparklines' one when the
/// page's devices change) however many devices there are, no request is
/// made per device, and polling lateness p99 with the page open stays
/// within twice its value without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_costs_a_bounded_number_of_requests_at_fleet_scale() {
    let (_fixture, _dir, running, addr) = fleet_service(2).await;

    // First paint: the summary, with the fleet's counts.
    let (dom, took) = render(&page(addr), Duration::from_millis(1), None).await;
    assert!(took < FIRST_PAINT_MAX, "the summary took {took:?} to paint");
    assert!(
        dom.contains(">202<"),
        "no device count in the summary: {dom}"
    );

    // Ten seconds of refreshes, with a screenshot.
    let shot = screenshot_path("status-page-202.png");
    let before = stats(addr).await;
    let opened = Instant::now();
    let (dom, _) = render(&page(addr), Duration::from_secs(10), Some(&shot)).await;
    let after = stats(addr).await;
    let open_for = opened.elapsed();
    let refreshes = body_attr(&dom, "data-refreshes");
    assert!(refreshes >= 3, "{refreshes} refreshes in 10 s");
    for route in ["/api/fleet", "/api/latest", "/ready"] {
        let n = requests(&after, &before, route);
        assert!(
            n <= refreshes,
            "{n} requests to {route} in {refreshes} refreshes"
        );
    }
    // The page's devices did not change: their sparklines were fetched once.
    assert_eq!(requests(&after, &before, "/api/buckets"), 1);
    assert_eq!(requests(&after, &before, "/api/devices/{name}/latest"), 0);
    assert_eq!(requests(&after, &before, "/api/readings"), 0);
    assert!(std::fs::metadata(&shot).unwrap().len() > 0);

    // Attention first, then natural order; only one page of cards.
    let shown = cards(&dom);
    assert_eq!(shown.len(), 25, "{shown:?}");
    assert_eq!(&shown[..5], ["z1", "z2", "s0", "s1", "s2"], "{shown:?}");
    assert!(dom.contains("connection refused"), "{dom}");

    // The same browser for as long on a page that asks nothing: what
    // Chromium itself costs the shared cores, apart from the page's requests.
    let quiet_from = stats(addr).await;
    let started = Instant::now();
    render(BLANK, Duration::from_secs(10), None).await;
    tokio::time::sleep(open_for.saturating_sub(started.elapsed())).await;
    let quiet_to = stats(addr).await;
    let quiet = p99(&quiet_to, &quiet_from);
    let open = p99(&after, &before);
    assert!(
        open <= quiet * 2 + LATENESS_SLACK,
        "lateness p99 {open:?} with the page open, {quiet:?} without"
    );
    running.shutdown().await.unwrap();
}

/// `/api/fleet` filters by name, tag and state, pages, and counts states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_listing_filters_pages_and_puts_problems_first() {
    let (_fixture, _dir, running, addr) = fleet_service(1).await;
    let names = |a: &HttpAnswer| -> Vec<String> {
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = http_get(addr, "/api/fleet?per_page=4").await;
    let body = all.json();
    assert_eq!(body["summary"]["devices"], 202);
    assert_eq!(body["summary"]["states"]["down"], 2);
    assert_eq!(body["summary"]["states"]["up"], 200);
    assert_eq!(body["summary"]["attention"], 2);
    assert_eq!(body["matched"], 202);
    assert_eq!(body["pages"], 51);
    assert_eq!(names(&all), ["z1", "z2", "s0", "s1"]);
    let page = http_get(addr, "/api/fleet?per_page=4&page=1").await;
    assert_eq!(names(&page), ["s2", "s3", "s4", "s5"]);
    let found = http_get(addr, "/api/fleet?search=S19&tag=site%3Dplant-b").await;
    assert_eq!(
        names(&found),
        ["s19", "s191", "s193", "s195", "s197", "s199"]
    );
    let down = http_get(addr, "/api/fleet?state=attention").await;
    assert_eq!(names(&down), ["z1", "z2"]);
    let none = http_get(addr, "/api/fleet?state=skipped").await;
    assert!(names(&none).is_empty());
    for (query, fragment) in [
        ("per_page=100000", "between 1 and 200"),
        ("page=x", "not a whole number"),
        ("colour=red", "unknown parameter"),
        ("search=a%00", "control character"),
    ] {
        let a = http_get(addr, &format!("/api/fleet?{query}")).await;
        assert_error(&a, 400, fragment);
    }
    running.shutdown().await.unwrap();
}

fn assert_error(answer: &HttpAnswer, status: u16, fragment: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let message = answer.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains(fragment),
        "`{message}` should mention `{fragment}`"
    );
}

const EXACT: &str = r#"
defaults:
  host: 127.0.0.1
  every: 200ms
  timeout: 300ms
devices:
  - name: meter
    port: {A}
    unit_id: 1
    registers:
      - { name: big, kind: holding, address: 0, type: u16, offset: 123456789.012 }
      - { name: steady, kind: holding, address: 1, type: f64, valid: { min: 123456.7, max: 123456.7 } }
      - { name: moving, kind: holding, address: 5, type: u16 }
"#;

/// The bulk endpoints: values and buckets of many devices in one answer;
/// unknown names listed, not fatal; too many names, bad characters, a list
/// longer than any `max` names, a request line past the HTTP layer's limit
/// and a body (this API only answers GET) refused with a clear status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_endpoints_answer_for_many_devices_and_refuse_hostile_lists() {
    let fixture = simulate(EXACT, &["{A}"]).await;
    let settings = Settings {
        database_url: Some(fresh_postgres().await),
        api: regpoll::api::ApiLimits {
            max_devices: 3,
            ..Default::default()
        },
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 2).await;

    let latest = http_get(addr, "/api/latest?devices=meter,ghost").await;
    assert_eq!(latest.status, 200, "{}", latest.body);
    let body = latest.json();
    assert_eq!(body["unknown"], serde_json::json!(["ghost"]));
    assert_eq!(
        body["devices"]["meter"]["values"]["steady"]["quality"],
        "good"
    );
    let buckets = http_get(addr, "/api/buckets?devices=meter,ghost&from=now-5m").await;
    assert_eq!(buckets.status, 200, "{}", buckets.body);
    let body = buckets.json();
    assert_eq!(body["unknown"], serde_json::json!(["ghost"]));
    assert_eq!(body["bucket"], "1m");

    for (path, fragment) in [
        ("/api/latest?devices=a,b,c,d", "more than 3 devices"),
        ("/api/buckets?devices=a,b,c,d", "more than 3 devices"),
        ("/api/latest?devices=a,,b", "empty name"),
        ("/api/latest?devices=meter%3Cscript%3E", "contains `<`"),
        ("/api/latest?devices=a%00", "control character"),
        ("/api/latest", "`devices` is required"),
        ("/api/buckets?devices=meter&bucket=0s", "bucket"),
        ("/api/buckets?devices=meter&from=yesterday", "from"),
    ] {
        assert_error(&http_get(addr, path).await, 400, fragment);
    }
    // 60,000 bytes of names: refused before it is split.
    let long = format!("/api/latest?devices={}", "a,".repeat(30_000));
    assert_error(&http_get(addr, &long).await, 400, "more than 3 devices");
    // Past the HTTP layer's own limit on a request line: refused there.
    let huge = format!("/api/latest?devices={}", "a".repeat(200_000));
    let status = http_get(addr, &huge).await.status;
    assert!((400..500).contains(&status), "{status}");
    // A 4 MiB body: this API answers GET only, and says so without reading it.
    let (status, body) = post(addr, "/api/latest?devices=meter", 4 << 20).await;
    assert_eq!(status, 405, "{body}");
    running.shutdown().await.unwrap();
}

/// POSTs `len` bytes of body; returns the status and the answer's body.
async fn post(addr: SocketAddr, path: &str, len: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the body is all sent.
    let _ = stream.write_all(&vec![b'x'; len]).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text}"));
    (status, text)
}

/// A value shows every digit it has (`123456789.012` is not `.01`), and one-
/// minute averages that differ only by rounding draw a flat line, while a
/// real change draws a line that moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_show_every_digit_and_rounding_noise_draws_a_flat_sparkline() {
    let fixture = simulate(EXACT, &["{A}"]).await;
    let settings = Settings {
        database_url: Some(fresh_postgres().await),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 2).await;
    let Db::Postgres(pool) = &running.db else {
        panic!("expected PostgreSQL")
    };
    // `steady`: averages 123456.7 and 123456.70000000011 (the noise the
    // issue saw above a max of 123456.7); `moving`: 10, 20, 30, 40.
    sqlx::query(
        "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
         SELECT now() - make_interval(mins => m), r.id, r.device_id, \
                CASE WHEN r.name = 'steady' THEN (CASE WHEN m % 20 = 0 THEN 123456.7 ELSE 123456.70000000011 END) ELSE m END, 'good' \
         FROM device_register_map r JOIN devices d ON d.id = r.device_id, \
              (VALUES (40), (30), (20), (10)) AS ago(m) \
         WHERE d.name = 'meter' AND r.name IN ('steady', 'moving')",
    )
    .execute(pool)
    .await
    .unwrap();
    common::rollups_cover_sql_rows(&running.db, 41).await;
    let shot = screenshot_path("status-page-values.png");
    let (dom, _) = render(&page(addr), Duration::from_secs(3), Some(&shot)).await;
    let row = |register: &str| -> String {
        let at = dom
            .find(&format!("data-register=\"{register}\""))
            .unwrap_or_else(|| panic!("no row for {register}:\n{dom}"));
        let row = &dom[at..];
        row[..row.find("</tr>").unwrap()].to_string()
    };
    let big = row("big");
    let value = big[big.find("class=\"value").unwrap()..].to_string();
    let value = &value[value.find('>').unwrap() + 1..];
    let value = &value[..value.find('<').unwrap()];
    // u16 + 123456789.012 is exact in an f64 of that size, so its shortest
    // form keeps the three decimals.
    assert!(
        value.ends_with(".012") && value.parse::<f64>().is_ok(),
        "big shows `{value}`"
    );
    let steady = row("steady");
    assert!(steady.contains("data-flat"), "{steady}");
    let moving = row("moving");
    assert!(
        moving.contains("<polyline") && !moving.contains("data-flat"),
        "{moving}"
    );
    running.shutdown().await.unwrap();
}

/// A device whose map has holes, read with gap fill, and one mapped
/// register it refuses.
const SPARSE: &str = r#"
defaults: { host: 127.0.0.1, every: 200ms, timeout: 300ms, max_gap: 30 }
devices:
  - name: sparse
    port: {A}
    registers:
      - { name: a, kind: holding, address: 0, type: u16 }
      - { name: b, kind: holding, address: 10, type: u32 }
      - { name: refused, kind: holding, address: 12, type: u16 }
      - { name: c, kind: holding, address: 30, type: u16 }
"#;

/// What the read plan learned is in `/api/devices` and the device's card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_plan_shows_in_the_api_and_the_device_detail() {
    use regpoll::sim::fault::{FaultAction, Mapped};
    let fault = |register: Option<&str>, action| regpoll::sim::SimFault {
        device: "sparse".into(),
        register: register.map(str::to_string),
        action,
    };
    let faults = vec![
        fault(None, FaultAction::Holes(Mapped::default())),
        fault(Some("refused"), FaultAction::Exception(2)),
    ];
    let fixture = common::simulate_with_faults(SPARSE, &["{A}"], faults).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("h.db"),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 2).await;

    let devices = http_get(addr, "/api/devices").await.json();
    let learned = &devices["devices"][0]["learned"];
    assert_eq!(
        learned["summary"], "learned: 3 blocks, 1 address refused (coalesced: 1 request)",
        "{devices:#}"
    );
    assert_eq!(learned["coalesced_requests"], 1);
    assert_eq!(
        learned["blocks"][1],
        serde_json::json!({ "kind": "holding", "start": 10, "count": 2 })
    );
    assert_eq!(
        learned["refused"][0],
        serde_json::json!({
            "kind": "holding", "address": 12, "count": 1, "registers": ["refused"],
            "exception": 2, "detail": "exception 2 (illegal data address)",
        })
    );

    let (dom, _) = render(&page(addr), Duration::from_secs(3), None).await;
    let card = &dom[dom.find("data-device=\"sparse\"").expect("the card")..];
    let at = card
        .find("class=\"learned\"")
        .unwrap_or_else(|| panic!("{card}"));
    let line = &card[at..];
    let line = &line[line.find('>').unwrap() + 1..];
    let line = &line[..line.find('<').unwrap()];
    assert_eq!(
        line,
        "learned: 3 blocks, 1 address refused (coalesced: 1 request) · refused holding 12 (refused): exception 2 (illegal data address)"
    );
    running.shutdown().await.unwrap();
}
