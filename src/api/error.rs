//! Every error the API answers is JSON, `{"error": "…"}`, with the status
//! that fits: 400 for a bad parameter, 404 for an unknown device, register
//! or route, 405 for a method other than GET, 503 (with `Retry-After`) when
//! the API is at its limits or the database cannot answer. Answers that axum
//! or hyper produce on their own (an extractor's rejection, a body limit)
//! are rewritten to the same shape by [`json_errors`], so a client never has
//! to parse text.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::history::query::QueryError;

/// Seconds a refused client is asked to wait before retrying.
const RETRY_AFTER_S: u64 = 1;

/// An error answer: the status and a message that says what to change.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }

    /// 503 with `Retry-After`: the request was fine, the service is busy.
    pub(crate) fn busy(message: impl Into<String>) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        response
    }
}

impl ApiError {
    /// The answer to a failed history query; database failures are logged
    /// through `warn` (at most once a minute, however many requests fail).
    pub(crate) fn from_query(e: QueryError, warn: &Throttle) -> Self {
        match e {
            QueryError::NotFound(m) => ApiError::not_found(m),
            QueryError::Invalid(m) | QueryError::TooMany { message: m, .. } => {
                ApiError::bad_request(m)
            }
            QueryError::Db(e) => {
                let pool_busy = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<sqlx::Error>(),
                        Some(sqlx::Error::PoolTimedOut)
                    )
                });
                if pool_busy {
                    // Load, not a fault: the 503 says it, the log does not.
                    return ApiError::busy(
                        "every connection of the API's database pool is busy (--api-db-connections) and none freed within --api-wait; retry shortly",
                    );
                }
                warn.warn(|suppressed| {
                    tracing::warn!(
                        error = crate::db::error_text(e.as_ref()),
                        suppressed,
                        "history query failed; HTTP clients get 503"
                    );
                });
                ApiError::busy(format!(
                    "the database cannot answer: {}",
                    crate::db::error_text(e.as_ref())
                ))
            }
        }
    }
}

/// Logs at most once per `every`, counting what it left out in between, so
/// a failure that every request meets is one line a minute, not a flood.
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with the number of calls left out since the last log, or
    /// counts this one as left out.
    pub(crate) fn warn(&self, log: impl FnOnce(u64)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < self.every) {
            *suppressed += 1;
            return;
        }
        let left_out = std::mem::take(suppressed);
        *last = Some(Instant::now());
        drop(state);
        log(left_out);
    }
}

/// Longest body of a non-JSON error answer that is kept as its message.
const TEXT_ERROR_MAX: usize = 4096;

/// Middleware: an error answer (4xx, 5xx) that is not JSON becomes
/// `{"error": "<its text, or the status's reason>"}` with the same status.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, TEXT_ERROR_MAX)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty());
    let message = text.unwrap_or_else(|| {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    });
    let mut fixed = ApiError(status, message).into_response();
    // Keep what the answer said besides its body (`Allow`, `Retry-After`).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_once_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(60));
        let mut logged = Vec::new();
        for _ in 0..5 {
            t.warn(|n| logged.push(n));
        }
        assert_eq!(logged, [0], "one line for five failures");
        let t = Throttle::new(Duration::ZERO);
        let mut logged = Vec::new();
        t.warn(|n| logged.push(n));
        t.warn(|n| logged.push(n));
        assert_eq!(logged, [0, 0], "a zero period logs every time");
    }

    #[test]
    fn busy_answers_say_when_to_retry() {
        let r = ApiError::busy("full").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = ApiError::bad_request("no").into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
