//! Who may ask: with tokens configured, every request but `/health` (and
//! `/metrics` when it is opened on purpose, and the status page's HTML,
//! which holds no data) must carry `Authorization: Bearer <token>`. An
//! accepted request carries a [`Caller`] in its extensions; a refused one
//! is a JSON 401 with `WWW-Authenticate: Bearer`, counted by reason, and
//! counted against its client address (see `limiter`).
//!
//! The client address is the connection's peer (`ConnectInfo`):
//! `X-Forwarded-For` is not trusted, since any client can write it.

pub mod limiter;
pub mod tokens;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use self::limiter::{Limiter, Note, Verdict};
pub use self::tokens::{TokenError, TokenSource, Tokens};
use super::ApiError;
use super::caller::Caller;

/// How the API decides who may ask, as the command line set it.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Where the tokens come from; none: the API asks for no token.
    pub tokens: TokenSource,
    /// `/metrics` without a token, for scrapers inside the trust boundary.
    pub metrics_open: bool,
    /// Serve a non-loopback address without tokens, on purpose.
    pub insecure: bool,
    /// PEM files of the API's TLS certificate chain and key.
    pub tls: Option<super::tls::TlsFiles>,
}

/// Why a request was refused, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// A token regpoll does not know.
    Unknown,
    /// Too many failures from the client's address.
    RateLimited,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Unknown,
        Reason::RateLimited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Unknown => "unknown",
            Reason::RateLimited => "rate_limited",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reason::Missing => {
                "this endpoint needs a token: send `Authorization: Bearer <token>` (only /health answers without one)"
            }
            Reason::Malformed => {
                "the Authorization header is not `Bearer <token>`; send `Authorization: Bearer <token>`"
            }
            Reason::Unknown => {
                "the token is not one of this regpoll's tokens; check it, or ask the operator for one (`regpoll token new <name>`)"
            }
            Reason::RateLimited => {
                "too many failed authentications from this address; wait for Retry-After seconds"
            }
        }
    }
}

/// The token check's state, shared by every request.
pub struct Auth {
    source: TokenSource,
    /// Replaced whole on a reload (SIGHUP); requests read a snapshot.
    tokens: RwLock<Arc<Tokens>>,
    metrics_open: bool,
    limiter: Limiter,
    failures: [AtomicU64; 4],
    by_token: Mutex<BTreeMap<Arc<str>, u64>>,
}

impl Auth {
    /// A check that lets every request through: no tokens.
    pub fn none() -> Self {
        Self::with_tokens(TokenSource::default(), Tokens::default(), false)
    }

    fn with_tokens(source: TokenSource, tokens: Tokens, metrics_open: bool) -> Self {
        Auth {
            source,
            tokens: RwLock::new(Arc::new(tokens)),
            metrics_open,
            limiter: Limiter::default(),
            failures: Default::default(),
            by_token: Mutex::default(),
        }
    }

    /// The check for `source`'s tokens, read and parsed now.
    pub fn load(access: &Access) -> Result<Self, TokenError> {
        let tokens = if access.tokens.is_set() {
            access.tokens.load()?
        } else {
            Tokens::default()
        };
        if let Some(warning) = access
            .tokens
            .file
            .as_deref()
            .and_then(tokens::loose_permissions)
        {
            tracing::warn!("{warning}");
        }
        Ok(Self::with_tokens(
            access.tokens.clone(),
            tokens,
            access.metrics_open,
        ))
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        !self.snapshot().is_empty()
    }

    fn snapshot(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the token sources again; on an error the tokens in use stay.
    /// Without sources at start there is nothing to reload: turning tokens
    /// on needs a restart, which also runs the exposure check.
    pub fn reload(&self) -> Result<usize, TokenError> {
        if !self.source.is_set() {
            return Ok(0);
        }
        let fresh = self.source.load()?;
        let n = fresh.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(n)
    }

    /// Failures by reason, for `/metrics`.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reason::ALL
            .iter()
            .zip(&self.failures)
            .map(|(r, n)| (r.label(), n.load(Ordering::Relaxed)))
    }

