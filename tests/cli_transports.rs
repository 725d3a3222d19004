//! The command line over RTU: `read` on a serial line and over RTU frames
//! on TCP (and every contradiction among its flags refused with what to
//! do), `check` naming each device's transport, and `simulate` serving a
//! serial device on a pseudo-terminal it names, which `read` then opens.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

use regpoll::config;
use regpoll::sim::{Bind, Simulator, expected_value};

fn regpoll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("regpoll runs")
}

/// `regpoll` from a test that runs the simulator in its own runtime.
async fn regpoll_beside(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        regpoll(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const FLEET: &str = r#"
devices:
  - name: gw-meter
    host: 127.0.0.1
    port: 4001
    transport: rtu-over-tcp
    unit_id: 7
    registers: [ { name: energy, kind: input, address: 0, type: u32 } ]
  - name: bus-meter
    transport: rtu
    unit_id: 11
    serial: { path: /dev/ttyRS485-0, baud: 19200, parity: even }
    registers: [ { name: volts, kind: input, address: 0, type: f32, order: CDAB } ]
"#;

/// The value a `read` printed for its one register, and whether it is one
/// the simulator served around `before`.
fn assert_read_the_simulators_value(
    out: &Output,
    device: &str,
    before: chrono::DateTime<chrono::Utc>,
) {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let devices = config::parse(FLEET, "devices.yaml").unwrap();
    let reg = &devices.iter().find(|d| d.name == device).unwrap().registers[0];
    let stdout = text(&out.stdout);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("input[0]"))
        .unwrap_or_else(|| panic!("{stdout}"))
        .split_whitespace()
        .collect();
    let candidates: Vec<String> = [before, before + chrono::Duration::seconds(1)]
        .iter()
        .map(|&t| expected_value(device, reg, t).for_people())
        .collect();
    assert!(
        candidates.contains(&row[2].to_string()),
        "{stdout} vs {candidates:?}"
    );
    assert_eq!(row[3], "good", "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_takes_a_serial_line_or_rtu_frames_over_tcp() {
    let devices = config::parse(FLEET, "devices.yaml").unwrap();
    let sim = Simulator::start(&devices, Bind::Ephemeral).await.unwrap();
    let port = sim.addr_of(&devices[0]).unwrap().port().to_string();
    let pty = sim.pty_of(&devices[1]).unwrap().display().to_string();

    let before = chrono::Utc::now();
    let endpoint = format!("127.0.0.1:{port}");
    let out = regpoll_beside(&[
        "read",
        &endpoint,
        "--transport",
        "rtu-over-tcp",
        "--unit",
        "7",
        "--input",
        "0",
        "--type",
        "u32",
    ])
    .await;
    assert_read_the_simulators_value(&out, "gw-meter", before);

    let before = chrono::Utc::now();
    let out = regpoll_beside(&[
        "read", "--serial", &pty, "--baud", "19200", "--parity", "even", "--unit", "11", "--input",
        "0", "--type", "f32", "--order", "CDAB",
    ])
    .await;
    assert_read_the_simulators_value(&out, "bus-meter", before);

    // A unit nobody has on the bus stays silent: a timeout, not a value.
    let out = regpoll_beside(&[
        "read",
        "--serial",
        &pty,
        "--baud",
        "19200",
        "--parity",
        "even",
        "--unit",
        "12",
        "--input",
        "0",
        "--timeout",
        "200ms",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("timeout after 200 ms"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn read_refuses_flags_that_contradict_each_other_and_says_what_to_do() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["read", "--input", "0"],
            "say where to read: HOST[:PORT] of the device or gateway, or --serial PATH",
        ),
        (
            &["read", "h:502", "--serial", "/dev/ttyUSB0", "--input", "0"],
            "give either HOST[:PORT] (h:502) or --serial PATH, not both",
        ),
        (
            &["read", "--transport", "rtu", "--input", "0"],
            "--transport rtu reads a serial line: add --serial PATH",
        ),
        (
            &[
                "read",
                "--transport",
                "tcp",
                "--serial",
                "/dev/ttyUSB0",
                "--input",
                "0",
            ],
            "--serial is for transport rtu, not tcp",
        ),
        (
            &["read", "h", "--baud", "9600", "--input", "0"],
            "--baud sets up a serial line; it needs --serial PATH",
        ),
        (
            &["read", "h", "--transport", "modbus", "--input", "0"],
            "unknown transport `modbus`; valid transports: tcp, rtu-over-tcp, rtu",
        ),
        (
            &[
                "read",
                "--serial",
                "/dev/ttyUSB0",
                "--unit",
                "0",
                "--input",
                "0",
            ],
            "--unit: unit_id 0 is the broadcast address",
        ),
        (
            &[
                "read",
                "--serial",
                "/dev/ttyUSB0",
                "--parity",
                "mark",
                "--input",
                "0",
            ],
            "unknown parity `mark`; valid: none, even, odd",
        ),
        (
            &[
                "read",
                "--serial",
                "/dev/ttyUSB0",
                "--data-bits",
                "5",
                "--input",
                "0",
            ],
            "data_bits 5 is neither 7 nor 8",
        ),
    ];
    for (args, says) in cases {
        let out = regpoll(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // A port that is not there is a clear connect error, and a bad reading.
    let out = regpoll(&[
        "read",
        "--serial",
        "/dev/regpoll-no-such-adapter",
        "--input",
        "0",
    ]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("connect: /dev/regpoll-no-such-adapter:")
            && stdout.contains("is the adapter plugged in"),
        "{stdout}"
    );
}

#[test]
fn check_names_each_devices_transport() {
    let (dir, path) = common::write_yaml(FLEET);
    let out = regpoll(&["check", path.to_str().unwrap()]);
    drop(dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("  gw-meter (rtu-over-tcp 127.0.0.1:4001 unit 7)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  bus-meter (rtu /dev/ttyRS485-0 19200 8E1 unit 11)"),
        "{stdout}"
    );
}

/// Kills the simulator when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn simulate_serves_a_serial_device_on_a_pty_it_names_and_read_opens_it() {
    let serial_only = &FLEET[FLEET.find("  - name: bus-meter").unwrap()..];
    let (dir, path) = common::write_yaml(&format!("devices:\n{serial_only}"));
    let mut sim = Child(
        Command::new(env!("CARGO_BIN_EXE_regpoll"))
            .args(["simulate", path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(sim.0.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("serving "))
        .expect("simulate says where it serves");
    assert!(
        serving.ends_with("(rtu 19200 8E1, standing in for /dev/ttyRS485-0): bus-meter (unit 11)"),
        "{serving}"
    );
    let pty = serving.split_whitespace().nth(1).unwrap();
    assert!(pty.starts_with("/dev/pts/"), "{serving}");
    let out = regpoll(&[
        "read", "--serial", pty, "--baud", "19200", "--parity", "even", "--unit", "11", "--input",
        "0", "--type", "f32", "--order", "CDAB",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    drop(dir);
}
