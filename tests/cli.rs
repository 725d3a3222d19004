//! The `regpoll` binary as users run it.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{regpoll, text};

const GOOD: &str = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: 5020\n    registers:\n      - { name: t, kind: holding, address: 0, type: f32 }\n";

#[test]
fn check_prints_the_plan_of_a_good_file() {
    let (dir, _) = common::write_yaml(GOOD);
    let out = regpoll(&["check", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("OK: 1 devices, 1 registers, 0 warnings"),
        "{stdout}"
    );
    assert!(stdout.contains("holding  0..1 (2): t"), "{stdout}");
    assert!(
        stdout.contains("    pacing: 0 ms after connect, 0 ms between requests, 1 in flight; demoted after 3 timeouts in a row, probed up to every 60 s"),
        "{stdout}"
    );
}

#[test]
fn check_prints_each_devices_pacing_as_configured() {
    let paced = GOOD.replace(
        "    port: 5020\n",
        "    port: 5020\n    delay_after_connect: 200ms\n    pause_between_requests: 20ms\n    demote_after: 5\n    demote_max: 5m\n",
    );
    let (dir, _) = common::write_yaml(&paced);
    let out = regpoll(&["check", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("    pacing: 200 ms after connect, 20 ms between requests, 1 in flight; demoted after 5 timeouts in a row, probed up to every 300 s"),
        "{stdout}"
    );
}

#[test]
fn invalid_file_is_refused_with_its_location_and_changes_nothing() {
    let (dir, _) = common::write_yaml(GOOD);
    let out = regpoll(&["devices", "sync", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("added        boiler"),
        "{}",
        text(&out.stdout)
    );

    let bad = GOOD.replace("type: f32", "type: float")
        + "  - name: meter\n    host: 127.0.0.1\n    registers: []\n";
    std::fs::write(dir.path().join("devices.yaml"), bad).unwrap();
    let out = regpoll(&["devices", "sync", "devices.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("devices.yaml:6:") && stderr.contains("unknown type `float`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("devices.yaml:9:") && stderr.contains("empty `registers`"),
        "{stderr}"
    );

    let out = regpoll(&["devices", "list"], dir.path());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("boiler") && !stdout.contains("meter"),
        "the registry is unchanged: {stdout}"
    );
}

#[test]
fn devices_show_lists_each_registers_deadband_as_the_registry_holds_it() {
    let yaml = "devices:\n  - name: tank\n    host: 127.0.0.1\n    deadband_percent: 0.5\n    heartbeat: 15m\n    registers:\n      - { name: level, kind: input, address: 0, type: f32, unit: m }\n      - { name: temp, kind: input, address: 2, type: f32, deadband: 0.2 }\n  - name: pump\n    host: 127.0.0.1\n    registers: [ { name: on, kind: coil, address: 0 } ]\n";
    let (dir, _) = common::write_yaml(yaml);
    let out = regpoll(&["devices", "sync", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = regpoll(&["devices", "show", "tank"], dir.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` in {stdout}"))
            .to_string()
    };
    assert!(
        line("level").ends_with("deadband_percent 0.5, heartbeat 15m"),
        "{stdout}"
    );
    assert!(
        line("temp").ends_with("deadband 0.2, heartbeat 15m"),
        "{stdout}"
    );
    let out = regpoll(&["devices", "show", "pump"], dir.path());
    assert!(text(&out.stdout).contains("every reading"));

    let out = regpoll(&["devices", "show", "nope"], dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("no device `nope` in the registry; `regpoll devices list` shows the names"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_shows_live_values_and_exits_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["demo", "--every", "500ms"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let all_up = loop {
        let line = lines.next().expect("demo output ended early").unwrap();
        seen.push(line.clone());
        if line.contains("devices up 4/4") {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no live values within 10 s: {seen:#?}"
        );
    };
    assert!(
        seen.iter()
            .any(|l| l.starts_with("status page: http://127.0.0.1:")),
        "{seen:#?}"
    );
    assert!(all_up.contains("polls/s"));
    let values = lines.next().unwrap().unwrap();
    assert!(values.contains("(good)"), "{values}");

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits 0 on Ctrl-C, got {status}");
    let last = rest.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("stopped after") && last.contains("readings stored"),
        "{rest:#?}"
    );
    assert!(dir.path().join("regpoll.db").exists());
}

const PROBED: &str = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: {A}\n    registers:\n      - { name: temp, kind: holding, address: 100, type: f32, unit: \"°C\", valid: { min: 0, max: 150 } }\n      - { name: pressure, kind: input, address: 0, type: u16, scale: 0.01, unit: bar }\n";

/// The simulator for `PROBED`, with `pressure` answering exception 2.
async fn probed_device() -> (common::SimFixture, regpoll::sim::Simulator, u16) {
    use regpoll::sim::{Bind, FaultAction, SimFault, Simulator};
    let fixture = common::simulate(PROBED, &["{A}"]).await;
    let fault = SimFault {
        device: "boiler".into(),
        register: Some("pressure".into()),
        action: FaultAction::Exception(2),
    };
    let sim = Simulator::start_with_faults(&fixture.devices, Bind::Ephemeral, vec![fault])
        .await
        .unwrap();
    let port = sim.addr_of(&fixture.devices[0]).unwrap().port();
    (fixture, sim, port)
}

/// `read --guess-order`: one row per value, one column per order; the
/// device's own order (ABCD here) holds the value it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_guess_order_shows_every_order_side_by_side() {
    let (fixture, _sim, port) = probed_device().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let before = chrono::Utc::now();
    let out = regpoll(
        &[
            "read",
            &endpoint,
            "--holding",
            "100",
            "--type",
            "f32",
            "--guess-order",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["REGISTER", "ABCD", "CDAB", "BADC", "DCBA"],
        "{stdout}"
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("holding[100]"))
        .unwrap_or_else(|| panic!("{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(row.len(), 5, "{stdout}");
    let reg = &fixture.devices[0].registers[0];
    let candidates: Vec<String> = [before, before + chrono::Duration::seconds(1)]
        .iter()
        .map(|&t| regpoll::sim::expected_value("boiler", reg, t).for_people())
        .collect();
    assert!(
        candidates.contains(&row[1].to_string()),
        "{row:?} vs {candidates:?}"
    );

    // Refused with what to do instead: a one-word type, and an order given too.
    for (extra, says) in [
        (&["--type", "u16"][..], "--type u16 has one word"),
        (
            &["--type", "f32", "--order", "CDAB"][..],
            "cannot be used with",
        ),
    ] {
        let mut args = vec!["read", &endpoint, "--holding", "100", "--guess-order"];
        args.extend_from_slice(extra);
        let out = regpoll(&args, dir.path());
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_prints_a_value_and_an_exception_by_name() {
    let (fixture, _sim, port) = probed_device().await;
    let dir = tempfile::tempdir().unwrap();
    let before = chrono::Utc::now();
    let out = regpoll(
        &[
            "read",
            &format!("127.0.0.1:{port}"),
            "--holding",
            "100",
            "--type",
            "f32",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("holding[100]"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let reg = &fixture.devices[0].registers[0];
    let candidates: Vec<String> = [before, before + chrono::Duration::seconds(1)]
        .iter()
        .map(|&t| match regpoll::sim::expected_value("boiler", reg, t) {
            v @ regpoll::reading::Value::Number(_) => v.for_people(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        candidates.iter().any(|c| line.contains(c.as_str())) && line.contains("good"),
        "{line} vs {candidates:?}"
    );

    let out = regpoll(
        &["read", &format!("127.0.0.1:{port}"), "--input", "0"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("bad") && stdout.contains("exception 2 (illegal data address)"),
        "{stdout}"
    );
    // The table is printed and the exit status says the read failed.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1 of 1 values could not be read: exception 2 (illegal data address)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probe_reads_every_register_once() {
    let (fixture, _sim, port) = probed_device().await;
    let yaml = fixture.yaml.replace(
        &format!("port: {}", fixture.devices[0].port),
        &format!("port: {port}"),
    );
    let (dir, _) = common::write_yaml(&yaml);
    let out = regpoll(&["check", "devices.yaml", "--probe"], dir.path());
    // Like `read`: the whole probe is printed, then a bad value makes it exit 1
    // with a summary on stderr.
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 of 2 values could not be read: boiler.pressure: exception 2 (illegal data address); check the address"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    let temp = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("temp "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(temp.contains("°C") && temp.contains("good"), "{temp}");
    let pressure = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("pressure "))
        .unwrap();
    assert!(
        pressure.contains("bad") && pressure.ends_with("exception 2 (illegal data address)"),
        "{pressure}"
    );
}

/// History for `query`: polls `PROBED` (with its exception register) into a
/// fresh database, then stops, so the rows are fixed while queried.
async fn polled_history(database_url: Option<String>, sqlite: &std::path::Path) -> u64 {
    let (fixture, _sim, port) = probed_device().await;
    let mut devices = fixture.devices.clone();
    devices[0].port = port;
    devices[0].schedule = regpoll::registry::Schedule::every(Duration::from_millis(200));
    let settings = regpoll::app::Settings {
        database_url,
        sqlite_path: sqlite.to_path_buf(),
        ..Default::default()
    };
    let running = regpoll::app::start(&settings, regpoll::app::DeviceSource::Devices(devices))
        .await
        .unwrap();
    common::wait_for_polls(&running, 3).await;
    let summary = running.shutdown().await.unwrap();
    summary.history.rows_written
}

fn query(args: &[&str], db: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let all: Vec<&str> = ["query"].iter().chain(args).chain(db).copied().collect();
    let out = regpoll(&all, dir);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_prints_latest_and_ranges_as_table_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_postgres().await;
    let rows = polled_history(Some(url.clone()), &dir.path().join("unused.db")).await;
    assert!(rows >= 6, "{rows} rows written");
    let db = ["--database-url", url.as_str()];

    let (ok, out, err) = query(&["latest", "boiler"], &db, dir.path());
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("REGISTER"), "{out}");
    let temp = lines
        .iter()
        .find(|l| l.starts_with("temp "))
        .expect("temp row");
    assert!(temp.contains("°C") && temp.contains("good"), "{temp}");
    let pressure = lines
        .iter()
        .find(|l| l.starts_with("pressure "))
        .expect("pressure row");
    assert!(
        pressure.contains("bad") && pressure.contains("exception 2 (illegal data address)"),
        "{pressure}"
    );

    let (ok, out, err) = query(&["latest", "boiler", "--json"], &db, dir.path());
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let temp = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["register"] == "temp")
        .unwrap();
    assert!(
        temp["value"].is_number() && temp["quality"] == "good",
        "{temp}"
    );

    // A raw range: as many rows as the history holds for the register.
    let (ok, out, err) = query(
        &["range", "boiler", "temp", "--since", "1h", "--csv"],
        &db,
        dir.path(),
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("register,ts,value,value_text,quality,detail")
    );
    let data: Vec<&str> = lines.collect();
    assert_eq!(data.len() as u64, rows / 2, "{out}");
    assert!(
        data.iter()
            .all(|l| l.starts_with("temp,") && l.contains(",good,")),
        "{out}"
    );

    // Per bucket: the counts add up to the good rows.
    let (ok, out, err) = query(
        &[
            "range", "boiler", "temp", "--since", "1h", "--bucket", "1m", "--json",
        ],
        &db,
        dir.path(),
    );
    assert!(ok, "{err}");
    let buckets: serde_json::Value = serde_json::from_str(&out).unwrap();
    let counted: i64 = buckets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .sum();
    assert_eq!(counted as u64, rows / 2, "{out}");

    let (ok, out, err) = query(
        &["range", "boiler", "temp", "--bucket", "1m"],
        &db,
        dir.path(),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("BUCKET"), "{out}");

    // Mistakes: a clear message and exit status 1.
    for (args, says) in [
        (vec!["latest", "nobody"], "no device named `nobody`"),
        (
            vec!["range", "boiler", "nothing"],
            "no register named `nothing`",
        ),
        (
            vec!["range", "boiler", "temp", "--since", "soon"],
            "--since: `soon` is not a time",
        ),
        (
            vec!["range", "boiler", "temp", "--limit", "1"],
            "more than 1 rows match",
        ),
    ] {
        let (ok, _, err) = query(&args, &db, dir.path());
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_reads_the_embedded_sqlite_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let rows = polled_history(None, &path).await;
    let db = ["--sqlite-path", path.to_str().unwrap()];
    let (ok, out, err) = query(
        &["range", "boiler", "temp", "--since", "1h", "--json"],
        &db,
        dir.path(),
    );
    assert!(ok, "{err}");
    let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(raw.as_array().unwrap().len() as u64, rows / 2);
    let (ok, out, err) = query(&["latest", "boiler", "--csv"], &db, dir.path());
    assert!(ok, "{err}");
    assert!(
        out.starts_with("register,unit,ts,value,quality,detail\n"),
        "{out}"
    );
    assert!(
        out.contains("\"exception 2 (illegal data address)\"")
            || out.contains(",exception 2 (illegal data address)"),
        "{out}"
    );
}

/// Passwords inside database and Redis URLs never reach logs or errors, for
/// a refused connection, an unparsable URL and a Redis that is down.
/// Every form in which a driver takes a password, through every command
/// that opens a database and every endpoint of a running service, with
/// debug logging: the secret appears nowhere.
#[test]
fn run_without_database_registry_cache_or_devices_file_exits_saying_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://regpoll@127.0.0.1:{closed}/regpoll");
    let data = dir.path().join("state");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--database-url", &url, "--http", "off", "--data-dir"];
        args.push(data.to_str().unwrap());
        args.extend_from_slice(extra);
        regpoll(&args, dir.path())
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot start: the database is unreachable"),
        "{err}"
    );
    assert!(
        err.contains(&format!("127.0.0.1:{closed}/regpoll")) && err.contains("refused"),
        "{err}"
    );
    assert!(
        err.contains(&data.display().to_string()) && err.contains("registry-cache.json"),
        "{err}"
    );

    // A devices file alone cannot give readings their ids: refused, and why.
    let (_f, devices) = common::write_yaml(GOOD);
    let out = run(&["--devices", devices.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("is not enough on its own"), "{err}");
    assert!(err.contains("register's id"), "{err}");
}

#[test]
fn every_password_form_stays_out_of_every_command_and_endpoint() {
    const SECRET: &str = "S3cretX";
    let dir = tempfile::tempdir().unwrap();
    let (_file_dir, devices) =
        common::write_yaml(&GOOD.replace("    port: 5020\n", "    port: 1\n    every: 200ms\n"));
    let devices = devices.to_str().unwrap();
    // Nothing listens on port 1: every command fails to connect.
    for url in [
        format!("postgres://regpoll:{SECRET}@127.0.0.1:1/regpoll"),
        format!("postgres://regpoll@127.0.0.1:1/regpoll?password={SECRET}"),
        format!("postgres://regpoll@127.0.0.1:1/regpoll?sslmode=disable&password={SECRET}"),
        format!("postgres://regpoll@127.0.0.1:1/regpoll?passwd={SECRET}"),
        format!("postgres://regpoll:{SECRET}@127.0.0.1:notaport/regpoll"),
        // The TLS forms: an sslpassword (refused: regpoll cannot use one),
        // a password beside TLS parameters, a root certificate that is not there.
        format!("postgres://regpoll@127.0.0.1:1/regpoll?sslmode=require&sslpassword={SECRET}"),
        format!(
            "postgres://regpoll:{SECRET}@127.0.0.1:1/regpoll?sslmode=verify-full&sslrootcert=/etc/regpoll/ca.pem"
        ),
        format!(
            "postgres://regpoll@127.0.0.1:1/regpoll?sslmode=verify-ca&password={SECRET}&sslcert=c.crt&sslkey=c.key"
        ),
    ] {
        for args in [
            &["run", "--http", "off"][..],
            &["status"],
            &["migrate"],
            &["devices", "list"],
            &["devices", "sync", devices],
            &["query", "latest", "boiler"],
            &["query", "range", "boiler", "t", "--since", "1h"],
        ] {
            let mut all: Vec<&str> = args.to_vec();
            all.extend(["--database-url", &url, "--log", "debug"]);
            let out = regpoll(&all, dir.path());
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert!(!out.status.success(), "{args:?} {url}: {stdout}");
            assert!(
                !stdout.contains(SECRET) && !stderr.contains(SECRET),
                "{args:?} printed the password of {url}:\n{stdout}\n{stderr}"
            );
            assert!(
                stderr.contains("127.0.0.1:1/regpoll") || stderr.contains("invalid DATABASE_URL"),
                "{args:?} {url}: {stderr}"
            );
        }
    }

    // --help shows the environment's settings but never the URL's secrets.
    let url =
        format!("postgres://regpoll:{SECRET}@db/regpoll?sslmode=verify-full&sslpassword={SECRET}");
    for args in [
        &["run", "--help"][..],
        &["status", "--help"],
        &["migrate", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_regpoll"))
            .args(args)
            .env("REGPOLL_DATABASE_URL", &url)
            .env("REGPOLL_DATABASE_SSLMODE", "verify-full")
            .output()
            .unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stdout.contains("--database-sslmode"), "{args:?}: {stdout}");
        assert!(
            !stdout.contains(SECRET) && !stderr.contains(SECRET),
            "{args:?} printed a secret:\n{stdout}\n{stderr}"
        );
    }

    for url in [
        format!("redis://:{SECRET}@127.0.0.1:1/"),
        format!("redis://user:{SECRET}@127.0.0.1:1/0"),
        format!("redis+unix:///nonexistent/redis.sock?db=0&pass={SECRET}"),
        format!("rediss://:{SECRET}@127.0.0.1:1/"),
        format!("rediss://user:{SECRET}@localhost:1/0"),
    ] {
        let seen = service_output_and_pages(&url, &[], devices, dir.path());
        assert!(seen.contains("redis:"), "/ready names Redis: {seen}");
        assert!(!seen.contains(SECRET), "{url}:\n{seen}");
    }
    // Over TLS to the test Redis: a login refused, a host name the
    // certificate does not hold.
    let tls_port = url::Url::parse(
        &std::env::var("TEST_REDISS_URL").expect("TEST_REDISS_URL is set by scripts/test"),
    )
    .unwrap()
    .port()
    .unwrap();
    let ca = std::path::Path::new(
        &std::env::var("REGPOLL_TEST_TLS_DIR")
            .expect("REGPOLL_TEST_TLS_DIR is set by scripts/test"),
    )
    .join("ca.crt");
    for (url, says) in [
        (
            format!("rediss://nobody:{SECRET}@localhost:{tls_port}/"),
            "AUTH for user nobody",
        ),
        (
            format!("rediss://:{SECRET}@127.0.0.1:{tls_port}/1"),
            "not valid for",
        ),
    ] {
        let seen = service_output_and_pages(
            &url,
            &["--redis-ca", ca.to_str().unwrap()],
            devices,
            dir.path(),
        );
        assert!(seen.contains(says), "{url}: {seen}");
        assert!(!seen.contains(SECRET), "{url}:\n{seen}");
    }
}

/// Runs `regpoll run` with `redis_url` (and `extra` arguments) and the HTTP
/// API on a free port, reads every page a user or a scraper reads, stops
/// it, and returns the pages and the whole log.
fn service_output_and_pages(
    redis_url: &str,
    extra: &[&str],
    devices: &str,
    dir: &std::path::Path,
) -> String {
    let sqlite = dir.join("secrets.db");
    let service = common::Service::start(
        Command::new(env!("CARGO_BIN_EXE_regpoll"))
            .args(["run", "--http", "127.0.0.1:0", "--devices", devices])
            .args(["--redis-url", redis_url, "--log", "debug", "--sqlite-path"])
            .arg(&sqlite)
            .args(extra)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("REGPOLL_DATABASE_URL"),
    );
    let lines_rx = &service.lines;
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no HTTP address logged: {seen:#?}"));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .filter(|_| line.contains("HTTP API listening"))
            .map(str::to_string);
        seen.push(line);
        if let Some(addr) = addr {
            break addr;
        }
    };
    // Past the first polls, so the Redis writer has tried and failed.
    while !seen.iter().any(|l| l.contains("Redis")) {
        match lines_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the Redis failure is never logged: {seen:#?}"),
        }
    }
    for path in [
        "/ready",
        "/metrics",
        "/api/stats",
        "/api/devices",
        "/",
        "/health",
    ] {
        seen.push(http_get_blocking(&addr, path));
    }
    seen.extend(service.stop());
    seen.join("\n")
}

/// A plain HTTP/1.0 GET: the status line, headers and body as text.
fn http_get_blocking(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_bad_log_filter_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = regpoll(
        &["--log", "info,regpoll=loud", "check", "x.yaml"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("REGPOLL_LOG") && err.contains("info,regpoll"),
        "{err}"
    );
}

/// `regpoll-bench SCENARIO` with `args`, at a small scale (2 s window after
/// a 1 s warm-up) against the test servers and this build's `regpoll`, as
/// `scripts/bench` runs it; its result JSON.
fn run_bench(scenario: &str, args: &[&str]) -> serde_json::Value {
    let redis = std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL is not set: run the tests with scripts/test");
    run_bench_on(scenario, &redis, args)
}

/// [`run_bench`] with Redis at `redis`.
fn run_bench_on(scenario: &str, redis: &str, args: &[&str]) -> serde_json::Value {
    let common = [
        "--regpoll",
        env!("CARGO_BIN_EXE_regpoll"),
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--redis-url",
        redis,
    ];
    let dir = tempfile::tempdir().unwrap();
    bench_json(scenario, &[&common[..], args].concat(), dir.path())
}

/// `regpoll-bench SCENARIO` with `args` against the test PostgreSQL, run in
/// `dir`; its result JSON.
fn bench_json(scenario: &str, args: &[&str], dir: &Path) -> serde_json::Value {
    let admin = std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL is not set: run the tests with scripts/test");
    let name = format!("cli_{scenario}_{}", std::process::id());
    let out = Command::new(env!("CARGO_BIN_EXE_regpoll-bench"))
        .arg(scenario)
        .args(["--name", &name])
        .args(args)
        .args(["--database-url", &admin])
        .args(["--out", "result.json"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("regpoll-bench runs");
    // The driver's account of the run, shown with a failure.
    eprintln!("{}", text(&out.stderr));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap()
}

/// `regpoll-bench storage` end to end at a small scale, as `scripts/bench`
/// runs it: three days of 2 devices × 5 registers every minute, every row
/// stored in PostgreSQL and SQLite, sizes that add up, and the SQLite file
/// removed afterwards.
#[test]
fn bench_storage_reports_bytes_per_reading_in_each_database() {
    let dir = tempfile::tempdir().unwrap();
    let r = bench_json(
        "storage",
        &[
            "--devices",
            "2",
            "--registers",
            "5",
            "--every",
            "1m",
            "--days",
            "3",
            "--sqlite-dir",
            ".",
        ],
        dir.path(),
    );
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(r["data_set"]["rows"], 3 * 1_440 * 10, "{r:#}");
    let leg = &r["legs"][0];
    assert_eq!(leg["rows"], r["data_set"]["rows"]);
    let pg = &leg["postgres"];
    assert_eq!(pg["rows_stored"], leg["rows"], "{pg:#}");
    assert_eq!(pg["rows_written"], leg["rows"], "{pg:#}");
    assert!(f(&pg["fill"]["rows_per_s"]) > 0.0, "{pg:#}");
    // The test server has no TimescaleDB: a plain table, its parts adding
    // up, and a row of four non-null fixed-width columns and a short text
    // costing more than its 29 bytes of data and less than a few hundred.
    assert_eq!(pg["timescaledb"], false, "{pg:#}");
    assert!(pg["hypertable"].is_null(), "{pg:#}");
    let plain = &pg["plain"];
    assert_eq!(
        f(&plain["table_bytes"]) + f(&plain["index_bytes"]),
        f(&plain["total_bytes"]),
        "{plain:#}"
    );
    let per = f(&plain["bytes_per_reading"]["total"]);
    assert!((40.0..300.0).contains(&per), "{plain:#}");
    assert!(f(&plain["bytes_per_reading"]["index"]) > 10.0, "{plain:#}");
    assert_eq!(f(&pg["column_bytes"]["ts"]), 8.0, "{pg:#}");
    assert_eq!(f(&pg["column_bytes"]["value_text"]), 0.0, "{pg:#}");
    // regpoll's refresh job ran over everything: one row a minute of each
    // register (one reading a minute), and an hour's row for each of the
    // 72 hours the data set touches (73 when it does not start on the hour).
    let rollups_hold_every_minute_and_hour = |rollups: &serde_json::Value| {
        let [minute, hour] = rollups.as_array().unwrap().as_slice() else {
            panic!("two rollups: {rollups:#}");
        };
        assert_eq!(minute["relation"], "register_readings_1m", "{rollups:#}");
        assert_eq!(minute["kind"], "table", "{rollups:#}");
        assert_eq!(minute["rows"], 3 * 1_440 * 10, "{rollups:#}");
        assert!(f(&minute["sizes"]["total_bytes"]) > 0.0, "{rollups:#}");
        assert_eq!(hour["relation"], "register_readings_hourly", "{rollups:#}");
        assert!((720.0..=730.0).contains(&f(&hour["rows"])), "{rollups:#}");
    };
    rollups_hold_every_minute_and_hour(&pg["rollups"]);
    assert!(f(&pg["rollup_refresh"]["rows"]) >= 43_200.0, "{pg:#}");
    let sq = &leg["sqlite"];
    assert_eq!(sq["rows_stored"], leg["rows"], "{sq:#}");
    let sizes = &sq["sizes"];
    assert!(
        f(&sizes["total_bytes"]) >= f(&sizes["table_bytes"]),
        "{sq:#}"
    );
    let per = f(&sizes["bytes_per_reading"]["table"]);
    assert!((10.0..300.0).contains(&per), "{sq:#}");
    rollups_hold_every_minute_and_hour(&sq["rollups"]);
    // The file holds the readings, the rollups and the registry.
    let rollup_bytes: f64 = sq["rollups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| f(&r["sizes"]["total_bytes"]))
        .sum();
    assert!(
        f(&sq["file"]["total_bytes"]) > f(&sizes["total_bytes"]) + rollup_bytes,
        "{sq:#}"
    );
    // The deadband leg (5 around the last stored value, a heartbeat of 15
    // minutes). The simulator's values move with the second of the minute,
    // so polled once a minute they stand still: one row each 15 minutes.
    let banded = &r["legs"][1];
    assert_eq!(banded["leg"], "deadband 5 + heartbeat 15m", "{banded:#}");
    assert_eq!(banded["readings"], leg["rows"], "{banded:#}");
    let share = f(&banded["share_stored"]);
    assert!((0.05..0.08).contains(&share), "{banded:#}");
    for db in ["postgres", "sqlite"] {
        assert_eq!(banded[db]["rows_stored"], banded["rows"], "{banded:#}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("sqlite"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `regpoll-bench fleet` end to end at a small scale, as `scripts/bench`
/// runs it: `regpoll run` against the simulator with PostgreSQL and Redis,
/// every reading of the run stored, and the floor measured twice, the second
/// time with the sinks' bytes sent to the same Redis and PostgreSQL.
#[test]
fn bench_fleet_measures_a_small_fleet_and_both_floors() {
    let r = run_bench("fleet", &["--devices", "20"]);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!(f(&r["polls_per_s"]) > 15.0, "{r:#}");
    assert_eq!(r["rows_lost"], 0, "{r:#}");
    assert_eq!(r["rows_in_database"], r["rows_written_total"], "{r:#}");
    assert!(f(&r["cpu_user_us_per_reading"]) <= f(&r["cpu_us_per_reading"]));
    let floor = &r["floor"];
    assert!(f(&floor["requests_per_s"]) > 15.0, "{floor:#}");
    assert!(f(&floor["cpu_us_per_reading"]) > 0.0, "{floor:#}");
    let with_sinks = &floor["with_sinks"];
    assert!(f(&with_sinks["requests_per_s"]) > 15.0, "{floor:#}");
    // 20 polls a second of ten registers: about 2.4 kB each to Redis.
    assert!(f(&with_sinks["redis_mb_per_s"]) > 0.01, "{floor:#}");
    // The writer's 200 ms batch delay, not its 5,000 rows, sets the COPYs
    // at 200 readings a second.
    assert!(f(&with_sinks["copies"]) >= 5.0, "{floor:#}");
    assert!(f(&with_sinks["copy_rows_per_s"]) > 150.0, "{floor:#}");
}

/// The fleet scenario against Redis over TLS (`scripts/bench --redis-tls`):
/// regpoll gets the CA, its writes arrive, and the floor's replay goes over
/// TLS too.
#[test]
fn bench_fleet_writes_to_redis_over_tls() {
    let rediss = std::env::var("TEST_REDISS_URL")
        .expect("TEST_REDISS_URL is not set: run the tests with scripts/test");
    let ca = Path::new(
        &std::env::var("REGPOLL_TEST_TLS_DIR")
            .expect("REGPOLL_TEST_TLS_DIR is not set: run the tests with scripts/test"),
    )
    .join("ca.crt");
    let r = run_bench_on(
        "fleet",
        &rediss,
        &["--devices", "20", "--redis-ca", ca.to_str().unwrap()],
    );
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(r["redis_tls"], true, "{r:#}");
    assert!(f(&r["polls_per_s"]) > 15.0, "{r:#}");
    // regpoll's writes were acknowledged over TLS within the window.
    assert!(f(&r["redis_visible"]["count"]) > 15.0, "{r:#}");
    assert!(
        f(&r["floor"]["with_sinks"]["redis_mb_per_s"]) > 0.01,
        "{r:#}"
    );
}

/// `regpoll-bench cluster` end to end at a small scale, as `scripts/bench`
/// runs it: two `regpoll run --cluster` on 60 devices behind 20 simulator
/// ports settle, one is killed and restarted, a third joins, and one plain
/// instance measures the same load; the figures hang together.
#[test]
fn bench_cluster_measures_settling_a_takeover_and_a_join() {
    let r = run_bench(
        "cluster",
        &[
            "--devices",
            "60",
            "--units-per-port",
            "3",
            "--instances",
            "2",
            "--kills",
            "1",
        ],
    );
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(
        (r["links"].as_u64(), r["simulator_ports"].as_u64()),
        (Some(20), Some(20))
    );
    assert!(f(&r["settle_s"]) > 0.0, "{r:#}");
    let split = r["split"].as_object().unwrap();
    assert_eq!(split.len(), 2, "{r:#}");
    let devices: f64 = split.values().map(|s| f(&s["devices"])).sum();
    assert_eq!(devices, 60.0, "{r:#}");
    // Every firing polled once, by one instance or the other.
    let w = &r["window"];
    assert!((f(&w["polls_per_s"]) - 60.0).abs() < 6.0, "{w:#}");
    assert_eq!(w["instances"].as_array().unwrap().len(), 2, "{w:#}");
    // A device is read again only once its link is owned again, and its
    // gap began before the kill.
    let kill = &r["kills"][0];
    assert!(f(&kill["ownership_s"]) > 0.0, "{kill:#}");
    assert!(
        f(&kill["first_reading_s"]) >= f(&kill["ownership_s"]),
        "{kill:#}"
    );
    assert!(
        f(&kill["largest_gap_s"]) >= f(&kill["first_reading_s"]),
        "{kill:#}"
    );
    assert_eq!(
        r["takeover"]["first_reading_s"]["max"],
        kill["first_reading_s"]
    );
    // Moved links went to the newcomer only, three devices each.
    let join = &r["join"];
    assert_eq!(join["instance"], "bench-3", "{join:#}");
    assert_eq!(join["links_moved_elsewhere"], 0, "{join:#}");
    assert_eq!(
        f(&join["devices_moved"]),
        3.0 * f(&join["links_moved"]),
        "{join:#}"
    );
    assert!(f(&join["links_moved"]) > 0.0, "{join:#}");
    // Every moved device's readings were sorted onto its firings.
    assert!(join["firings_lost"].is_u64(), "{join:#}");
    assert!(join["firings_polled_twice"].is_u64(), "{join:#}");
    let single = &r["single"];
    assert_eq!(single["devices"], 30, "{single:#}");
    assert!(f(&single["cpu_us_per_reading"]) > 0.0, "{single:#}");
}

/// `regpoll check devices.yaml | head -1`: the reader goes away after the
/// first line, and the command ends quietly, without a panic or a backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let many: String = (0..2000)
        .map(|i| format!("  - name: d{i}\n    host: 127.0.0.1\n    registers:\n      - {{ name: t, kind: holding, address: 0 }}\n"))
        .collect();
    let (dir, _) = common::write_yaml(&format!("devices:\n{many}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["check", "devices.yaml"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (dropped above) while the plan is still printed.
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!first.is_empty());
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_database_url_of_another_kind_is_an_unsupported_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let out = regpoll(
        &[
            "devices",
            "list",
            "--database-url",
            "mysql://u:S3cret@127.0.0.1:1/db",
        ],
        dir.path(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unsupported scheme `mysql`"), "{stderr}");
    assert!(
        !stderr.contains("S3cret") && !stderr.contains("cannot connect"),
        "{stderr}"
    );
}

#[test]
fn a_bad_redis_url_is_refused_before_the_registry_is_touched() {
    let (dir, devices) = common::write_yaml(GOOD);
    let sqlite = dir.path().join("untouched.db");
    let out = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["run", "--http", "off", "--devices"])
        .arg(&devices)
        .args(["--redis-url", "redis://:S3cret@[::1:6379/", "--sqlite-path"])
        .arg(&sqlite)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REGPOLL_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid REDIS_URL"), "{stderr}");
    assert!(!stderr.contains("S3cret"), "{stderr}");
    assert!(
        !sqlite.exists(),
        "the registry was opened before the URL was checked"
    );
}

/// A database error is printed once: sqlx's errors repeat their cause's text
/// in their own, and printing the whole chain used to say it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_is_printed_once_and_migrations_are_quiet() {
    let url = common::fresh_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    // Migrating an up-to-date database twice: no notice about the
    // migrations table at all (it used to be one INFO line per command).
    for _ in 0..2 {
        let out = regpoll(&["migrate", "--database-url", &url], dir.path());
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("_sqlx_migrations"), "{stderr}");
        assert!(!stderr.contains("already exists"), "{stderr}");
    }
    let out = regpoll(&["devices", "list", "--database-url", &url], dir.path());
    assert!(
        !text(&out.stderr).contains("notice"),
        "{}",
        text(&out.stderr)
    );

    // A registry row the checks migration refuses, written with the
    // checks taken away, then the migration run again: one error, once.
    let fresh = common::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&fresh).await.unwrap();
    let out = regpoll(&["migrate", "--database-url", &fresh], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    sqlx::raw_sql(
        "DELETE FROM _sqlx_migrations WHERE version = 9;
         ALTER TABLE device_register_map DROP CONSTRAINT register_data_type_known;
         INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms)
           VALUES ('pump-station', '127.0.0.1', 502, 1, 1000, 500);
         INSERT INTO device_register_map (device_id, name, kind, address, data_type)
           SELECT id, 'flow', 'holding', 0, 'float' FROM devices WHERE name = 'pump-station';",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let out = regpoll(&["migrate", "--database-url", &fresh], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pump-station"), "{stderr}");
    let message = "regpoll cannot use these registry rows";
    assert_eq!(stderr.matches(message).count(), 1, "{stderr}");
}
