//! The token check in front of the router, without a network.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt as _;

use super::*;

const TOKEN: &str = "a-token-of-sixteen-or-more";

fn auth(metrics_open: bool) -> Arc<Auth> {
    Arc::new(
        Auth::load(&Access {
            tokens: TokenSource {
                file: None,
                env: Some(format!("ops {TOKEN}; acme-ui another-token-for-acme acme")),
            },
            metrics_open,
            ..Access::default()
        })
        .unwrap(),
    )
}

/// A router that answers every path with the caller's name, behind the check.
fn app(auth: Arc<Auth>) -> axum::Router {
    axum::Router::new()
        .fallback(|req: axum::extract::Request| async move {
            let c = req.extensions().get::<Caller>().cloned();
            format!(
                "{}/{}",
                c.as_ref().map_or("-", |c| &*c.name),
                c.as_ref().and_then(|c| c.tenant.as_deref()).unwrap_or("-")
            )
        })
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
}

async fn get(
    app: &axum::Router,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::get(path);
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_accepted_token_puts_its_caller_into_the_request() {
    let app = app(auth(false));
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(get(&app, "/api/devices", Some(&bearer)).await.2, "ops/-");
    let lower = "bearer another-token-for-acme";
    assert_eq!(
        get(&app, "/api/devices", Some(lower)).await.2,
        "acme-ui/acme"
    );
}

#[tokio::test]
async fn refusals_are_json_401s_that_say_bearer_and_why() {
    let app = app(auth(false));
    for (header, reason) in [
        (None, "needs a token"),
        (Some("Basic b3BzOnNlY3JldA=="), "not `Bearer <token>`"),
        (Some("Bearer"), "not `Bearer <token>`"),
        (Some("Bearer  "), "not `Bearer <token>`"),
        (Some("Bearer a b"), "not `Bearer <token>`"),
        (
            Some("Bearer wrong-token-xxxxxxxxxx"),
            "not one of this regpoll's tokens",
        ),
    ] {
        let (status, headers, body) = get(&app, "/api/fleet", header).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"].as_str().unwrap().contains(reason), "{body}");
        assert!(!body.contains("wrong-token"), "{body}");
    }
}

#[tokio::test]
async fn health_and_the_page_answer_without_a_token_and_metrics_when_opened() {
    let closed = app(auth(false));
    assert_eq!(get(&closed, "/health", None).await.2, "-/-");
    assert_eq!(get(&closed, "/", None).await.2, "-/-");
    assert_eq!(
        get(&closed, "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&closed, "/nowhere", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let open = app(auth(true));
    assert_eq!(get(&open, "/metrics", None).await.0, StatusCode::OK);
    assert_eq!(get(&open, "/ready", None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_tokens_every_request_passes_without_a_caller() {
    let app = app(Arc::new(Auth::load(&Access::default()).unwrap()));
    assert_eq!(get(&app, "/api/devices", None).await.2, "-/-");
    assert_eq!(get(&app, "/metrics", Some("Bearer junk")).await.2, "-/-");
}

#[tokio::test]
async fn failures_are_counted_by_reason_then_limited_to_429_with_retry_after() {
    let auth = auth(false);
    let app = app(Arc::clone(&auth));
    for _ in 0..limiter::FAILURES_MAX - 1 {
        get(&app, "/api/fleet", Some("Bearer not-a-token-at-all")).await;
    }
    get(&app, "/api/fleet", None).await;
    let bearer = format!("Bearer {TOKEN}");
    let (status, headers, body) = get(&app, "/api/fleet", Some(&bearer)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let counts: BTreeMap<_, _> = auth.failures().collect();
    assert_eq!(counts["unknown"], u64::from(limiter::FAILURES_MAX) - 1);
    assert_eq!(counts["missing"], 1);
    assert_eq!(counts["rate_limited"], 1);
    assert_eq!(get(&app, "/health", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_replaces_the_tokens_and_a_bad_one_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("ops {TOKEN}\n")).unwrap();
    let auth = Arc::new(
        Auth::load(&Access {
            tokens: TokenSource {
                file: Some(path.clone()),
                env: None,
            },
            ..Access::default()
        })
        .unwrap(),
    );
    let app = app(Arc::clone(&auth));
    let old = format!("Bearer {TOKEN}");
    assert_eq!(get(&app, "/x", Some(&old)).await.0, StatusCode::OK);
    std::fs::write(&path, "ops2 the-second-token-xxxxx\n").unwrap();
    assert_eq!(auth.reload().unwrap(), 1);
    assert_eq!(
        get(&app, "/x", Some("Bearer the-second-token-xxxxx"))
            .await
            .2,
        "ops2/-"
    );
    assert_eq!(
        get(&app, "/x", Some(&old)).await.0,
        StatusCode::UNAUTHORIZED
    );
    std::fs::write(&path, "").unwrap();
    assert!(auth.reload().is_err(), "an empty file would open the API");
    assert_eq!(
        get(&app, "/x", Some("Bearer the-second-token-xxxxx"))
            .await
            .0,
        StatusCode::OK
    );
}

#[test]
fn only_loopback_is_served_without_tokens_unless_insecure_is_said() {
    let plain = Access::default();
    for ok in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:1"] {
        assert!(check_exposure(ok.parse().unwrap(), &plain).is_ok(), "{ok}");
    }
    for exposed in ["0.0.0.0:8080", "[::]:8080", "192.168.1.20:8080"] {
        let e = check_exposure(exposed.parse().unwrap(), &plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("anyone on the network could read"), "{e}");
        assert!(
            e.contains("--http-token-file or REGPOLL_HTTP_TOKENS"),
            "{e}"
        );
        assert!(e.contains("--http-insecure"), "{e}");
        let insecure = Access {
            insecure: true,
            ..Access::default()
        };
        assert!(check_exposure(exposed.parse().unwrap(), &insecure).is_ok());
        let tokens = Access {
            tokens: TokenSource {
                file: None,
                env: Some(format!("a {TOKEN}")),
            },
            ..Access::default()
        };
        assert!(check_exposure(exposed.parse().unwrap(), &tokens).is_ok());
    }
}

#[test]
fn only_bearer_with_one_visible_token_is_read_from_the_header() {
    let h = |b: &[u8]| HeaderValue::from_bytes(b).unwrap();
    assert_eq!(bearer(&h(b"Bearer abc")), Some("abc"));
    assert_eq!(bearer(&h(b"bEaReR   abc  ")), Some("abc"));
    for bad in [
        &b"Bearer \xff\xfe"[..],
        b"Bearerabc",
        b"Basic abc",
        b"Bearer a b",
        b"Bearer ",
        b"",
    ] {
        assert_eq!(bearer(&h(bad)), None, "{}", String::from_utf8_lossy(bad));
    }
    let long = format!("Bearer {}", "x".repeat(1 << 20));
    assert!(
        auth(false)
            .snapshot()
            .check(bearer(&h(long.as_bytes())).unwrap())
            .is_none()
    );
}
