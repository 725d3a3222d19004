//! TLS to PostgreSQL against the test server, which scripts/test starts
//! with `ssl = on` and the run's certificates (REGPOLL_TEST_TLS_DIR): its
//! certificate is for `localhost` only, `regpoll_tlsonly` may log in only
//! over TLS and `regpoll_cert` only with a client certificate. Everything
//! goes through regpoll's own connect path: `Db` and the `regpoll` binary.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use regpoll::db::{Db, PgTls, error_text, parse_sslmode};
use sqlx::Executor as _;

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the TLS tests with scripts/test, which starts PostgreSQL with TLS and makes the certificates")
    })
}

/// A file of the run's certificates: ca.crt, other-ca.crt, client.crt …
fn cert(name: &str) -> PathBuf {
    let path = PathBuf::from(required_env("REGPOLL_TEST_TLS_DIR")).join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

fn cert_str(name: &str) -> String {
    cert(name).display().to_string()
}

/// `url` with its host set to `host` and its user to `user`.
fn at(url: &str, host: &str, user: &str) -> url::Url {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some(host)).unwrap();
    u.set_username(user).unwrap();
    u
}

/// `url` with the query `query` (`sslmode=…&sslrootcert=…`).
fn with(mut url: url::Url, query: &[(&str, &str)]) -> String {
    url.query_pairs_mut().extend_pairs(query);
    url.to_string()
}

