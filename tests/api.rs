//! The HTTP API against a running service with real PostgreSQL, Redis and the
//! simulator: every endpoint, bad parameters (400), unknown names (404), and
//! the status page rendered in headless Chromium.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{HttpAnswer, fresh_postgres, http_get, redis, simulate, wait_for_polls};
use regpoll::app::{self, DeviceSource, Running, Settings};
use regpoll::db::Db;

const FLEET: &str = r#"
defaults:
  host: 127.0.0.1
  every: 200ms
  timeout: 300ms
devices:
  - name: boiler
    port: {A}
    unit_id: 1
    tags: { site: plant-a }
    registers:
      - { name: supply_temp, kind: holding, address: 100, type: f32, unit: "°C" }
      - { name: pressure, kind: input, address: 0, type: u16, scale: 0.01, unit: bar }
      - { name: burner_on, kind: coil, address: 3 }
      - { name: serial_no, kind: holding, address: 120, type: string, length: 4 }
  - name: gone-meter
    port: {DEAD}
    unit_id: 1
    registers:
      - { name: energy, kind: input, address: 0, type: u32, unit: kWh }
"#;

/// A service on PostgreSQL and Redis, polled until every device has 3 polls.
async fn service() -> (common::SimFixture, Running, SocketAddr) {
    let fixture = simulate(FLEET, &["{A}"]).await;
    let (redis_url, prefix) = redis();
    let settings = Settings {
        database_url: Some(fresh_postgres().await),
        redis_url: Some(redis_url),
        redis_prefix: prefix,
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    wait_for_polls(&running, 3).await;
    (fixture, running, addr)
}

/// A service keeping history in SQLite under `dir`.
async fn sqlite_service(
    fixture: &common::SimFixture,
    dir: &tempfile::TempDir,
    redis_url: Option<String>,
) -> (Running, SocketAddr) {
    let settings = Settings {
        sqlite_path: dir.path().join("h.db"),
        redis_url,
        ..Settings::default()
    };
    common::start_with_api(fixture, settings).await
}

fn assert_error(answer: &HttpAnswer, status: u16, fragment: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    let message = answer.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", answer.body))
        .to_string();
    assert!(
        message.contains(fragment),
        "`{message}` should mention `{fragment}`"
    );
}

/// The `rows` of a successful `/api/readings` answer.
async fn rows_of(addr: SocketAddr, path: &str) -> Vec<serde_json::Value> {
    let answer = http_get(addr, path).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    answer.json()["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {}", answer.body))
        .clone()
}

async fn stored_count(db: &Db, device: &str, register: &str, qualities: &str) -> i64 {
    let Db::Postgres(pool) = db else {
        panic!("expected PostgreSQL")
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM register_readings_named WHERE device = $1 AND register = $2 AND quality IN ({qualities})"
    )))
    .bind(device)
    .bind(register)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until `rows` readings of the register are stored (any quality).
