//! The status page beside a fleet (`fleet --page CHROMIUM`): after the
//! fleet's own window, headless Chromium opens the page on the running
//! service. Measured: the first paint of the summary (from Chromium's start,
//! so including the browser's own start-up), a screenshot, and a window as
//! long as the fleet's with the page open in real time, from which come the
//! requests each refresh cost the server (by route, from `/api/stats`) and
//! the polling lateness with the page open, to set beside the fleet's
//! window without it and a window as long with Chromium open on a blank
//! page (what the browser itself costs the shared cores, which an
//! operator's browser, on another machine, does not). Chromium runs at the
//! lowest CPU priority for the same reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value as Json, json};

use crate::fleet::{counter, stats_of, window_quantiles};

/// Chromium's flags: headless, no sandbox (containers), and none of its
/// calls home (refused here, and noise on the shared cores).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
];

/// The routes the page uses; each one's requests per refresh are reported.
const ROUTES: &[&str] = &[
    "/",
    "/api/fleet",
    "/ready",
    "/api/latest",
    "/api/buckets",
    "/api/devices",
    "/api/devices/{name}/latest",
    "/api/readings",
];

/// Runs the page's measurements against the service at `http` for `window`.
/// Chromium's profiles go under `work`.
pub async fn page(
    chromium: &Path,
    http: SocketAddr,
    window: Duration,
    shot: &Path,
    work: &Path,
) -> anyhow::Result<Json> {
    let url = format!("http://{http}/");
    let profile = work.join("chromium-dump");
    let started = Instant::now();
    let dom = dump(chromium, &url, &profile, Duration::from_millis(1), None).await?;
    let first_paint = started.elapsed();
    if !dom.contains("data-summary") {
        bail!("the page painted no summary; its DOM:\n{dom}");
    }
    dump(chromium, &url, &profile, Duration::from_secs(6), Some(shot)).await?;

    // The page open in real time (no virtual clock), as an operator has
    // it; then a blank page for as long.
    let (s0, s1) = open_for(chromium, &url, &work.join("chromium-open"), window, http).await?;
    let blank = "data:text/html,<p>blank</p>";
    let (b0, b1) = open_for(chromium, blank, &work.join("chromium-blank"), window, http).await?;
    let durations = route_durations(http).await?;

    let requests = |route: &str| {
        counter(&s1, &["http_requests", route]) - counter(&s0, &["http_requests", route])
    };
    let refreshes = requests("/api/fleet");
    let per_route: serde_json::Map<String, Json> = ROUTES
        .iter()
        .map(|r| (r.to_string(), json!(requests(r))))
        .collect();
    let api_total: f64 = ROUTES.iter().map(|r| requests(r)).sum();
    Ok(json!({
        "first_paint_ms": first_paint.as_millis() as u64,
        "screenshot": shot.display().to_string(),
        "window_s": window.as_secs_f64(),
        "refreshes": refreshes,
        "requests": per_route,
        "requests_per_refresh": if refreshes > 0.0 { api_total / refreshes } else { f64::NAN },
        "lateness": window_quantiles(&s0, &s1, "lateness"),
        "lateness_blank_page": window_quantiles(&b0, &b1, "lateness"),
        "mean_answer_ms": durations,
    }))
}

/// `/api/stats` before and after `window` with Chromium open on `url`.
async fn open_for(
    chromium: &Path,
    url: &str,
    profile: &Path,
    window: Duration,
    http: SocketAddr,
) -> anyhow::Result<(Json, Json)> {
    let s0 = stats_of(http).await?;
    let mut open = tokio::process::Command::new("nice")
        .args(["-n", "19"])
        .arg(chromium)
        .args(FLAGS)
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", chromium.display()))?;
    tokio::time::sleep(window).await;
    let s1 = stats_of(http).await?;
    open.kill().await.ok();
    let _ = open.wait().await;
    Ok((s0, s1))
}

/// The mean time the service took to answer each of the page's routes
/// since start, from `/metrics` (`…_duration_seconds_sum` / `_count`).
async fn route_durations(http: SocketAddr) -> anyhow::Result<Json> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let value = |metric: &str, route: &str| -> Option<f64> {
        let prefix = format!("{metric}{{route=\"{route}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let mut out = serde_json::Map::new();
    for route in ROUTES {
        let sum = value("regpoll_http_request_duration_seconds_sum", route);
        let count = value("regpoll_http_request_duration_seconds_count", route);
        if let (Some(sum), Some(count)) = (sum, count)
            && count > 0.0
        {
            out.insert(route.to_string(), json!((sum / count * 1e6).round() / 1e3));
        }
    }
    Ok(Json::Object(out))
}

/// Chromium's DOM after `budget` of virtual time (spent only while no
/// request is pending), optionally with a screenshot.
async fn dump(
    chromium: &Path,
    url: &str,
    profile: &Path,
    budget: Duration,
    shot: Option<&Path>,
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("nice");
    cmd.args(["-n", "19"])
        .arg(chromium)
        .args(FLAGS)
        .arg("--dump-dom")
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg(format!("--user-data-dir={}", profile.display()));
    if let Some(path) = shot {
        cmd.arg(format!("--screenshot={}", path.display()));
    }
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        cmd.arg(url).kill_on_drop(true).output(),
    )
    .await
    .context("chromium did not finish within 120 s")?
    .with_context(|| format!("cannot run {}", chromium.display()))?;
    if !out.status.success() {
        bail!(
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the screenshot goes: `target/` of the current directory (the
/// checkout, where scripts/bench runs).
pub fn screenshot_path(devices: usize) -> PathBuf {
    PathBuf::from("target").join(format!("status-page-{devices}.png"))
}
