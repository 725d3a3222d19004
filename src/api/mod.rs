//! The HTTP API (axum): health and readiness for orchestrators, Prometheus
//! metrics, the devices and their latest values (from memory, so it works
//! with or without Redis), history ranges (from the database), and the status
//! page at `/`.
//!
//! Every error is JSON, `{"error": "…"}`, with the status that fits: 400 for
//! a bad parameter, 404 for an unknown device, register or route, 503 when the
//! database cannot answer.

pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use redis::aio::ConnectionManager;
use serde_json::{Map, json};
use tokio::sync::watch;

use crate::db::Db;
use crate::fleet::Counters;
use crate::history::query::{self, QueryError, RangeQuery};
use crate::history::writer::HistoryStats;
use crate::latest::memory::LatestMemory;
use crate::latest::redis::{Coalescer, RedisStats};
use crate::reading::rfc3339;
use crate::registry::{Device, format_duration, parse_duration};
use crate::sink::HistoryDepth;
use crate::telemetry::Histogram;

/// Bound on each dependency check of `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

const STATUS_PAGE: &str = include_str!("status.html");

/// What the handlers read: shared handles into the running service. It holds
/// no queue sender, so it never keeps a writer alive at shutdown.
#[derive(Clone)]
pub struct ApiState(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub db: Db,
    pub latest: Arc<LatestMemory>,
    pub devices: watch::Receiver<Vec<Arc<Device>>>,
    pub redis: Option<ConnectionManager>,
    pub counters: Arc<Counters>,
    pub history_stats: Arc<HistoryStats>,
    pub history_depth: HistoryDepth,
    pub redis_stats: Arc<RedisStats>,
    pub redis_queue: Option<Arc<Coalescer>>,
    /// True while the scheduler runs; false once shutdown begins.
    pub scheduling: watch::Receiver<bool>,
    pub http: HttpStats,
    pub started_at: f64,
}

impl Shared {
    fn coalesced(&self) -> u64 {
        self.redis_queue.as_ref().map_or(0, |q| {
            q.coalesced.load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}

#[allow(clippy::too_many_arguments)]
impl ApiState {
    pub fn new(
        db: Db,
        latest: Arc<LatestMemory>,
        devices: watch::Receiver<Vec<Arc<Device>>>,
        redis: Option<ConnectionManager>,
        counters: Arc<Counters>,
        history_stats: Arc<HistoryStats>,
        history_depth: HistoryDepth,
        redis_stats: Arc<RedisStats>,
        redis_queue: Option<Arc<Coalescer>>,
        scheduling: watch::Receiver<bool>,
    ) -> Self {
        ApiState(Arc::new(Shared {
            db,
            latest,
            devices,
            redis,
            counters,
            history_stats,
            history_depth,
            redis_stats,
            redis_queue,
            scheduling,
            http: HttpStats::default(),
            started_at: Utc::now().timestamp_micros() as f64 / 1e6,
        }))
    }
}

/// Requests and their durations by route, for `/metrics`.
#[derive(Default)]
pub(crate) struct HttpStats(Mutex<BTreeMap<String, RouteStats>>);

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    duration: Arc<Histogram>,
}

impl HttpStats {
    fn record(&self, route: &str, status: u16, took: Duration) {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let r = routes.entry(route.to_string()).or_default();
        *r.by_status.entry(status).or_default() += 1;
        r.duration.record(took);
    }

    /// `(route, status, count, duration histogram of the route)`.
    fn snapshot(&self) -> Vec<(String, u16, u64, Arc<Histogram>)> {
        let routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .flat_map(|(route, r)| {
                r.by_status
                    .iter()
                    .map(|(s, n)| (route.clone(), *s, *n, Arc::clone(&r.duration)))
            })
            .collect()
    }
}

/// An error answer: the status and a message that says what to change.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            QueryError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            QueryError::Db(e) => {
                tracing::warn!(error = format!("{e:#}"), "history query failed");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the database cannot answer: {e:#}"),
                )
            }
        }
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/stats", get(stats))
        .route("/api/devices", get(devices))
        .route("/api/devices/{name}/latest", get(device_latest))
        .route("/api/readings", get(readings))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Binds `addr` and serves until `stop` turns true. Returns the bound address
/// (port 0 picks a free one) and the server task.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for the HTTP API: {e}; choose another address with --http (REGPOLL_HTTP), or `off`"
        )
    })?;
    let bound = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    Ok((bound, task))
}

async fn track(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .0
        .http
        .record(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

async fn not_found(req: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; see /health, /ready, /metrics, /api/devices, /api/devices/{{name}}/latest, /api/readings",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<ApiState>) -> Response {
    let s = &state.0;
    let db = async {
        let ping = async {
            match &s.db {
                Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            }
        };
        match tokio::time::timeout(READY_TIMEOUT, ping).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("database: {e}")),
            Err(_) => Some(format!(
                "database: no answer within {}",
                format_duration(READY_TIMEOUT)
            )),
        }
    };
    let redis = async {
        let mut con = s.redis.clone()?;
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut con);
        match tokio::time::timeout(READY_TIMEOUT, ping).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("redis: {e}")),
            Err(_) => Some(format!(
                "redis: no answer within {}",
                format_duration(READY_TIMEOUT)
            )),
        }
    };
    let (db, redis) = tokio::join!(db, redis);
    let mut reasons: Vec<String> = db.into_iter().chain(redis).collect();
    if !*s.scheduling.borrow() {
        reasons.push("scheduler: not running (shutting down)".to_string());
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": reasons })),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state),
    )
        .into_response()
}

