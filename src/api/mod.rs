//! The HTTP API (axum): health and readiness for orchestrators, Prometheus
//! metrics, the devices and their latest values (from memory, so it works
//! with or without Redis), history ranges (from the database), the cluster
//! this instance belongs to (`run --cluster`), and the status page at `/`.
//!
//! Every error is JSON, `{"error": "…"}` (see `error`). Everything a client
//! can send is bounded (see `limits`): requests at once, the wait for a turn,
//! the time per answer, the bytes per answer, and the database connections
//! the API may use, which are its own so that API load never delays history.

pub mod auth;
pub mod caller;
mod cluster;
mod database;
mod devices;
mod error;
mod fleet;
pub mod limits;
pub mod metrics;
mod params;
mod readings;
#[cfg(test)]
mod tenant_tests;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

pub use self::error::ApiError;
use self::error::Throttle;
pub use self::limits::ApiLimits;
use crate::db::{Connectivity, Db};
use crate::latest::redis::connection::Target;
use crate::reading::rfc3339;
use crate::registry::format_duration;
use crate::stats::Sources;
use crate::telemetry::Histogram;

/// Bound on each dependency check of `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A database failure that every history query meets is logged once per this.
const DB_WARN_EVERY: Duration = Duration::from_secs(60);

const STATUS_PAGE: &str = include_str!("status.html");

/// What the handlers read: shared handles into the running service. It holds
/// no queue sender, so it never keeps a writer alive at shutdown.
#[derive(Clone)]
pub struct ApiState(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    /// The service's database, for `/ready`.
    pub db: Db,
    /// The API's own small pool on the same database, for history queries.
    pub query_db: Db,
    pub limits: ApiLimits,
    /// The `limits.concurrency` slots.
    pub slots: Arc<Semaphore>,
    /// Database failures of history queries: logged once a minute.
    pub db_warn: Throttle,
    pub stats: Sources,
    /// Where `/ready` checks Redis, when it is configured.
    pub redis: Option<Target>,
    /// True while the scheduler runs; false once shutdown begins.
    pub scheduling: watch::Receiver<bool>,
    pub http: HttpStats,
    pub started_at: f64,
    /// Whether the database has answered since a start without it.
    pub connectivity: Connectivity,
    /// `/ready`'s database check in flight, if one outlived its wait.
    pub ready_ping: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), sqlx::Error>>>>,
    /// The token check (no tokens: every request is let through).
    pub auth: Arc<auth::Auth>,
}

impl ApiState {
    /// `query_db` is the API's own pool (see `Db::api_pool`); `db` the
    /// service's, which only `/ready` uses.
    pub fn new(
        db: Db,
        query_db: Db,
        limits: ApiLimits,
        stats: Sources,
        redis: Option<Target>,
        scheduling: watch::Receiver<bool>,
        connectivity: Connectivity,
    ) -> Self {
        ApiState(Arc::new(Shared {
            db,
            query_db,
            slots: limits::slots(&limits),
            limits,
            db_warn: Throttle::new(DB_WARN_EVERY),
            stats,
            redis,
            scheduling,
            http: HttpStats::default(),
            started_at: Utc::now().timestamp_micros() as f64 / 1e6,
            connectivity,
            ready_ping: Default::default(),
            auth: Arc::new(auth::Auth::none()),
        }))
    }

    /// The same state with `auth` as its token check (before it is shared).
    pub fn with_auth(mut self, auth: Arc<auth::Auth>) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("the token check is set before the state is shared")
            .auth = auth;
        self
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

/// The API's routes. Layers, outermost first: every error answer made JSON,
/// requests counted by route, the token check (when tokens are configured;
/// see `auth` for what answers without one), then (every route but
/// `/health`, which must answer however busy the rest is) the concurrency
/// slots and the timeout.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route(
            "/ready",
            get(ready).route_layer(middleware::from_fn(fleet_wide)),
        )
        .route(
            "/metrics",
            get(metrics_text).route_layer(middleware::from_fn(fleet_wide)),
        )
        .route(
            "/api/stats",
            get(stats).route_layer(middleware::from_fn(fleet_wide)),
        )
        .route("/api/devices", get(devices::devices))
        .route("/api/devices/{name}/latest", get(devices::device_latest))
        .route("/api/readings", get(readings::readings))
        .route("/api/fleet", get(fleet::fleet))
        .route("/api/latest", get(fleet::latest))
        .route("/api/buckets", get(fleet::buckets))
        .route(
            "/api/cluster",
            get(cluster::cluster).route_layer(middleware::from_fn(fleet_wide)),
        )
        .route(
            "/api/database",
            get(database::database).route_layer(middleware::from_fn(fleet_wide)),
        )
        .layer(middleware::from_fn_with_state(state.clone(), limits::limit))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.0.auth),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// Binds `addr` and serves until `stop` turns true, over HTTPS when `tls`
/// is given. Returns the bound address (port 0 picks a free one) and a task
/// that ends when the server has.
///
/// The API runs on a runtime of its own, on one thread of its own: building
/// answers (decoding thousands of rows, writing JSON) is CPU work, and on the
/// service's runtime it held the workers that the pollers' timers need (a
/// burst of 1,000 requests made polls 1.4 s late). On its own thread the
/// operating system shares the CPU between the two, and polls stay on time.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot listen on {addr} for the HTTP API: {e}; choose another address with --http (REGPOLL_HTTP), or `off`"
        )
    };
    let listener = std::net::TcpListener::bind(addr).map_err(cannot)?;
    listener.set_nonblocking(true).map_err(cannot)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("regpoll-api")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the HTTP API's runtime: {e}"))?;
    let auth = Arc::clone(&state.0.auth);
    let app = router(state);
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("regpoll-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(auth::reload_on_hangup(auth));
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let served = async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    match tls {
                        Some(config) => {
                            let listener = tls::TlsListener::new(listener, config)?;
                            serve_on(listener, app, shutdown).await
                        }
                        None => serve_on(listener, app, shutdown).await,
                    }
                };
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "HTTP API stopped");
                }
            });
            let _ = done.send(());
        })
        .map_err(|e| anyhow::anyhow!("cannot start the HTTP API's thread: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = finished.await;
    });
    Ok((bound, task))
}

