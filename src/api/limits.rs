//! What one HTTP client, or a thousand, can make regpoll hold: a bounded
//! number of requests at once, a bounded wait for a turn, a bounded time per
//! answer, and (in `readings`) a bounded size per answer.
//!
//! The limit is a semaphore rather than tower's `ConcurrencyLimit`: that one
//! lets requests queue without bound (each holding a socket and a task), and
//! with `LoadShed` refuses at once, where a short wait smooths bursts of
//! cheap requests. And a slot is held until the answer's last bytes have
//! been handed to the socket, not only until the handler returns: a slow
//! reader holds its answer in memory, so it must hold a slot too, or 150 slow
//! readers hold 150 answers (650 MB measured before this).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiState;
use super::error::ApiError;
use crate::registry::format_duration;
use crate::settings;

/// The API's limits (see `settings::API_*` for what each bounds and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    /// Requests served at once (all but `/health`).
    pub concurrency: usize,
    /// Longest wait for a slot, then for a connection of the API's pool.
    pub wait: Duration,
    /// Longest a request may take to produce its answer.
    pub timeout: Duration,
    /// Connections of the API's own database pool.
    pub db_connections: u32,
    /// Largest `/api/readings` answer, in bytes.
    pub max_response: usize,
    /// Most devices one bulk request may name (`/api/latest`, `/api/buckets`).
    pub max_devices: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            concurrency: settings::API_CONCURRENCY.default_count(),
            wait: settings::API_WAIT.default_duration(),
            timeout: settings::API_TIMEOUT.default_duration(),
            db_connections: u32::try_from(settings::API_DB_CONNECTIONS.default_count())
                .expect("the default pool size fits u32"),
            max_response: parse_bytes(settings::API_MAX_RESPONSE.default_text())
                .expect("the default response cap parses"),
            max_devices: settings::API_MAX_DEVICES.default_count(),
        }
    }
}

/// Parses a size as every size setting does ([`settings::parse_bytes`]),
/// for a byte count in memory.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    settings::parse_bytes(text)?
        .try_into()
        .map_err(|_| format!("`{text}` is more than this machine can address"))
}

/// Writes a size the way `parse_bytes` reads it, in the largest unit that
/// divides it.
pub fn format_bytes(n: usize) -> String {
    for (unit, scale) in [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= scale && n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n} bytes")
}

/// The slots of `--api-concurrency`.
pub(crate) fn slots(limits: &ApiLimits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.concurrency.max(1)))
}

/// Middleware: wait up to `wait` for a slot (503 with Retry-After when none
/// frees), run the request for at most `timeout` (503 past it), and keep the
/// slot until the answer has been sent.
pub(crate) async fn limit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let s = &state.0;
    let permit = match tokio::time::timeout(s.limits.wait, Arc::clone(&s.slots).acquire_owned())
        .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return ApiError::busy(format!(
                "too many requests at once: all {} slots are busy (--api-concurrency) and none freed within {} (--api-wait); retry shortly",
                s.limits.concurrency,
                format_duration(s.limits.wait)
            ))
            .into_response();
        }
    };
    match tokio::time::timeout(s.limits.timeout, next.run(req)).await {
        Ok(response) => hold_until_sent(response, permit).await,
        Err(_) => ApiError::busy(format!(
            "the answer took longer than {} (--api-timeout); ask for less (narrow from/to, pick one register, use a bucket) or retry later",
            format_duration(s.limits.timeout)
        ))
        .into_response(),
    }
}

/// Most bytes handed to the connection at a time: the connection buffers a
/// few hundred KiB before it waits for the socket, so the last piece, and
/// with it the slot, is taken only once the client has read nearly all.
const PIECE: usize = 64 * 1024;

/// The response with a body that holds `permit` until its last piece has
/// been taken. Every answer of this API is built whole in memory, so
/// collecting it copies nothing.
async fn hold_until_sent(response: Response, permit: OwnedSemaphorePermit) -> Response {
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => Response::from_parts(
            parts,
            Body::new(Held {
                rest: bytes,
                permit: Some(permit),
            }),
        ),
        Err(e) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot build the answer: {e}"),
        )
        .into_response(),
    }
}

/// A whole body handed out in pieces of `PIECE` bytes, holding a slot.
struct Held {
    rest: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            self.permit = None;
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(PIECE);
        let piece = self.rest.split_to(n);
        if self.rest.is_empty() {
            self.permit = None;
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_bytes_and_binary_units() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_bytes("2MiB"), Ok(2 << 20));
        assert_eq!(parse_bytes("2m"), Ok(2 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        for bad in [
            "",
            "0",
            "MiB",
            "2PiB",
            "-1",
            "1.5MiB",
            "99999999999999999999",
        ] {
            assert!(parse_bytes(bad).is_err(), "`{bad}` parsed");
        }
        assert_eq!(format_bytes(2 << 20), "2MiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
        assert_eq!(parse_bytes(&format_bytes(512 * 1024)), Ok(512 * 1024));
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_last_piece_is_taken() {
        let slots = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
        let mut body = Held {
            rest: Bytes::from(vec![7u8; PIECE * 2 + 1]),
            permit: Some(permit),
        };
        let pieces = collect_pieces(&mut body, 2).await;
        assert_eq!(pieces, [PIECE, PIECE]);
        assert_eq!(slots.available_permits(), 0, "one piece is still to send");
        let pieces = collect_pieces(&mut body, 1).await;
        assert_eq!(pieces, [1]);
        assert_eq!(slots.available_permits(), 1, "all sent: the slot is free");
        assert!(http_body::Body::is_end_stream(&body));
    }

    /// Takes `n` pieces of the body, as the connection would.
    async fn collect_pieces(body: &mut Held, n: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..n {
            let frame =
                std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut *body), cx))
                    .await
                    .expect("a piece")
                    .unwrap();
            sizes.push(frame.into_data().unwrap().len());
        }
        sizes
    }
}
