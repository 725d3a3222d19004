//! The HTTP API's tokens, rate limit, exposure check and HTTPS, against
//! `regpoll run` (the binary), and the status page's token form in headless
//! Chromium.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use common::{Service, regpoll, text};

/// A plain token of the environment's form, long enough to be accepted.
const PLAIN: &str = "plain-token-for-the-tests-0001";

/// One device nobody answers for (port 1): its card shows, state down.
const DEVICES: &str = "devices:
  - name: pump-1
    host: 127.0.0.1
    port: 1
    unit_id: 1
    every: 1s
    timeout: 200ms
    registers:
      - name: speed
        kind: holding
        address: 0
        type: u16
";

/// Every route of the API but `/health` and the page's HTML, each with
/// parameters that make it answer 200 with a token.
const ROUTES: [&str; 11] = [
    "/ready",
    "/metrics",
    "/api/stats",
    "/api/devices",
    "/api/devices/pump-1/latest",
    "/api/readings?device=pump-1",
    "/api/fleet",
    "/api/latest?devices=pump-1",
    "/api/buckets?devices=pump-1",
    "/api/cluster",
    "/api/database",
];

/// A `regpoll run` on a free loopback port (unless `args` say otherwise),
/// with its own SQLite file and data dir.
struct Run {
    service: Service,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: Vec<String>,
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.yaml"), DEVICES).unwrap();
    let mut command = base_command(dir.path());
    if !args.contains(&"--http") {
        command.args(["--http", "127.0.0.1:0"]);
    }
    command.args(args).envs(env.iter().copied());
    let service = Service::start(&mut command);
    let mut log = Vec::new();
    let addr = loop {
        let line = service
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no HTTP address logged: {log:#?}"));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .filter(|_| line.contains("HTTP API listening"))
            .map(|a| a.parse::<SocketAddr>().unwrap());
        log.push(line);
        if let Some(addr) = addr {
            // 0.0.0.0 and [::] are reached through loopback.
            break SocketAddr::new(
                if addr.ip().is_unspecified() {
                    "127.0.0.1".parse().unwrap()
                } else {
                    addr.ip()
                },
                addr.port(),
            );
        }
    };
    Run {
        service,
        addr,
        _dir: dir,
        log,
    }
}

/// `regpoll run` in `dir` with none of the environment's settings that
/// would change what these tests see.
fn base_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regpoll"));
    command
        .args(["run", "--devices", "devices.yaml", "--sqlite-path", "h.db"])
        .args(["--data-dir", "data"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("REGPOLL_REDIS_URL")
        .env_remove("REGPOLL_HTTP_TOKENS")
        .env_remove("REGPOLL_HTTP_TOKEN_FILE")
        .env_remove("REGPOLL_LOG");
    command
}

impl Run {
    /// Stops the service and returns its whole log.
    fn stop(self) -> String {
        let mut log = self.log;
        log.extend(self.service.stop());
        log.join("\n")
    }
}

/// An HTTP answer with its head.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn error(&self) -> String {
        let json: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        json["error"].as_str().unwrap().to_string()
    }
}

/// GET `path` over HTTP/1.0 on `stream`, with `Authorization: Bearer`.
async fn get_on(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<Answer> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the API answers within 10 s")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no HTTP answer: {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"));
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_on(stream, path, token).await.unwrap()
}

/// `get` from the loopback address `127.0.0.<n>`: the rate limit counts
/// failures per client address, and 127.0.0.0/8 is all loopback.
async fn get_from(n: u8, addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, n], 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    get_on(stream, path, token).await.unwrap()
}