/// Runs `statements` as the test server's superuser.
async fn as_admin(statements: &[String]) {
    let admin = sqlx::PgPool::connect(&required_env("TEST_DATABASE_URL"))
        .await
        .expect("cannot connect to TEST_DATABASE_URL");
    for sql in statements {
        admin
            .execute(sqlx::AssertSqlSafe(sql.clone()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    admin.close().await;
}

/// A fresh database owned by `owner`, one of the two TLS-only roles of
/// scripts/test's pg_hba lines, created here (tests may run at once: a
/// role another made is fine); its URL (host 127.0.0.1, no user).
async fn database_owned_by(owner: &str) -> String {
    let url = common::fresh_postgres().await;
    let name = url::Url::parse(&url).unwrap().path()[1..].to_string();
    as_admin(&[
        format!(
            "DO $$ BEGIN CREATE ROLE {owner} LOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ),
        format!("ALTER DATABASE {name} OWNER TO {owner}"),
    ])
    .await;
    url
}

/// A fresh database's URL for the superuser at `host`, with sslmode
/// verify-full and the run's CA.
async fn verify_full_at(host: &str) -> String {
    let url = common::fresh_postgres().await;
    with(
        at(&url, host, "postgres"),
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", &cert_str("ca.crt")),
        ],
    )
}

/// Whether the connection `db` answers on is encrypted, as the server sees it.
async fn on_tls(db: &Db) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(db.as_postgres().unwrap())
        .await
        .unwrap()
}

/// What `Db::postgres` says when it cannot connect.
async fn refusal(url: &str) -> String {
    let e = Db::postgres(url)
        .await
        .err()
        .unwrap_or_else(|| panic!("{url} connected"));
    error_text(e.as_ref())
}

#[tokio::test]
async fn verify_full_with_the_ca_and_the_certificates_host_name_connects_and_migrates() {
    let url = verify_full_at("localhost").await;
    let db = Db::postgres(&url).await.expect("verify-full connects");
    assert!(on_tls(&db).await);
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(db.as_postgres().unwrap())
        .await
        .expect("migrated");
    assert_eq!(devices, 0);
    db.close().await;
}

#[tokio::test]
async fn verify_full_to_a_name_the_certificate_does_not_hold_is_refused_saying_so() {
    let url = verify_full_at("127.0.0.1").await;
    let e = refusal(&url).await;
    assert!(
        e.contains("not valid for the host name `127.0.0.1` (it names localhost)"),
        "{e}"
    );
    assert!(e.contains("use sslmode=verify-ca"), "{e}");
    assert!(
        e.contains("cannot connect to PostgreSQL at 127.0.0.1:"),
        "{e}"
    );

    // verify-ca checks the CA only: the same address connects.
    let db = Db::postgres(&url.replace("verify-full", "verify-ca"))
        .await
        .expect("verify-ca does not check the host name");
    assert!(on_tls(&db).await);
    db.close().await;
}

#[tokio::test]
async fn a_certificate_of_an_unknown_ca_is_refused_naming_the_roots_checked() {
    let url = common::fresh_postgres().await;
    let other = cert_str("other-ca.crt");
    for mode in ["verify-full", "verify-ca", "require"] {
        // `require` with a root certificate checks it, as libpq does.
        let url = with(
            at(&url, "localhost", "postgres"),
            &[("sslmode", mode), ("sslrootcert", &other)],
        );
        let e = refusal(&url).await;
        assert!(
            e.contains("signed by a CA regpoll does not trust"),
            "{mode}: {e}"
        );
        assert!(
            e.contains(&format!("the sslrootcert file {other}")),
            "{mode}: {e}"
        );
    }
    let url = with(
        at(&url, "localhost", "postgres"),
        &[("sslmode", "verify-full")],
    );
    let e = refusal(&url).await;
    assert!(
        e.contains("the built-in public roots (no sslrootcert was given)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_role_that_needs_tls_is_told_to_use_it_and_allow_and_require_connect() {
    let url = database_owned_by("regpoll_tlsonly").await;
    let plain = at(&url, "127.0.0.1", "regpoll_tlsonly");
    let e = refusal(&with(plain.clone(), &[("sslmode", "disable")])).await;
    assert!(
        e.contains("the server refused a connection without TLS: set sslmode=require or stronger"),
        "{e}"
    );
    assert!(e.contains("no encryption"), "the server's own words: {e}");

    // `allow` tries without TLS, then with it; `require` needs no root
    // certificate (it does not check whom it talks to).
    for mode in ["allow", "require", "prefer"] {
        let db = Db::postgres(&with(plain.clone(), &[("sslmode", mode)]))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e:#}"));
        assert!(on_tls(&db).await, "{mode}");
        // The pool's later connections too, not only the first one.
        let api = db.api_pool(2, Duration::from_secs(5), Duration::from_secs(5));
        assert!(on_tls(&api).await, "{mode}");
        db.close().await;
    }
}

#[tokio::test]
async fn a_client_certificate_logs_in_and_its_absence_is_refused_clearly() {
    let url = database_owned_by("regpoll_cert").await;
    let host = at(&url, "localhost", "regpoll_cert");
    let verified = [
        ("sslmode", "verify-full"),
        ("sslrootcert", &cert_str("ca.crt")),
    ];
    let e = refusal(&with(host.clone(), &verified)).await;
    assert!(
        e.contains(
            "the server requires a client certificate for this user: give sslcert and sslkey"
        ),
        "{e}"
    );

    let client_cert = cert_str("client.crt");
    let client_key = cert_str("client.key");
    let mut q = verified.to_vec();
    q.extend([("sslcert", &*client_cert), ("sslkey", &*client_key)]);
    let db = Db::postgres(&with(host.clone(), &q))
        .await
        .expect("the client certificate logs in and migrates");
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(db.as_postgres().unwrap())
        .await
        .unwrap();
    assert_eq!(user, "regpoll_cert");
    db.close().await;

    // The same through the settings, over a URL that names none of it.
    let tls = PgTls {
        sslmode: Some(parse_sslmode("verify-full").unwrap()),
        sslrootcert: Some(cert("ca.crt")),
        sslcert: Some(cert("client.crt")),
        sslkey: Some(cert("client.key")),
    };
    let db = Db::postgres_with(host.as_str(), &tls)
        .await
        .expect("the settings' client certificate logs in");
    assert!(on_tls(&db).await);
    db.close().await;
}

#[tokio::test]
async fn a_server_without_tls_is_refused_when_tls_is_required() {
    // A server that answers the TLS request with `N`, as PostgreSQL with
    // ssl = off does; nothing else is needed to refuse it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            s.read_exact(&mut request).await.unwrap();
            assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
            s.write_all(b"N").await.unwrap();
        }
    });
    for mode in ["require", "verify-full"] {
        let e = refusal(&format!(
            "postgres://u@localhost:{port}/db?sslmode={mode}&sslrootcert={}",
            cert_str("ca.crt")
        ))
        .await;
        let mode_shown = if mode == "require" { "verify-ca" } else { mode };
        assert!(
            e.contains(&format!(
                "the server does not support TLS (ssl is off there) but sslmode={mode_shown} requires it"
            )),
            "{e}"
        );
    }
    server.abort();
}

#[test]
fn certificate_files_that_cannot_be_used_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let url = "postgres://u:S3cretX@localhost:1/db?sslmode=verify-full";
    let cases = [
        (
            PgTls {
                sslrootcert: Some(dir.path().join("missing.pem")),
                ..PgTls::default()
            },
            format!(
                "cannot use {} given by --database-sslrootcert (REGPOLL_DATABASE_SSLROOTCERT): cannot read it",
                dir.path().join("missing.pem").display()
            ),
        ),
        (
            PgTls {
                sslrootcert: Some(not_pem.clone()),
                ..PgTls::default()
            },
            "it is not in PEM form or holds none".to_string(),
        ),
        (
            PgTls {
                // A certificate is no key.
                sslcert: Some(cert("client.crt")),
                sslkey: Some(cert("client.crt")),
                ..PgTls::default()
            },
            "given by --database-sslkey (REGPOLL_DATABASE_SSLKEY): it is not in PEM form"
                .to_string(),
        ),
        (
            PgTls {
                sslcert: Some(cert("client.crt")),
                ..PgTls::default()
            },
            "needs its key: give sslkey too".to_string(),
        ),
    ];
    for (tls, expected) in cases {
        let e = Db::postgres_lazy_with(url, &tls).unwrap_err();
        let e = error_text(e.as_ref());
        assert!(e.contains(&expected), "{tls:?}: {e}");
        assert!(!e.contains("S3cretX"), "{e}");
    }
    // Named in the URL, it is the URL's parameter that is named.
    let e = Db::postgres_lazy(&format!(
        "postgres://u@localhost:1/db?sslmode=verify-ca&ssl-root-cert={}",
        not_pem.display()
    ))
    .unwrap_err();
    let e = error_text(e.as_ref());
    assert!(
        e.contains("given by `ssl-root-cert` in the database URL"),
        "{e}"
    );
}