/// Totals since start and fine-grained distributions (see
/// `telemetry::Distribution`): what `/metrics` shows, in a form from which
/// exact-enough quantiles of any time window can be computed by subtracting
/// two answers (`regpoll bench` does).
async fn stats(State(state): State<ApiState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &state.0;
    let c = &s.counters;
    let h = &s.history_stats;
    let r = &s.redis_stats;
    let (mut requests, mut errors) = (0, 0);
    for (_, e) in c.endpoints.snapshot() {
        requests += e.requests.load(Relaxed);
        errors += crate::modbus::stats::ErrorKind::ALL
            .iter()
            .map(|k| e.errors(*k))
            .sum::<u64>();
    }
    let devices = s.devices.borrow().len();
    let readings: Map<String, serde_json::Value> = crate::reading::Quality::ALL
        .iter()
        .map(|q| (q.as_str().to_string(), json!(c.readings(*q))))
        .collect();
    Json(json!({
        "at": rfc3339(Utc::now()),
        "devices": devices,
        "polls": c.polls.load(Relaxed),
        "overruns": c.overruns.load(Relaxed),
        "readings": readings,
        "modbus_requests": requests,
        "modbus_errors": errors,
        "history": {
            "rows_written": h.rows_written.load(Relaxed),
            "batches": h.batches.load(Relaxed),
            "failures": h.failures.load(Relaxed),
            "rows_lost": h.rows_lost.load(Relaxed),
            "rows_spooled": h.rows_spooled.load(Relaxed),
            "queue_depth": s.history_depth.get(),
        },
        "redis": {
            "polls_written": r.polls_written.load(Relaxed),
            "failures": r.failures.load(Relaxed),
            "coalesced": s.coalesced(),
        },
        "distributions": {
            "lateness": c.lateness.snapshot().to_json(),
            "history_write": h.write_latency.snapshot().to_json(),
            "redis_visible": r.visible_distribution.snapshot().to_json(),
        },
    }))
}

fn opt_ts(ts: Option<chrono::DateTime<Utc>>) -> serde_json::Value {
    ts.map_or(serde_json::Value::Null, |t| json!(rfc3339(t)))
}

/// The state of one polled device: "up", "down", or "pending" before its
/// first poll.
fn device_json(device: &Device, latest: &LatestMemory) -> serde_json::Value {
    let state = latest.device(&device.name).map(|d| d.state);
    json!({
        "name": device.name,
        "host": device.host,
        "port": device.port,
        "unit_id": device.unit_id.0,
        "schedule": device.schedule.describe(),
        "registers": device.registers.len(),
        "tags": device.tags,
        "state": match &state {
            None => "pending",
            Some(s) if s.up => "up",
            Some(_) => "down",
        },
        "last_poll": opt_ts(state.as_ref().map(|s| s.last_poll)),
        "last_success": opt_ts(state.as_ref().and_then(|s| s.last_success)),
        "last_error": state.as_ref().and_then(|s| s.error.clone()),
        "latency_ms": state.as_ref().map(|s| s.latency_ms),
        "polls": state.as_ref().map_or(0, |s| s.polls),
    })
}

async fn devices(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let s = &state.0;
    let devices: Vec<serde_json::Value> = s
        .devices
        .borrow()
        .iter()
        .map(|d| device_json(d, &s.latest))
        .collect();
    Json(json!({ "devices": devices }))
}

async fn device_latest(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = &state.0;
    let device = s
        .devices
        .borrow()
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no device named `{name}` is being polled; GET /api/devices lists them"),
            )
        })?;
    let mut body = device_json(&device, &s.latest);
    let values: Map<String, serde_json::Value> = s
        .latest
        .device(&name)
        .map(|d| {
            d.values
                .iter()
                .map(|(reg, v)| (reg.clone(), v.to_json()))
                .collect()
        })
        .unwrap_or_default();
    body["device"] = json!(name);
    body["values"] = serde_json::Value::Object(values);
    Ok(Json(body))
}

const READINGS_PARAMS: &[&str] = &["device", "register", "from", "to", "bucket", "limit"];

async fn readings(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !READINGS_PARAMS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{unknown}`; known: {}",
            READINGS_PARAMS.join(", ")
        )));
    }
    let device = params
        .get("device")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::bad_request("`device` is required, e.g. ?device=boiler-1"))?;
    let now = Utc::now();
    let instant = |key: &str, default: &str| {
        let text = params.get(key).map_or(default, String::as_str);
        query::parse_instant(text, now).map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
    };
    let from = instant("from", "now-1h")?;
    let to = instant("to", "now")?;
    let bucket = params
        .get("bucket")
        .map(|b| parse_duration(b).map_err(|e| ApiError::bad_request(format!("bucket: {e}"))))
        .transpose()?;
    let limit = match params.get("limit") {
        None => query::DEFAULT_LIMIT,
        Some(l) => l.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "limit: `{l}` is not a number between 1 and {}",
                query::MAX_LIMIT
            ))
        })?,
    };
    let q = RangeQuery {
        device: device.clone(),
        register: params.get("register").filter(|r| !r.is_empty()).cloned(),
        from,
        to,
        bucket,
        limit,
    };
    let rows = query::range(&state.0.db, &q).await?;
    Ok(Json(json!({
        "device": q.device,
        "register": q.register,
        "from": rfc3339(q.from),
        "to": rfc3339(q.to),
        "bucket": q.bucket.map(format_duration),
        "rows": rows,
    })))
}