/// `regpoll token new`'s token and file line.
fn new_token(name: &str, tenant: Option<&str>, dir: &Path) -> (String, String) {
    let mut args = vec!["token", "new", name];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    let out = regpoll(&args, dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let token = lines
        .iter()
        .find(|l| l.starts_with("rp_"))
        .unwrap_or_else(|| panic!("no token printed: {stdout}"));
    let line = lines
        .iter()
        .find(|l| l.starts_with(&format!("{name} sha256:")))
        .unwrap_or_else(|| panic!("no file line printed: {stdout}"));
    assert!(
        !line.contains(token),
        "the line holds the hash, not the token"
    );
    (token.to_string(), line.to_string())
}

fn write_token_file(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

#[tokio::test]
async fn every_route_but_health_needs_a_token_from_the_file_or_the_environment() {
    let files = tempfile::tempdir().unwrap();
    let (made, line) = new_token("ops", None, files.path());
    let tokens = write_token_file(files.path(), &[&line]);
    let run = start(
        &["--http-token-file", tokens.to_str().unwrap()],
        &[("REGPOLL_HTTP_TOKENS", &format!("grafana {PLAIN} ;"))],
    );
    assert_eq!(get(run.addr, "/health", None).await.status, 200);
    assert_eq!(
        get(run.addr, "/", None).await.status,
        200,
        "the page's HTML holds no data"
    );
    // Each from an address of its own, to stay under the rate limit.
    for (n, path) in (10..).zip(ROUTES.iter().chain(&["/no/such/route"])) {
        let a = get_from(n, run.addr, path, None).await;
        assert_eq!(a.status, 401, "{path}: {a:?}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{path}");
        assert!(a.error().contains("Authorization: Bearer"), "{path}: {a:?}");
    }
    for token in [made.as_str(), PLAIN] {
        for path in ROUTES {
            let a = get(run.addr, path, Some(token)).await;
            assert_eq!(a.status, 200, "{path}: {a:?}");
        }
    }
    let metrics = get(run.addr, "/metrics", Some(PLAIN)).await.body;
    assert!(
        metrics.contains("regpoll_http_auth_failures_total{reason=\"missing\"} 12"),
        "{metrics}"
    );
    assert!(
        metrics.contains("regpoll_http_requests_by_token_total{token=\"ops\"} 11"),
        "{metrics}"
    );
    for _ in 0..3 {
        let wrong = get_from(10, run.addr, "/api/devices", Some(&format!("{made}x"))).await;
        assert_eq!(wrong.status, 401);
        assert!(wrong.error().contains("not one of this regpoll's tokens"));
    }
    let log = run.stop();
    for secret in [made.as_str(), PLAIN] {
        assert!(!log.contains(secret), "the log shows a token:\n{log}");
    }
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP authentication failed"))
        .collect();
    assert_eq!(
        failures.len(),
        12,
        "once per address and window: {failures:#?}"
    );
    let tenth = failures.iter().filter(|l| l.contains("client=127.0.0.10 "));
    assert_eq!(tenth.count(), 1, "four failures, one line: {failures:#?}");
}

#[tokio::test]
async fn metrics_can_be_opened_to_scrapers_and_the_rest_stays_closed() {
    let run = start(
        &["--http-metrics-open"],
        &[("REGPOLL_HTTP_TOKENS", &format!("grafana {PLAIN}"))],
    );
    let m = get(run.addr, "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(m.body.contains("regpoll_devices "), "{}", m.body);
    assert_eq!(get(run.addr, "/api/devices", None).await.status, 401);
    run.stop();
}

#[tokio::test]
async fn repeated_failures_from_one_address_get_429_with_retry_after() {
    let run = start(&[], &[("REGPOLL_HTTP_TOKENS", &format!("grafana {PLAIN}"))]);
    for i in 0..10 {
        let a = get(
            run.addr,
            "/api/devices",
            Some(&format!("guess-number-{i:04}")),
        )
        .await;
        assert_eq!(a.status, 401, "guess {i}: {a:?}");
    }
    for token in [Some("one-guess-too-many"), Some(PLAIN), None] {
        let a = get(run.addr, "/api/devices", token).await;
        assert_eq!(a.status, 429, "{a:?}");
        let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(
            a.error().contains("too many failed authentications"),
            "{a:?}"
        );
    }
    assert_eq!(get(run.addr, "/health", None).await.status, 200);
    let log = run.stop();
    assert!(log.contains("refusing it (429)"), "{log}");
    assert!(!log.contains("guess-number"), "{log}");
}

#[test]
fn token_file_mistakes_stop_the_start_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_token_file(
        dir.path(),
        &["# ours", &format!("ops {PLAIN}"), "ui sha256:12ab"],
    );
    let out = regpoll(
        &[
            "run",
            "--http",
            "127.0.0.1:0",
            "--http-token-file",
            path.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:4: after `sha256:`", path.display())),
        "{err}"
    );
    assert!(!err.contains(PLAIN), "{err}");
    assert!(!dir.path().join("regpoll.db").exists(), "nothing started");

    let out = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["run", "--http", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("REGPOLL_HTTP_TOKENS", "a short")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("REGPOLL_HTTP_TOKENS entry 1, column 3: a token written as it is must have at least 16 characters"), "{err}");
}

#[tokio::test]
async fn a_world_readable_token_file_is_warned_about() {
    let files = tempfile::tempdir().unwrap();
    let path = write_token_file(files.path(), &[&format!("ops {PLAIN}")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let run = start(&["--http-token-file", path.to_str().unwrap()], &[]);
    let log = run.stop();
    assert!(
        log.contains("readable by every user of this machine"),
        "{log}"
    );
}

#[tokio::test]
async fn a_non_loopback_address_needs_tokens_or_insecure_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = regpoll(&["run", "--http", addr], dir.path());
        assert!(!out.status.success(), "{addr}");
        let err = text(&out.stderr);
        assert!(err.contains("anyone on the network could read"), "{err}");
        assert!(
            err.contains("configure tokens with --http-token-file or REGPOLL_HTTP_TOKENS, or say --http-insecure"),
            "{err}"
        );
    }
    assert!(
        !dir.path().join("regpoll.db").exists(),
        "refused before anything started"
    );

    let open = start(&["--http", "0.0.0.0:0", "--http-insecure"], &[]);
    assert_eq!(get(open.addr, "/api/devices", None).await.status, 200);
    open.stop();
    let closed = start(
        &["--http", "0.0.0.0:0"],
        &[("REGPOLL_HTTP_TOKENS", &format!("ops {PLAIN}"))],
    );
    assert_eq!(get(closed.addr, "/api/devices", None).await.status, 401);
    assert_eq!(
        get(closed.addr, "/api/devices", Some(PLAIN)).await.status,
        200
    );
    closed.stop();
}

// --- HTTPS ----------------------------------------------------------------------

fn tls_dir() -> PathBuf {
    PathBuf::from(std::env::var("REGPOLL_TEST_TLS_DIR").unwrap_or_else(|_| {
        panic!("REGPOLL_TEST_TLS_DIR is not set: run the tests with scripts/test, which makes the certificates")
    }))
}

/// A client trusting `ca` only.
fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring, as regpoll itself (see src/api/tls.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn get_tls(
    addr: SocketAddr,
    ca: &Path,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<Answer> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_client(ca).connect(name, tcp).await?;
    get_on(tls, path, token).await
}

fn https_args(tls: &Path) -> Vec<String> {
    vec![
        "--http-tls-cert".into(),
        tls.join("server.crt").display().to_string(),
        "--http-tls-key".into(),
        tls.join("server.key").display().to_string(),
    ]
}

#[tokio::test]
async fn https_serves_with_the_test_ca_and_refuses_plain_http() {
    let tls = tls_dir();
    let args = https_args(&tls);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = start(&args, &[("REGPOLL_HTTP_TOKENS", &format!("ops {PLAIN}"))]);
    let ca = tls.join("ca.crt");
    let a = get_tls(run.addr, &ca, "/api/devices", Some(PLAIN))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains("pump-1"), "{a:?}");
    assert_eq!(
        get_tls(run.addr, &ca, "/api/devices", None)
            .await
            .unwrap()
            .status,
        401
    );
    let e = get_tls(run.addr, &tls.join("other-ca.crt"), "/health", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = get_on(
        tokio::net::TcpStream::connect(run.addr).await.unwrap(),
        "/health",
        None,
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(
        get_tls(run.addr, &ca, "/health", None)
            .await
            .unwrap()
            .status,
        200,
        "the refused client cost nothing"
    );
    let log = run.stop();
    // The client address reaches the token check over TLS too.
    assert!(
        log.lines()
            .any(|l| l.contains("HTTP authentication failed") && l.contains("client=127.0.0.1")),
        "{log}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_blocks_no_one() {
    let tls = tls_dir();
    let args = https_args(&tls);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = start(&args, &[]);
    // Connected, and silent (or a few bytes of a ClientHello and no more).
    let mut stalled = Vec::new();
    for partial in [&b""[..], &[0x16, 0x03, 0x01][..]] {
        let mut s = tokio::net::TcpStream::connect(run.addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        stalled.push(s);
    }
    let a = tokio::time::timeout(
        Duration::from_secs(5),
        get_tls(run.addr, &tls.join("ca.crt"), "/api/devices", None),
    )
    .await
    .expect("another client is served while two handshakes stall")
    .unwrap();
    assert_eq!(a.status, 200);
    drop(stalled);
    run.stop();
}

#[test]
fn https_files_must_come_in_pairs_and_be_readable_pem() {
    let tls = tls_dir();
    let dir = tempfile::tempdir().unwrap();
    let cert = tls.join("server.crt").display().to_string();
    let key = tls.join("server.key").display().to_string();
    let client_key = tls.join("client.key").display().to_string();
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec!["--http-tls-cert", &cert],
            "without --http-tls-key".into(),
        ),
        (
            vec![
                "--http-tls-cert",
                "/nonexistent/api.crt",
                "--http-tls-key",
                &key,
            ],
            "/nonexistent/api.crt: cannot read certificates for --http-tls-cert".into(),
        ),
        (
            vec!["--http-tls-cert", &key, "--http-tls-key", &key],
            format!("{key}: holds no certificate"),
        ),
        (
            vec!["--http-tls-cert", &cert, "--http-tls-key", &client_key],
            "check that the key is the certificate's".into(),
        ),
    ];
    for (flags, message) in cases {
        let mut args = vec!["run", "--http", "127.0.0.1:0"];
        args.extend(flags);
        let out = regpoll(&args, dir.path());
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&message),
            "{args:?}: {err}"
        );
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
}

// --- the status page --------------------------------------------------------------

/// The page's DOM after Chromium ran it for a few seconds of virtual time.
async fn page_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = common::chromium(profile.path());
    cmd.arg("--virtual-time-budget=6000").arg(url);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn the_status_page_asks_for_a_token_and_shows_the_fleet_with_one() {
    let run = start(&[], &[("REGPOLL_HTTP_TOKENS", &format!("ops {PLAIN}"))]);
    let page = format!("http://{}/", run.addr);

    let dom = page_dom(&page).await;
    assert!(dom.contains("data-login=\"asked\""), "{dom}");
    assert!(
        dom.contains("<p id=\"login-msg\">This regpoll asks for a token.</p>"),
        "{dom}"
    );
    // Attributes as the DOM dump writes them (the script's text names them too).
    let (summary, card) = ("data-summary=\"\"", "data-device=\"pump-1\"");
    assert!(!dom.contains(summary) && !dom.contains(card), "{dom}");

    let dom = page_dom(&format!("{page}#token={PLAIN}")).await;
    assert!(!dom.contains("data-login=\""), "{dom}");
    assert!(dom.contains(summary) && dom.contains(card), "{dom}");

    let dom = page_dom(&format!("{page}#token=not-the-token-at-all")).await;
    assert!(dom.contains("data-login=\"refused\""), "{dom}");
    assert!(
        dom.contains("<p id=\"login-msg\">That token was refused; enter another.</p>"),
        "{dom}"
    );
    assert!(!dom.contains(card), "{dom}");
    let log = run.stop();
    assert!(
        !log.contains(PLAIN) && !log.contains("not-the-token"),
        "{log}"
    );
}