/// The `regpoll` binary with the environment of `vars` and nothing of the
/// caller's database settings.
fn regpoll_with(args: &[&str], vars: &[(&str, &str)], dir: &std::path::Path) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regpoll"));
    cmd.args(args).current_dir(dir);
    for v in [
        "DATABASE_URL",
        "REGPOLL_DATABASE_URL",
        "REGPOLL_DATABASE_SSLMODE",
        "REGPOLL_DATABASE_SSLROOTCERT",
        "REGPOLL_DATABASE_SSLCERT",
        "REGPOLL_DATABASE_SSLKEY",
        "REGPOLL_LOG",
    ] {
        cmd.env_remove(v);
    }
    cmd.envs(vars.iter().copied());
    let out = cmd.output().expect("regpoll runs");
    let all = format!("{}{}", common::text(&out.stdout), common::text(&out.stderr));
    (out.status.success(), all)
}

#[tokio::test]
async fn the_tls_settings_override_a_plain_url_in_every_command() {
    let url = common::fresh_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = cert_str("ca.crt");
    let other = cert_str("other-ca.crt");
    // The URL asks for no TLS; the settings win.
    let localhost = with(at(&url, "localhost", "postgres"), &[("sslmode", "disable")]);
    let ok = [
        ("REGPOLL_DATABASE_URL", &*localhost),
        ("REGPOLL_DATABASE_SSLMODE", "verify-full"),
        ("REGPOLL_DATABASE_SSLROOTCERT", &*ca),
    ];
    for args in [&["migrate"][..], &["devices", "list"], &["status"]] {
        let (success, out) = regpoll_with(args, &ok, dir.path());
        assert!(success, "{args:?}: {out}");
    }

    let (success, out) = regpoll_with(
        &["devices", "list", "--database-sslrootcert", &other],
        &ok,
        dir.path(),
    );
    assert!(!success);
    assert!(
        out.contains("signed by a CA regpoll does not trust"),
        "{out}"
    );
    assert!(out.contains(&other), "{out}");

    // A password in the URL is never shown, whatever the failure.
    let secret = "S3cretX";
    let mut wrong_host = at(&url, "127.0.0.1", "postgres");
    wrong_host.set_password(Some(secret)).unwrap();
    let wrong_host = wrong_host.to_string();
    for args in [&["devices", "list"][..], &["status"], &["migrate"]] {
        let mut all = args.to_vec();
        all.extend([
            "--database-url",
            &wrong_host,
            "--database-sslmode",
            "verify-full",
        ]);
        all.extend(["--database-sslrootcert", &ca, "--log", "debug"]);
        let (success, out) = regpoll_with(&all, &[], dir.path());
        assert!(!success, "{args:?}: {out}");
        assert!(
            out.contains("not valid for the host name `127.0.0.1` (it names localhost)"),
            "{args:?}: {out}"
        );
        assert!(!out.contains(secret), "{args:?}: {out}");
    }

    let missing = dir.path().join("nowhere").join("ca.pem");
    let (success, out) = regpoll_with(
        &["devices", "list"],
        &[
            ("REGPOLL_DATABASE_URL", &*localhost),
            (
                "REGPOLL_DATABASE_SSLROOTCERT",
                &missing.display().to_string(),
            ),
        ],
        dir.path(),
    );
    assert!(!success);
    assert!(
        out.contains(&format!(
            "cannot use {} given by --database-sslrootcert (REGPOLL_DATABASE_SSLROOTCERT): cannot read it",
            missing.display()
        )),
        "{out}"
    );
}

