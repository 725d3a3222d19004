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
use serde_json::{Map, json};
use tokio::sync::watch;

use crate::db::Db;
use crate::history::query::{self, QueryError, RangeQuery};
use crate::latest::memory::LatestMemory;
use crate::latest::redis::connection::Target;
use crate::reading::rfc3339;
use crate::registry::{Device, format_duration, parse_duration};
use crate::stats::Sources;
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
    pub stats: Sources,
    /// Where `/ready` checks Redis, when it is configured.
    pub redis: Option<Target>,
    /// True while the scheduler runs; false once shutdown begins.
    pub scheduling: watch::Receiver<bool>,
    pub http: HttpStats,
    pub started_at: f64,
}

impl ApiState {
    pub fn new(
        db: Db,
        stats: Sources,
        redis: Option<Target>,
        scheduling: watch::Receiver<bool>,
    ) -> Self {
        ApiState(Arc::new(Shared {
            db,
            stats,
            redis,
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
        match tokio::time::timeout(READY_TIMEOUT, s.db.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("database: {e}")),
            Err(_) => Some(format!(
                "database: no answer within {}",
                format_duration(READY_TIMEOUT)
            )),
        }
    };
    let redis = async {
        let target = s.redis.as_ref()?;
        target
            .ping(READY_TIMEOUT)
            .await
            .err()
            .map(|e| format!("redis: {e:#}"))
    };
    let (db, redis) = tokio::join!(db, redis);
    let mut reasons: Vec<String> = db.into_iter().chain(redis).collect();
    if !*s.scheduling.borrow() {
        reasons.push("scheduler: not running (shutting down)".to_string());
    }
    reasons.extend(s.stats.history_snapshot().problems(Utc::now()));
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
/// `stats::ServiceStats::to_json`): the machine-readable form of what
/// `/metrics` shows.
async fn stats(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(state.0.stats.snapshot().to_json())
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
        .stats
        .devices
        .borrow()
        .iter()
        .map(|d| device_json(d, &s.stats.latest))
        .collect();
    Json(json!({ "devices": devices }))
}

async fn device_latest(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = &state.0;
    let device = s
        .stats
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
    let mut body = device_json(&device, &s.stats.latest);
    let values: Map<String, serde_json::Value> = s
        .stats
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
