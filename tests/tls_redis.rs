//! `rediss://`: regpoll's own Redis connection over TLS, against the test
//! Redis's TLS-only port (scripts/test: TEST_REDISS_URL, a certificate for
//! `localhost` only, signed by the run's CA in REGPOLL_TEST_TLS_DIR), and
//! what the user is told when it cannot be: a wrong host name, an unknown
//! CA, a plain port, a missing client certificate, a refused login.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regpoll::app::{self, DeviceSource, Settings};
use regpoll::latest::redis::{RedisTls, connect_raw};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts Redis with a TLS port and makes the certificates")
    })
}

fn tls_dir() -> PathBuf {
    PathBuf::from(required_env("REGPOLL_TEST_TLS_DIR"))
}

fn cert(name: &str) -> PathBuf {
    tls_dir().join(name)
}

/// The test Redis's TLS port.
fn tls_port() -> u16 {
    let url = url::Url::parse(&required_env("TEST_REDISS_URL")).unwrap();
    url.port().unwrap()
}

/// The test Redis's plain port.
fn plain_port() -> u16 {
    let url = url::Url::parse(&required_env("TEST_REDIS_URL")).unwrap();
    url.port().unwrap()
}

fn with_ca(ca: &str) -> RedisTls {
    RedisTls {
        ca: Some(cert(ca)),
        ..RedisTls::default()
    }
}