#[tokio::test]
async fn every_connection_of_the_service_is_encrypted_including_the_listening_one() {
    let localhost = verify_full_at("localhost").await;
    let name = url::Url::parse(&localhost).unwrap().path()[1..].to_string();
    let dir = tempfile::tempdir().unwrap();
    let (_f, devices) = common::write_yaml(
        "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: 1\n    unit_id: 1\n    every: 1s\n    registers:\n      - { name: t, kind: holding, address: 0, type: u16 }\n",
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regpoll"));
    cmd.args(["run", "--http", "off", "--devices"])
        .arg(&devices)
        .args(["--database-url", &localhost, "--data-dir"])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("REGPOLL_LOG");
    let service = common::Service::start(&mut cmd);

    let admin = sqlx::PgPool::connect(&required_env("TEST_DATABASE_URL"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let connections: Vec<(String, bool)> = loop {
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "SELECT a.query, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'",
        )
        .bind(&name)
        .fetch_all(&admin)
        .await
        .unwrap();
        if rows.iter().any(|(q, _)| q.starts_with("LISTEN")) {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "no LISTEN connection within 60 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    admin.close().await;
    let log = service.stop();
    assert!(
        connections.iter().all(|(_, ssl)| *ssl),
        "a connection without TLS: {connections:?}\n{log:#?}"
    );
}

/// A query that outlasts the caller's timeout (the health reader's, an
/// API request's) must leave its pool usable: over TLS, sqlx loses a
/// connection whose query was dropped mid-read, so the server has to
/// cancel it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_callers_timeout_leaves_a_tls_pool_usable() {
    let url = with(
        url::Url::parse(&common::fresh_postgres().await).unwrap(),
        &[("sslmode", "require")],
    );
    let timeout = Duration::from_millis(700);
    let db = Db::postgres(&url)
        .await
        .unwrap()
        .api_pool(1, timeout, timeout);
    assert!(on_tls(&db).await);
    let pool = db.as_postgres().unwrap();
    for _ in 0..3 {
        let slow = tokio::time::timeout(timeout, sqlx::query("SELECT pg_sleep(60)").execute(pool))
            .await
            .expect("the server cancels before the caller gives up");
        let e = slow.unwrap_err().to_string();
        assert!(e.contains("statement timeout"), "{e}");
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .expect("the connection came back");
    }
}