    /// Requests let through, by token name, for `/metrics`.
    pub fn requests_by_token(&self) -> Vec<(Arc<str>, u64)> {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (Arc::clone(k), *v)).collect()
    }

    /// The caller of a request with `authorization` from `peer`, or why not.
    fn admit(&self, authorization: Option<&HeaderValue>, peer: IpAddr) -> Result<Caller, Refusal> {
        let now = Instant::now();
        if let Verdict::Limited(left) = self.limiter.verdict(peer, now) {
            return Err(self.refuse(Reason::RateLimited, Some(left.as_secs().max(1))));
        }
        let outcome = match authorization {
            None => Err(Reason::Missing),
            Some(value) => match bearer(value) {
                None => Err(Reason::Malformed),
                Some(token) => self.snapshot().check(token).cloned().ok_or(Reason::Unknown),
            },
        };
        match outcome {
            Ok(caller) => {
                let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
                *map.entry(Arc::clone(&caller.name)).or_default() += 1;
                Ok(caller)
            }
            Err(reason) => {
                self.log_failure(self.limiter.fail(peer, now), peer, reason);
                Err(self.refuse(reason, None))
            }
        }
    }

    fn refuse(&self, reason: Reason, retry_after: Option<u64>) -> Refusal {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
        Refusal {
            reason,
            retry_after,
        }
    }

    /// At most two lines per address and window: its first failure, and
    /// the one that gets it refused. Never the token.
    fn log_failure(&self, note: Note, peer: IpAddr, reason: Reason) {
        match note {
            Note::First => tracing::warn!(
                client = %peer,
                reason = reason.label(),
                failures = 1,
                "HTTP authentication failed; further failures from this address within {}s are counted, not logged, up to {}",
                limiter::WINDOW.as_secs(),
                limiter::FAILURES_MAX
            ),
            Note::NowLimited(n) => tracing::warn!(
                client = %peer,
                reason = reason.label(),
                failures = n,
                "HTTP authentication failed {n} times from this address; refusing it (429) until {}s after its first failure",
                limiter::WINDOW.as_secs()
            ),
            Note::Quiet => {}
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

struct Refusal {
    reason: Reason,
    retry_after: Option<u64>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self.reason {
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::UNAUTHORIZED,
        };
        let mut response = ApiError(status, self.reason.message().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// Paths that answer without a token: `/health` (orchestrators), the
/// status page's HTML (static, no data: it asks for a token itself), and
/// `/metrics` when opened.
fn open_path(path: &str, metrics_open: bool) -> bool {
    path == "/health" || path == "/" || (metrics_open && path == "/metrics")
}

/// Middleware: the token check.
pub(crate) async fn require_token(
    State(auth): State<Arc<Auth>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !auth.enabled() || open_path(req.uri().path(), auth.metrics_open) {
        return next.run(req).await;
    }
    // Absent only when the router is served without connect info (tests
    // that call it directly); they share one address.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    match auth.admit(req.headers().get(header::AUTHORIZATION), peer) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Refuses to serve a non-loopback address without tokens unless
/// `--http-insecure` says so: the API shows every device's values.
pub fn check_exposure(addr: SocketAddr, access: &Access) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || access.tokens.is_set() || access.insecure {
        return Ok(());
    }
    anyhow::bail!(
        "the HTTP API would listen on {addr}, which is not a loopback address, without tokens: anyone on the network could read every device's values and history; configure tokens with --http-token-file or REGPOLL_HTTP_TOKENS, or say --http-insecure (REGPOLL_HTTP_INSECURE=true) to serve without"
    )
}

/// Reloads the tokens on every SIGHUP until the API stops (installed
/// whenever the API runs, so that a `systemctl reload` never ends regpoll,
/// whose default action on SIGHUP would be to exit).
pub(crate) async fn reload_on_hangup(auth: Arc<Auth>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP; a change of the API's tokens needs a restart"
            );
            return;
        };
        while hangup.recv().await.is_some() {
            match auth.reload() {
                Ok(_) if !auth.source.is_set() => tracing::info!(
                    "SIGHUP: no token file or REGPOLL_HTTP_TOKENS to reload (turning tokens on needs a restart)"
                ),
                Ok(n) => tracing::info!(tokens = n, "HTTP API tokens reloaded (SIGHUP)"),
                Err(e) => tracing::error!(
                    error = %e,
                    "HTTP API tokens not reloaded (SIGHUP); the previous tokens stay in use"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    drop(auth);
}

#[cfg(test)]
mod tests;