/// The history writer's batches cannot be awaited from here, so the table is
/// polled, for up to 10 s.
async fn until_stored(db: &Db, device: &str, register: &str, rows: i64) {
    for _ in 0..400 {
        if stored_count(db, device, register, "'good','uncertain','bad'").await >= rows {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{device}/{register} has not {rows} stored readings after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_real_services() {
    let (_fixture, running, addr) = service().await;

    let health = http_get(addr, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let ready = http_get(addr, "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["ready"], true);

    // Devices: the live one is up, the one nobody listens for is down with
    // the connect error.
    let devices = http_get(addr, "/api/devices").await;
    assert_eq!(devices.status, 200);
    let list = devices.json()["devices"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let boiler = list.iter().find(|d| d["name"] == "boiler").unwrap();
    assert_eq!(boiler["state"], "up");
    assert_eq!(boiler["registers"], 4);
    assert_eq!(boiler["tags"]["site"], "plant-a");
    assert!(boiler["last_success"].is_string());
    assert!(boiler["polls"].as_u64().unwrap() >= 3);
    let gone = list.iter().find(|d| d["name"] == "gone-meter").unwrap();
    assert_eq!(gone["state"], "down");
    assert!(gone["last_success"].is_null());
    assert!(
        gone["last_error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{gone}"
    );

    // Latest values: the same JSON as Redis, matching the memory cache.
    let latest = http_get(addr, "/api/devices/boiler/latest").await;
    assert_eq!(latest.status, 200, "{}", latest.body);
    let body = latest.json();
    assert_eq!(body["device"], "boiler");
    let values = body["values"].as_object().unwrap();
    assert_eq!(values.len(), 4);
    assert_eq!(values["supply_temp"]["quality"], "good");
    assert_eq!(values["supply_temp"]["unit"], "°C");
    assert!(values["supply_temp"]["value"].is_number());
    assert!(values["burner_on"]["value"].is_boolean());
    assert!(values["serial_no"]["value"].is_string());
    let gone_latest = http_get(addr, "/api/devices/gone-meter/latest").await;
    let energy = &gone_latest.json()["values"]["energy"];
    assert_eq!(energy["quality"], "bad");
    assert!(energy["value"].is_null());
    assert!(
        energy["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    assert_error(
        &http_get(addr, "/api/devices/no-such-device/latest").await,
        404,
        "no-such-device",
    );

    // Readings, raw: every stored row of the register in the range.
    let rows = rows_of(
        addr,
        "/api/readings?device=boiler&register=supply_temp&from=now-10m",
    )
    .await;
    let stored = stored_count(
        &running.db,
        "boiler",
        "supply_temp",
        "'good','uncertain','bad'",
    )
    .await;
    // The writer may have stored more since the request; never fewer.
    assert!(
        !rows.is_empty() && rows.len() as i64 <= stored,
        "{} rows, {stored} stored",
        rows.len()
    );
    let times: Vec<&str> = rows.iter().map(|r| r["ts"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "ordered by time");
    assert!(rows.iter().all(|r| r["register"] == "supply_temp"));

    // Readings per bucket: avg lies between min and max, and the counts add
    // up to no more than the good and uncertain rows stored (counted after).
    let bucketed = http_get(
        addr,
        "/api/readings?device=boiler&register=pressure&from=now-10m&bucket=1s",
    )
    .await;
    assert_eq!(bucketed.status, 200, "{}", bucketed.body);
    let b = bucketed.json();
    assert_eq!(b["bucket"], "1s");
    let buckets = b["rows"].as_array().unwrap().clone();
    assert!(!buckets.is_empty());
    for row in &buckets {
        let (avg, min, max) = (
            row["avg"].as_f64().unwrap(),
            row["min"].as_f64().unwrap(),
            row["max"].as_f64().unwrap(),
        );
        assert!(min <= avg && avg <= max, "{row}");
        assert!(row["bucket"].as_str().unwrap().ends_with(".000Z"), "{row}");
    }
    let counted: i64 = buckets.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    let stored = stored_count(&running.db, "boiler", "pressure", "'good','uncertain'").await;
    assert!(
        counted > 0 && counted <= stored,
        "{counted} counted, {stored} stored"
    );

    // Every register of the device when none is named; strings have no buckets.
    let all = rows_of(addr, "/api/readings?device=boiler&bucket=1m").await;
    let regs: std::collections::BTreeSet<String> = all
        .iter()
        .map(|r| r["register"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        regs.into_iter().collect::<Vec<_>>(),
        ["burner_on", "pressure", "supply_temp"]
    );

    // `limit=1` below is refused only when two rows match, and the third poll
    // can come before the history writer's second batch is stored (a batch
    // waits up to 200 ms for more rows): wait for the second row.
    until_stored(&running.db, "boiler", "supply_temp", 2).await;

    // Bad parameters: 400 with a message that says what is wrong.
    for (path, fragment) in [
        ("/api/readings", "`device` is required"),
        ("/api/readings?device=boiler&from=yesterday", "RFC 3339"),
        (
            "/api/readings?device=boiler&to=now-2h&from=now-1h",
            "must be before",
        ),
        ("/api/readings?device=boiler&bucket=often", "bucket"),
        ("/api/readings?device=boiler&limit=0", "limit"),
        ("/api/readings?device=boiler&limit=lots", "limit"),
        ("/api/readings?device=boiler&limit=1000000", "limit"),
        (
            "/api/readings?device=boiler&colour=red",
            "unknown parameter `colour`",
        ),
        (
            "/api/readings?device=boiler&register=supply_temp&from=now-10m&limit=1",
            "more than 1 rows match",
        ),
    ] {
        assert_error(&http_get(addr, path).await, 400, fragment);
    }
    // Unknown names: 404.
    assert_error(
        &http_get(addr, "/api/readings?device=nobody").await,
        404,
        "no device named `nobody`",
    );
    assert_error(
        &http_get(addr, "/api/readings?device=boiler&register=nothing").await,
        404,
        "no register named `nothing`",
    );
    assert_error(
        &http_get(addr, "/api/nothing-here").await,
        404,
        "no such endpoint",
    );

    // Metrics: Prometheus text with the counters of this run.
    let metrics = http_get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{text}"))
    };
    assert!(value("regpoll_polls_total ") >= 6.0);
    assert_eq!(value("regpoll_devices "), 2.0);
    assert_eq!(value("regpoll_devices_up "), 1.0);
    assert!(value("regpoll_readings_total{quality=\"good\"}") > 0.0);
    assert!(value("regpoll_readings_total{quality=\"bad\"}") > 0.0);
    assert!(value("regpoll_schedule_lateness_seconds_count ") >= 6.0);
    assert_eq!(
        value("regpoll_schedule_lateness_seconds_bucket{le=\"+Inf\"}"),
        value("regpoll_schedule_lateness_seconds_count ")
    );
    let dead_endpoint = text
        .lines()
        .find(|l| {
            l.starts_with("regpoll_modbus_errors_total{")
                && l.contains("kind=\"connect\"")
                && !l.ends_with(" 0")
        })
        .unwrap_or_else(|| panic!("no connect errors counted:\n{text}"));
    assert!(dead_endpoint.contains("endpoint=\"127.0.0.1:"));
    assert!(value("regpoll_modbus_request_duration_seconds_count{") > 0.0);
    assert!(value("regpoll_history_rows_written_total ") > 0.0);
    assert!(value("regpoll_redis_polls_written_total ") > 0.0);
    assert!(value("regpoll_redis_visible_seconds_count ") > 0.0);
    assert_eq!(value("regpoll_history_rows_lost_total "), 0.0);
    assert!(value("regpoll_http_requests_total{route=\"/api/readings\",status=\"400\"}") >= 9.0);
    assert!(value("process_resident_memory_bytes ") > 0.0);
    assert!(text.contains("# TYPE regpoll_modbus_request_duration_seconds histogram"));

    // Stats: the same totals as JSON, with distributions that subtract.
    let stats = http_get(addr, "/api/stats").await;
    assert_eq!(stats.status, 200);
    let stats = stats.json();
    assert_eq!(stats["devices"], 2);
    assert!(stats["polls"].as_u64().unwrap() >= 6, "{stats}");
    assert!(stats["readings"]["good"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["modbus_errors"].as_u64().unwrap() > 0, "{stats}");
    let lateness =
        regpoll::telemetry::DistributionSnapshot::from_json(&stats["distributions"]["lateness"])
            .expect("lateness distribution");
    // Lateness is recorded as a poll starts, the poll counted as it ends.
    assert!(
        lateness.count() >= stats["polls"].as_u64().unwrap(),
        "{stats}"
    );
    assert!(lateness.quantiles(&[0.99]).is_some());
    let visible = regpoll::telemetry::DistributionSnapshot::from_json(
        &stats["distributions"]["redis_visible"],
    )
    .unwrap();
    assert!(visible.count() > 0);

    // The status page is served as HTML.
    let page = http_get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>regpoll status</title>"));

    let summary = running.shutdown().await.unwrap();
    assert_eq!(summary.history.rows_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_what_is_unreachable() {
    let fixture = simulate(FLEET, &["{A}"]).await;
    // A Redis URL where nothing listens.
    let dead_redis = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = sqlite_service(
        &fixture,
        &dir,
        Some(format!("redis://127.0.0.1:{dead_redis}/")),
    )
    .await;
    let ready = http_get(addr, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{body}");
    assert!(reasons[0].as_str().unwrap().starts_with("redis:"), "{body}");
    // Alive all the same.
    assert_eq!(http_get(addr, "/health").await.status, 200);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("h.db"),
        http: Some(taken.local_addr().unwrap()),
        ..Settings::default()
    };
    let e = app::start(&settings, DeviceSource::Devices(Vec::new()))
        .await
        .err()
        .expect("the port is taken");
    let message = format!("{e:#}");
    assert!(message.contains("cannot listen on"), "{message}");
    assert!(message.contains("--http"), "{message}");
}

/// SQLite buckets the same way (epoch-aligned) and caps the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_work_on_sqlite_too() {
    let fixture = simulate(FLEET, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (running, addr) = sqlite_service(&fixture, &dir, None).await;
    wait_for_polls(&running, 4).await;
    // Let the writer store what was polled (its batch delay is 200 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let raw_rows = rows_of(addr, "/api/readings?device=boiler&register=pressure")
        .await
        .len() as i64;
    assert!(raw_rows >= 4, "{raw_rows} rows");
    let rows = rows_of(
        addr,
        "/api/readings?device=boiler&register=pressure&bucket=1s",
    )
    .await;
    // Whole seconds: buckets are aligned to the epoch.
    assert!(
        rows.iter()
            .all(|r| r["bucket"].as_str().unwrap().ends_with(".000Z")),
        "{rows:?}"
    );
    let counted: i64 = rows.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert!(counted >= raw_rows, "{counted} in buckets, {raw_rows} raw");
    assert_error(
        &http_get(addr, "/api/readings?device=boiler&limit=2").await,
        400,
        "more than 2 rows",
    );
    running.shutdown().await.unwrap();
}

/// The status page, rendered by headless Chromium against the running service:
/// device cards with their state, and register rows with values and quality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_chromium() {
    let (_fixture, running, addr) = service().await;
    // Some history earlier in the hour, so the sparkline has points to draw.
    let Db::Postgres(pool) = &running.db else {
        panic!("expected PostgreSQL")
    };
    sqlx::query(
        "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
         SELECT now() - make_interval(mins => m), r.id, r.device_id, m, 'good' \
         FROM device_register_map r JOIN devices d ON d.id = r.device_id, \
              (VALUES (40), (30), (20), (10)) AS ago(m) \
         WHERE d.name = 'boiler' AND r.name = 'pressure'",
    )
    .execute(pool)
    .await
    .unwrap();
    common::rollups_cover_sql_rows(&running.db, 41).await;
    let profile = tempfile::tempdir().unwrap();
    // The virtual time budget lets the page's fetches complete and render
    // before the DOM is dumped.
    let run = common::chromium(profile.path())
        .arg("--virtual-time-budget=5000")
        .arg(format!("http://{addr}/"))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && dom.contains("data-device"),
        "chromium failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        dom
    );

    // Each device's card, with its state badge.
    let card = |name: &str| -> String {
        let start = dom
            .find(&format!("data-device=\"{name}\""))
            .unwrap_or_else(|| panic!("no card for {name}:\n{dom}"));
        let rest = &dom[start..];
        rest[..rest.find("</section>").unwrap_or(rest.len())].to_string()
    };
    let boiler = card("boiler");
    assert!(boiler.contains(">up<"), "{boiler}");
    let gone = card("gone-meter");
    assert!(gone.contains(">down<"), "{gone}");
    assert!(gone.contains("connection refused"), "{gone}");

    // Each register's row: the value cell shows a value, the quality cell its quality.
    let cell = |card: &str, register: &str, class: &str| -> String {
        let row_at = card
            .find(&format!("data-register=\"{register}\""))
            .unwrap_or_else(|| panic!("no row for {register}:\n{card}"));
        let row = &card[row_at..];
        let row = &row[..row.find("</tr>").unwrap()];
        let at = row
            .find(&format!("class=\"{class}"))
            .unwrap_or_else(|| panic!("no .{class} cell in {row}"));
        let text = &row[at..];
        let text = &text[text.find('>').unwrap() + 1..];
        text[..text.find('<').unwrap()].to_string()
    };
    let temp = cell(&boiler, "supply_temp", "value");
    assert!(temp.parse::<f64>().is_ok(), "supply_temp shows `{temp}`");
    assert_eq!(cell(&boiler, "supply_temp", "quality"), "good");
    let burner = cell(&boiler, "burner_on", "value");
    assert!(
        burner == "true" || burner == "false",
        "burner_on shows `{burner}`"
    );
    assert!(!cell(&boiler, "serial_no", "value").is_empty());
    assert_eq!(cell(&gone, "energy", "value"), "—");
    assert_eq!(cell(&gone, "energy", "quality"), "bad");
    // A sparkline of the last hour, drawn where there is history.
    let pressure_row = &boiler[boiler.find("data-register=\"pressure\"").unwrap()..];
    let pressure_row = &pressure_row[..pressure_row.find("</tr>").unwrap()];
    assert!(pressure_row.contains("<polyline points="), "{pressure_row}");

    running.shutdown().await.unwrap();
}

/// Sends `request` as raw bytes and reads the whole answer (HTTP/1.0).
async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Hostile parameters are 400s with a JSON body naming the parameter, never
/// a 503 from the database; unknown routes, wrong methods and bad paths are
/// JSON too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_json_errors_that_name_the_problem() {
    let (_fixture, running, addr) = service().await;
    for (path, status, fragment) in [
        (
            "/api/readings?device=boi%00ler",
            400,
            "`device` contains the control character",
        ),
        (
            "/api/readings?device=boiler&register=a%00",
            400,
            "`register` contains",
        ),
        (
            "/api/readings?device=%FF%FE",
            400,
            "`device` is not valid UTF-8",
        ),
        (
            "/api/readings?device=boiler&device=other",
            400,
            "`device` is given more than once",
        ),
        (
            "/api/readings?device=boiler&limit=10&limit=20",
            400,
            "`limit` is given more than once",
        ),
        (
            "/api/readings?dev%C3=boiler",
            400,
            "parameter name is not valid UTF-8",
        ),
        ("/api/devices/bo%00iler/latest", 400, "control character"),
        ("/api/devices/%FF/latest", 400, "device name in the path"),
        ("/no/such/route", 404, "no such endpoint"),
    ] {
        let answer = http_get(addr, path).await;
        assert_error(&answer, status, fragment);
    }
    // Wrong method: 405, JSON, with Allow.
    let (status, head, body) = raw_request(
        addr,
        format!(
            "POST /api/readings?device=boiler HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(head.contains("allow: get, head"), "{head}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("only answers GET"),
        "{body}"
    );
    // Raw invalid UTF-8 bytes in the query (not percent-encoded).
    let (status, _, body) = raw_request(
        addr,
        b"GET /api/readings?device=\xff\xfe HTTP/1.0\r\nHost: x\r\n\r\n",
    )
    .await;
    if status != 400 {
        panic!("raw bytes: {status} {body}");
    }
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).is_ok() || body.is_empty(),
        "{body}"
    );
    // None of this reached the database: no 503s were answered.
    let metrics = http_get(addr, "/metrics").await.body;
    assert!(!metrics.contains("status=\"503\""), "{metrics}");
    running.shutdown().await.unwrap();
}

/// Past `--api-max-response`, a range is a 400 that says how to page; past
/// `--api-timeout`, a 503 with Retry-After; a reader that does not read
/// holds its slot, so others wait `--api-wait` and then get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_limits_refuse_with_json_that_says_what_to_do() {
    let fixture = simulate(FLEET, &["{A}"]).await;
    let database_url = fresh_postgres().await;
    let limits = |api: regpoll::api::ApiLimits| Settings {
        database_url: Some(database_url.clone()),
        api,
        ..Settings::default()
    };
    let small = regpoll::api::ApiLimits {
        concurrency: 1,
        wait: Duration::from_millis(200),
        max_response: 64 * 1024 * 1024,
        ..Default::default()
    };
    let (running, addr) = common::start_with_api(&fixture, limits(small)).await;
    // 100,000 readings of each of two registers, about 11 MB of JSON each.
    let Db::Postgres(pool) = &running.db else {
        panic!("expected PostgreSQL")
    };
    sqlx::query(
        "INSERT INTO register_readings (ts, register_id, device_id, value, quality) \
         SELECT now() - interval '50 minutes' + make_interval(secs => n * 0.01), r.id, r.device_id, n, 'good' \
         FROM device_register_map r JOIN devices d ON d.id = r.device_id, generate_series(1, 100000) AS n \
         WHERE d.name = 'boiler' AND r.name IN ('pressure', 'supply_temp')",
    )
    .execute(pool)
    .await
    .unwrap();
    // A reader that asks for ~11 MB and reads nothing holds the one slot...
    use tokio::io::AsyncWriteExt as _;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        format!("GET /api/readings?device=boiler&from=now-1h&to=now-30m&limit=100000&register=pressure HTTP/1.0\r\nHost: {addr}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... so another request waits its 200 ms and is refused.
    let (status, head, body) = raw_request(
        addr,
        format!("GET /api/devices HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("--api-concurrency"), "{body}");
    // /health never waits for a slot.
    assert_eq!(http_get(addr, "/health").await.status, 200);
    // Once the slow reader has read (or gone), the slot is free again.
    drop(slow);
    let mut freed = false;
    for _ in 0..100 {
        if http_get(addr, "/api/devices").await.status == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the slot came back after the reader left");
    running.shutdown().await.unwrap();

    // The default cap (2 MiB) refuses the same range with how to page.
    let (running, addr) = common::start_with_api(&fixture, limits(Default::default())).await;
    assert_error(
        &http_get(
            addr,
            "/api/readings?device=boiler&register=pressure&from=now-1h&limit=100000",
        )
        .await,
        400,
        "page through the range",
    );
    running.shutdown().await.unwrap();

    // A timeout no query can meet: 503 with Retry-After, JSON.
    let hasty = regpoll::api::ApiLimits {
        timeout: Duration::from_micros(1),
        ..Default::default()
    };
    let (running, addr) = common::start_with_api(&fixture, limits(hasty)).await;
    let (status, head, body) = raw_request(
        addr,
        format!(
            "GET /api/readings?device=boiler&from=now-1h&bucket=1s HTTP/1.0\r\nHost: {addr}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("--api-timeout"), "{body}");
    running.shutdown().await.unwrap();
}

/// TimescaleDB's informational views as its documentation describes them
/// (the columns regpoll reads), so the job watch can be tested on plain
/// PostgreSQL; the real views exist only with the extension.
const FAKE_TIMESCALEDB_JOB_VIEWS: &str = "
CREATE SCHEMA timescaledb_information;
CREATE TABLE timescaledb_information.jobs (
    job_id integer, proc_name name, hypertable_schema name, hypertable_name name);
CREATE TABLE timescaledb_information.job_stats (
    job_id integer, last_run_status text, last_successful_finish timestamptz,
    total_failures bigint);
CREATE TABLE timescaledb_information.job_errors (
    job_id integer, start_time timestamptz, finish_time timestamptz, err_message text);
CREATE TABLE timescaledb_information.continuous_aggregates (
    view_name name, materialization_hypertable_schema name,
    materialization_hypertable_name name);
INSERT INTO timescaledb_information.continuous_aggregates VALUES
    ('register_readings_hourly', '_timescaledb_internal', '_materialized_hypertable_2');
INSERT INTO timescaledb_information.jobs VALUES
    (1000, 'policy_retention', 'public', 'register_readings'),
    (1001, 'policy_refresh_continuous_aggregate', '_timescaledb_internal', '_materialized_hypertable_2'),
    (1002, 'policy_retention', 'public', 'someone_elses_table');
INSERT INTO timescaledb_information.job_stats VALUES
    (1000, 'Success', now() - interval '10 minutes', 0),
    (1001, 'Failed', now() - interval '3 hours', 3),
    (1002, 'Failed', NULL, 7);
INSERT INTO timescaledb_information.job_errors VALUES
    (1001, now() - interval '4 hours', now() - interval '4 hours', 'an old error before the last success'),
    (1001, now() - interval '2 hours', now() - interval '2 hours', 'canceling statement due to statement timeout'),
    (1001, now() - interval '1 hour', now() - interval '1 hour', 'permission denied for table _materialized_hypertable_2'),
    (1002, now(), now(), 'not regpoll''s job');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_timescaledb_jobs_are_ready_warnings_and_metrics() {
    let fixture = simulate(FLEET, &["{A}"]).await;
    let url = fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(FAKE_TIMESCALEDB_JOB_VIEWS)
        .execute(&pool)
        .await
        .unwrap();
    let settings = Settings {
        database_url: Some(url),
        jobs_check_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    let (running, addr) = common::start_with_api(&fixture, settings).await;

    // Failing, but the service polls and writes: ready, with a warning
    // naming the job, what it works on, how often it failed and why.
    let warnings = loop {
        let ready = http_get(addr, "/ready").await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        if let Some(w) = ready.json()["warnings"].as_array() {
            break w.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        warnings.len(),
        1,
        "only regpoll's failing job: {warnings:?}"
    );
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.starts_with("timescaledb: background job 1001 (policy_refresh_continuous_aggregate on register_readings_hourly) is failing: 2 failed runs in a row"),
        "{w}"
    );
    assert!(
        w.contains("last error: permission denied for table _materialized_hypertable_2"),
        "{w}"
    );

    let metrics = http_get(addr, "/metrics").await.body;
    let job = |id: &str, name: &str| format!("{{job_id=\"{id}\",job=\"{name}\"}}");
    let refresh = job(
        "1001",
        "policy_refresh_continuous_aggregate on register_readings_hourly",
    );
    let retention = job("1000", "policy_retention on register_readings");
    for line in [
        format!("regpoll_timescaledb_job_last_run_success{refresh} 0"),
        format!("regpoll_timescaledb_job_last_run_success{retention} 1"),
        format!("regpoll_timescaledb_job_consecutive_failures{refresh} 2"),
        format!("regpoll_timescaledb_job_consecutive_failures{retention} 0"),
        format!("regpoll_timescaledb_job_failures_total{refresh} 3"),
    ] {
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    let age = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "regpoll_timescaledb_job_last_success_age_seconds{retention}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("the retention job's last success age");
    assert!((590.0..700.0).contains(&age), "{age}");
    assert!(!metrics.contains("someone_elses_table"), "{metrics}");

    let stats = http_get(addr, "/api/stats").await.json();
    let jobs = stats["timescaledb_jobs"]
        .as_array()
        .expect("jobs in /api/stats");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[1]["consecutive_failures"], 2);

    // The job recovers: the warning goes at the next check.
    sqlx::raw_sql(
        "UPDATE timescaledb_information.job_stats \
         SET last_run_status = 'Success', last_successful_finish = now() WHERE job_id = 1001",
    )
    .execute(&pool)
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http_get(addr, "/ready").await.json();
        if ready.get("warnings").is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still warned: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = http_get(addr, "/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "regpoll_timescaledb_job_consecutive_failures{refresh} 0"
        )),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_timescaledb_there_are_no_job_metrics_or_warnings() {
    let (_fixture, running, addr) = service().await;
    let stats = http_get(addr, "/api/stats").await.json();
    assert!(stats["timescaledb_jobs"].is_null(), "{stats}");
    let metrics = http_get(addr, "/metrics").await.body;
    assert!(!metrics.contains("regpoll_timescaledb_job"), "{metrics}");
    assert!(
        http_get(addr, "/ready")
            .await
            .json()
            .get("warnings")
            .is_none()
    );
    running.shutdown().await.unwrap();
}