/// How long a failure may take: the timeout given, and some slack for a
/// loaded machine.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Connects as the writer does; the error's whole text, and how long it took.
async fn refused(url: &str, tls: &RedisTls) -> String {
    let started = Instant::now();
    let e = match connect_raw(url, tls, TIMEOUT).await {
        Ok(_) => panic!("{url} connected"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_secs(1),
        "{url}: failed only after {:?}: {e}",
        started.elapsed()
    );
    e
}

/// `redis-cli` over TLS (the redis crate here has no TLS): a command's answer.
fn redis_cli_tls(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let ca = cert("ca.crt");
    let mut all = vec!["--tls", "--cacert", ca.to_str().unwrap()];
    all.extend(["-h", "localhost", "-p", &port, "--no-auth-warning"]);
    all.extend(args);
    redis_cli(&all)
}

/// A command on the test Redis's plain port (administration: ACL SETUSER).
fn redis_cli_plain(args: &[&str]) -> String {
    let port = plain_port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend(args);
    redis_cli(&all)
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli is installed by scripts/test");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

const ONE_DEVICE: &str = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: {A}\n    every: 200ms\n    registers:\n      - { name: a, kind: holding, address: 0 }\n      - { name: b, kind: input, address: 0, type: f32 }\n";

/// Polls one simulated device into Redis at `url` (TLS from `tls`, keys
/// under `prefix`) with the HTTP API on a free port, until the latest
/// values can be read back over TLS; `/ready` is asked meanwhile.
async fn poll_into(url: &str, tls: RedisTls, prefix: &str) {
    let fixture = common::simulate(ONE_DEVICE, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("r.db"),
        redis_url: Some(url.to_string()),
        redis_tls: tls,
        redis_prefix: prefix.to_string(),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    common::wait_for_polls(&running, 2).await;
    let key = format!("{prefix}:latest:boiler");
    let mut waited = 0;
    loop {
        let fields = redis_cli_tls(tls_port(), &["HKEYS", &key]);
        if fields.lines().count() == 2 {
            break;
        }
        assert!(
            waited < 100,
            "the latest values never reached Redis: {fields:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // another process
        waited += 1;
    }
    let value = redis_cli_tls(tls_port(), &["HGET", &key, "a"]);
    assert!(value.contains("\"quality\":\"good\""), "{value}");
    let ready = common::http_get(running.http_addr().unwrap(), "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let summary = running.shutdown().await.unwrap();
    assert!(
        summary.redis.as_ref().is_some_and(|r| r.failures == 0),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_right_ca_and_host_name_writes_values_readable_over_tls() {
    let (_, prefix) = common::redis();
    poll_into(&required_env("TEST_REDISS_URL"), with_ca("ca.crt"), &prefix).await;
}

#[tokio::test]
async fn an_ip_address_the_certificate_does_not_name_is_refused_saying_which_names_it_holds() {
    let url = format!("rediss://127.0.0.1:{}/", tls_port());
    let e = refused(&url, &with_ca("ca.crt")).await;
    assert!(e.contains("not valid for \"127.0.0.1\""), "{e}");
    assert!(e.contains("it names localhost"), "{e}");
}

#[tokio::test]
async fn a_certificate_of_an_unknown_ca_is_refused_naming_the_ca_file() {
    let url = required_env("TEST_REDISS_URL");
    let e = refused(&url, &with_ca("other-ca.crt")).await;
    assert!(e.contains("not signed by a CA in the CA file"), "{e}");
    assert!(e.contains("other-ca.crt"), "{e}");
    // Without --redis-ca the public roots are used, and said to be.
    let e = refused(&url, &RedisTls::default()).await;
    assert!(e.contains("public roots"), "{e}");
}

#[tokio::test]
async fn rediss_to_a_plain_port_says_it_is_not_tls_within_the_timeout() {
    let url = format!("rediss://localhost:{}/", plain_port());
    let e = refused(&url, &with_ca("ca.crt")).await;
    assert!(e.contains("did not answer the TLS handshake"), "{e}");
    assert!(e.contains("use redis://"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_redis_to_the_tls_port_says_use_rediss_on_ready_and_in_the_log() {
    let url = format!("redis://127.0.0.1:{}/", tls_port());
    // The readiness probe.
    let fixture = common::simulate(ONE_DEVICE, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("r.db"),
        redis_url: Some(url.clone()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    let started = Instant::now();
    let ready = common::http_get(running.http_addr().unwrap(), "/ready").await;
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1));
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reasons = ready.json()["reasons"].to_string();
    assert!(
        reasons.contains(
            "closed the connection before answering: if the port is TLS-only, use rediss://"
        ),
        "{reasons}"
    );
    running.shutdown().await.unwrap();
    // The writer of `regpoll run`, which logs why it lost the connection.
    let log = run_until_redis_is_logged(&url, &[], "TLS-only");
    assert!(log.contains("use rediss://"), "{log}");
}

/// `regpoll run` against Redis at `url` with `extra` arguments, until a log
/// line holds `wanted`; the whole log.
fn run_until_redis_is_logged(url: &str, extra: &[&str], wanted: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (_d, devices) = common::write_yaml(
        "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: 1\n    every: 200ms\n    registers:\n      - { name: a, kind: holding, address: 0 }\n",
    );
    let service = common::Service::start(
        Command::new(env!("CARGO_BIN_EXE_regpoll"))
            .args(["run", "--http", "off", "--devices"])
            .arg(&devices)
            .args(["--redis-url", url, "--redis-timeout", "2s", "--sqlite-path"])
            .arg(dir.path().join("r.db"))
            .args(extra)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("REGPOLL_DATABASE_URL")
            .env_remove("REDIS_URL"),
    );
    let mut seen = Vec::new();
    loop {
        match service.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let found = line.contains(wanted);
                seen.push(line);
                if found {
                    break;
                }
            }
            Err(_) => panic!("{wanted:?} never logged: {seen:#?}"),
        }
    }
    seen.extend(service.stop());
    seen.join("\n")
}

/// A redis-server of the test's own that demands a client certificate
/// signed by the run's CA, with TLS only, on a free port.
struct DemandingRedis {
    child: Child,
    port: u16,
}

impl DemandingRedis {
    async fn start() -> DemandingRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tls_dir();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-auth-clients",
                "yes",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("server.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.crt"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test");
        let server = DemandingRedis { child, port };
        let mut waited = 0;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(waited < 100, "the TLS redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await; // another process
            waited += 1;
        }
        server
    }
}

impl Drop for DemandingRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_client_certificate_is_shown_when_redis_demands_one_and_its_absence_explained() {
    let server = DemandingRedis::start().await;
    let url = format!("rediss://localhost:{}/", server.port);
    let e = refused(&url, &with_ca("ca.crt")).await;
    assert!(e.contains("refused the TLS"), "{e}");
    assert!(e.contains("--redis-cert and --redis-key"), "{e}");
    let with_cert = RedisTls {
        ca: Some(cert("ca.crt")),
        cert: Some(cert("client.crt")),
        key: Some(cert("client.key")),
    };
    connect_raw(&url, &with_cert, TIMEOUT)
        .await
        .expect("the client certificate is accepted");
}

#[tokio::test]
async fn a_key_that_does_not_fit_or_is_not_a_key_is_named_and_never_quoted() {
    let url = required_env("TEST_REDISS_URL");
    let tls = |key: PathBuf| RedisTls {
        ca: Some(cert("ca.crt")),
        cert: Some(cert("client.crt")),
        key: Some(key),
    };
    let e = refused(&url, &tls(cert("server.key"))).await;
    assert!(e.contains("does not belong to --redis-cert"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nnot*base64*secret\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = refused(&url, &tls(bad.clone())).await;
    assert!(e.contains("--redis-key") && e.contains("bad.key"), "{e}");
    assert!(!e.contains("secret"), "{e}");
}

/// An ACL user of this test only, with the rights the README lists, on
/// the keys and channels under its own name as the prefix.
fn acl_user(password: &str) -> String {
    let (_, name) = common::redis();
    let (keys, channels) = (format!("~{name}:*"), format!("&{name}:*"));
    let pass = format!(">{password}");
    let mut acl = vec!["ACL", "SETUSER", &name, "on", &pass, &keys, &channels];
    acl.extend([
        "+hset", "+hdel", "+del", "+expire", "+publish", "+ping", "+select",
    ]);
    let answer = redis_cli_plain(&acl);
    assert_eq!(answer.trim(), "OK", "{answer}");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_logs_in_over_tls_and_writes() {
    let password = "tls-acl-pw";
    let user = acl_user(password);
    let url = format!("rediss://{user}:{password}@localhost:{}/", tls_port());
    poll_into(&url, with_ca("ca.crt"), &user).await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_user_not_the_password() {
    let user = acl_user("right-pw");
    let url = format!("rediss://{user}:Wr0ngPassw0rd@localhost:{}/", tls_port());
    let e = refused(&url, &with_ca("ca.crt")).await;
    assert!(e.contains(&format!("refused AUTH for user {user}")), "{e}");
    assert!(!e.contains("Wr0ngPassw0rd"), "{e}");
    // And the service says the same in its log, the password nowhere.
    let ca = cert("ca.crt");
    let log =
        run_until_redis_is_logged(&url, &["--redis-ca", ca.to_str().unwrap()], "AUTH for user");
    assert!(!log.contains("Wr0ngPassw0rd"), "{log}");
}

#[test]
fn tls_files_with_a_plain_redis_url_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, devices) = common::write_yaml(ONE_DEVICE.replace("{A}", "1").as_str());
    let ca = cert("ca.crt");
    let out = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["run", "--http", "off", "--devices"])
        .arg(&devices)
        .args([
            "--redis-url",
            &format!("redis://localhost:{}/", plain_port()),
        ])
        .args(["--redis-ca", ca.to_str().unwrap(), "--sqlite-path"])
        .arg(dir.path().join("r.db"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("use rediss://"), "{stderr}");
}