/// Serves `app` on `listener` with each request's client address
/// (`ConnectInfo<SocketAddr>`, which the token check's rate limit keys on).
/// `tap_io` is what gives any listener whose address is a `SocketAddr`
/// (the TLS one too) axum's `ConnectInfo` support; it does nothing else.
async fn serve_on<L>(
    listener: L,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt as _;
    axum::serve(
        listener.tap_io(|_| {}),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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

/// For the endpoints whose answers cover the whole fleet with no split by
/// device (counters, readiness, the database, the cluster): a caller
/// limited to one tenant's devices is answered as if the endpoint did not
/// exist, since the answer would tell of other tenants' devices.
async fn fleet_wide(scope: caller::Scope, req: Request, next: Next) -> Response {
    match scope.tenant {
        Some(_) => not_found(req).await.into_response(),
        None => next.run(req).await,
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} {}; see /health, /ready, /metrics, /api/devices, /api/devices/{{name}}/latest, /api/readings, /api/fleet, /api/latest, /api/buckets, /api/cluster, /api/database",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> Response {
    let mut response = ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} {}: this API only answers GET (and HEAD)",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    response
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `/ready`'s check of the service's database, on the pool the history
/// writer uses. The ping runs as a task of its own that is waited for at
/// most `READY_TIMEOUT` but never cancelled: a query dropped mid-flight on a
/// TLS connection loses its pooled connection for good (sqlx issue 4349),
/// and enough lost ones would leave the writer without connections. One
/// ping at a time: a check while an earlier one still waits waits for that
/// one instead of starting another.
async fn ping_database(s: &Shared) -> Option<String> {
    let mut in_flight = s.ready_ping.lock().await;
    let mut ping = match in_flight.take() {
        Some(ping) if !ping.is_finished() => ping,
        _ => {
            let db = s.db.clone();
            tokio::spawn(async move { db.ping().await })
        }
    };
    match tokio::time::timeout(READY_TIMEOUT, &mut ping).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(format!("database: {}", crate::db::error_text(&e))),
        Ok(Err(e)) => Some(format!("database: the check failed: {e}")),
        Err(_) => {
            *in_flight = Some(ping);
            Some(format!(
                "database: no answer within {}",
                format_duration(READY_TIMEOUT)
            ))
        }
    }
}

async fn ready(State(state): State<ApiState>) -> Response {
    let s = &state.0;
    let db = async {
        // After a start without the database, say since when and why, not
        // only that a ping timed out.
        if let Some(o) = s.connectivity.outage() {
            return Some(format!(
                "database: not connected since {} (retrying): {}",
                rfc3339(o.since),
                o.error
            ));
        }
        ping_database(s).await
    };
    let redis = async {
        let target = s.redis.as_ref()?;
        target
            .ping(READY_TIMEOUT)
            .await
            .err()
            .map(|e| format!("redis: {}", crate::db::error_text(e.as_ref())))
    };
    let (db, redis) = tokio::join!(db, redis);
    let mut reasons: Vec<String> = db.into_iter().chain(redis).collect();
    if !*s.scheduling.borrow() {
        reasons.push("scheduler: not running (shutting down)".to_string());
    }
    reasons.extend(s.stats.history_snapshot().problems(Utc::now()));
    let cluster = s.stats.cluster.as_deref().map(cluster::ready);
    if let Some((_, Some(problem))) = &cluster {
        reasons.push(problem.clone());
    }
    let warnings = ready_warnings(&s.stats);
    let (status, mut body) = if reasons.is_empty() {
        (StatusCode::OK, json!({ "ready": true }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reasons": reasons }),
        )
    };
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    if let Some((cluster, _)) = cluster {
        body["cluster"] = cluster;
    }
    (status, Json(body)).into_response()
}

/// What an operator should look at although the service is ready: rows
/// the database refused were kept aside, not lost, so they do not make it
/// unready.
fn ready_warnings(stats: &Sources) -> Vec<String> {
    let rejected = stats
        .history
        .rows_rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut warnings = Vec::new();
    if rejected > 0 {
        warnings.push(format!(
            "history: {rejected} rows rejected since start (see register_readings_rejected)"
        ));
    }
    warnings.extend(stats.jobs.warnings());
    warnings.extend(stats.storage.warnings());
    warnings.extend(crate::history::health::maintenance_warnings(
        &stats.maintenance().snapshot(),
    ));
    warnings.extend(stats.registry.warnings());
    warnings
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
    let mut body = state.0.stats.snapshot().to_json();
    body["http_requests"] = http_requests(&state.0.http);
    Json(body)
}

/// Requests answered since start, by route (all statuses): what a client
/// such as the status page costs the server, counted where it lands.
fn http_requests(http: &HttpStats) -> serde_json::Value {
    let mut by_route = serde_json::Map::new();
    for (route, _, n, _) in http.snapshot() {
        let total = by_route.entry(route).or_insert(json!(0));
        *total = json!(total.as_u64().unwrap_or(0) + n);
    }
    serde_json::Value::Object(by_route)
}
