//! regpoll against an independent Modbus server: pymodbus, loaded with known
//! values of every type and byte order that it encodes itself (Python's struct
//! module; BCD from hex digits). Every decoded value must come back exactly,
//! over Modbus TCP, over pymodbus's RTU framer on a TCP socket, and from
//! pymodbus's serial server on one end of a socat pseudo-terminal pair.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use regpoll::config;
use regpoll::modbus::endpoint::Endpoint;
use regpoll::poller::DevicePoller;
use regpoll::reading::{Quality, Value};
use serde_json::json;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_pymodbus(spec: &serde_json::Value) -> (Server, u16, tempfile::TempDir) {
    let (server, line, dir) = start_pymodbus_as(spec, "tcp");
    let port = line
        .parse()
        .unwrap_or_else(|_| panic!("pymodbus server did not report its port: {line:?}"));
    (server, port, dir)
}

/// Starts pymodbus serving `spec` as `mode` says (see the script); returns
/// the line it prints once it serves.
fn start_pymodbus_as(spec: &serde_json::Value, mode: &str) -> (Server, String, tempfile::TempDir) {
    let python = std::env::var("REGPOLL_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("REGPOLL_TEST_PYTHON is not set: run the tests with scripts/test, which installs pymodbus and exports it")
    });
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("values.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/pymodbus_server.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .arg(&spec_path)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start the pymodbus server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Server(child), line.trim().to_string(), dir)
}

/// A pair of connected pseudo-terminals made by socat, as a null-modem
/// cable between two serial ports: `DIR/server` and `DIR/client`.
fn socat_pair(dir: &std::path::Path) -> Server {
    let socat = std::env::var("REGPOLL_TEST_SOCAT").unwrap_or_else(|_| {
        panic!("REGPOLL_TEST_SOCAT is not set: run the tests with scripts/test, which installs socat and exports it")
    });
    let end = |name: &str| format!("pty,raw,echo=0,link={}", dir.join(name).display());
    let mut socat = Server(
        Command::new(socat)
            .args(["-d", "-d", &end("server"), &end("client")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start socat"),
    );
    // socat says when both ends exist and it passes bytes between them.
    let mut said = String::new();
    for line in BufReader::new(socat.0.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("starting data transfer loop") {
            return socat;
        }
    }
    panic!("socat did not make the pseudo-terminal pair: {said}");
}

/// How the every-value test reaches pymodbus.
#[derive(Clone, Copy, Debug)]
enum Peer {
    Tcp,
    RtuOverTcp,
    Serial,
}

/// (register name, devices.yaml fields, value for the server, the value regpoll must read)
fn cases() -> Vec<(String, String, serde_json::Value, Value)> {
    let mut out = Vec::new();
    let mut address = 0u16;
    let mut add = |kind: &str,
                   ty: &str,
                   order: &str,
                   width: u16,
                   server: serde_json::Value,
                   expect: Value,
                   extra: &str| {
        let name = format!("{ty}_{}_{address}", order.to_lowercase());
        let yaml = format!(
            "{{ name: {name}, kind: {kind}, address: {address}, type: {ty}, order: {order}{extra} }}"
        );
        let mut entry =
            json!({"kind": kind, "address": address, "type": ty, "order": order, "value": server});
        if ty == "string" {
            entry["length"] = json!(width);
        }
        out.push((name, yaml, entry, expect));
        address += width;
    };
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        add(
            "holding",
            "u32",
            order,
            2,
            json!(3_000_000_123u32),
            Value::Number(3_000_000_123.0),
            "",
        );
        add(
            "holding",
            "i32",
            order,
            2,
            json!(-123_456_789),
            Value::Number(-123_456_789.0),
            "",
        );
        add(
            "input",
            "f32",
            order,
            2,
            json!(123.456),
            Value::Number(123.456),
            "",
        );
        add(
            "holding",
            "u64",
            order,
            4,
            json!(4_503_599_627_370_503u64),
            Value::Number(4_503_599_627_370_503.0),
            "",
        );
        add(
            "input",
            "i64",
            order,
            4,
            json!(-1_125_899_906_842_627i64),
            Value::Number(-1_125_899_906_842_627.0),
            "",
        );
        add(
            "holding",
            "f64",
            order,
            4,
            json!(-2.5e-7),
            Value::Number(-2.5e-7),
            "",
        );
    }
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        add(
            "input",
            "bcd32",
            order,
            2,
            json!("12345678"),
            Value::Number(12_345_678.0),
            "",
        );
        add(
            "holding",
            "string",
            order,
            6,
            json!("pump ñ 7/ab"),
            Value::Text("pump ñ 7/ab".into()),
            ", length: 6",
        );
        // An odd length: the last register has no partner to swap with.
        add(
            "input",
            "string",
            order,
            3,
            json!("valve"),
            Value::Text("valve".into()),
            ", length: 3",
        );
    }
    for order in ["ABCD", "BADC"] {
        // 0.1 is no half; Python rounds it to the nearest, 0x2E66, which
        // regpoll reads as the shortest decimal of that half. A half keeps
        // about three digits: 1.2345 is served as 1.234375, read as 1.234.
        add("input", "f16", order, 1, json!(0.1), Value::Number(0.1), "");
        add(
            "input",
            "f16",
            order,
            1,
            json!(-65504.0),
            Value::Number(-65504.0),
            "",
        );
        add(
            "holding",
            "f16",
            order,
            1,
            json!(1.2345),
            Value::Number(1.234),
            "",
        );
        add(
            "holding",
            "bcd16",
            order,
            1,
            json!("9071"),
            Value::Number(9071.0),
            "",
        );
        add(
            "holding",
            "u16",
            order,
            1,
            json!(54321),
            Value::Number(54321.0),
            "",
        );
        add(
            "input",
            "i16",
            order,
            1,
            json!(-1234),
            Value::Number(-1234.0),
            "",
        );
        add(
            "holding",
            "string",
            order,
            6,
            json!("pump ñ 7"),
            Value::Text("pump ñ 7".into()),
            ", length: 6",
        );
    }
    out
}

/// (register name, devices.yaml fields, server entry, value) of bytes that
/// share one word: a u8 in the high byte, an i8 in the low one, at `address`.
fn byte_cases(address: u16) -> Vec<(String, String, serde_json::Value, Value)> {
    [("u8", "high", 200, 200.0), ("i8", "low", -100, -100.0)]
        .into_iter()
        .map(|(ty, byte, server, expect)| {
            let name = format!("{ty}_{byte}_{address}");
            let yaml = format!(
                "{{ name: {name}, kind: holding, address: {address}, type: {ty}, byte: {byte} }}"
            );
            let entry = json!({"kind": "holding", "address": address, "type": ty, "byte": byte, "value": server});
            (name, yaml, entry, Value::Number(expect))
        })
        .collect()
}

#[tokio::test]
async fn every_type_and_order_decodes_exactly_from_an_independent_server() {
    every_value_from(Peer::Tcp).await;
}

#[tokio::test]
async fn every_value_decodes_exactly_from_pymodbus_rtu_framer_over_tcp() {
    every_value_from(Peer::RtuOverTcp).await;
}

#[tokio::test]
async fn every_value_decodes_exactly_from_pymodbus_serial_server_on_a_pty_pair() {
    every_value_from(Peer::Serial).await;
}

async fn every_value_from(peer: Peer) {
    let mut cases = cases();
    cases.extend(byte_cases(145));
    assert!(
        cases.iter().all(|c| c.2["address"].as_u64() < Some(145)
            || c.2["type"] == "u8"
            || c.2["type"] == "i8"),
        "the cases run into the byte and bit words"
    );
    let mut spec: Vec<serde_json::Value> = cases.iter().map(|c| c.2.clone()).collect();
    spec.push(json!({"kind": "holding", "address": 150, "type": "bool", "bit": 13, "value": true}));
    spec.push(json!({"kind": "coil", "address": 7, "type": "bool", "value": true}));
    spec.push(json!({"kind": "discrete", "address": 9, "type": "bool", "value": true}));
    let cable = tempfile::tempdir().unwrap();
    let (_socat, mode) = match peer {
        Peer::Tcp => (None, "tcp".to_string()),
        Peer::RtuOverTcp => (None, "rtu-over-tcp".to_string()),
        Peer::Serial => (
            Some(socat_pair(cable.path())),
            format!("serial:{}", cable.path().join("server").display()),
        ),
    };
    let (_server, said, _dir) = start_pymodbus_as(&json!(spec), &mode);
    let link = match peer {
        Peer::Tcp => format!("host: 127.0.0.1\n    port: {said}"),
        Peer::RtuOverTcp => {
            format!("host: 127.0.0.1\n    port: {said}\n    transport: rtu-over-tcp")
        }
        Peer::Serial => format!(
            "transport: rtu\n    serial: {{ path: {}, baud: 9600 }}",
            cable.path().join("client").display()
        ),
    };
    let mut yaml = format!("devices:\n  - name: independent\n    {link}\n    registers:\n");
    for (_, reg, _, _) in &cases {
        yaml += &format!("      - {reg}\n");
    }
    yaml += "      - { name: alarm, kind: holding, address: 150, bit: 13 }\n      - { name: alarm_off, kind: holding, address: 150, bit: 12 }\n";
    yaml += "      - { name: pump_on, kind: coil, address: 7 }\n      - { name: coil_off, kind: coil, address: 8 }\n      - { name: running, kind: discrete, address: 9 }\n";
    let device = Arc::new(config::parse(&yaml, "interop.yaml").unwrap().remove(0));
    let mut poller =
        DevicePoller::new(Arc::clone(&device), Arc::new(Endpoint::for_device(&device)));
    let report = poller.poll().await;

    let read = |name: &str| {
        let r = report
            .readings
            .iter()
            .find(|r| *report.register(r).name == *name)
            .unwrap_or_else(|| panic!("no reading for {name}"));
        assert_eq!(r.quality, Quality::Good, "{peer:?} {name}: {:?}", r.detail);
        r.value.clone()
    };
    for (name, _, _, expect) in &cases {
        assert_eq!(read(name), *expect, "{peer:?} {name}");
    }
    assert_eq!(read("alarm"), Value::Bool(true));
    assert_eq!(read("alarm_off"), Value::Bool(false));
    assert_eq!(read("pump_on"), Value::Bool(true));
    assert_eq!(read("coil_off"), Value::Bool(false));
    assert_eq!(read("running"), Value::Bool(true));
    assert_eq!(report.readings.len(), cases.len() + 5);
}

/// A BCD nibble above 9 from an independent server is a bad reading that
/// names the digit; its neighbours in the same request are unaffected.
#[tokio::test]
async fn bcd_with_a_nibble_above_nine_is_a_bad_reading_that_names_it() {
    let spec = json!([
        {"kind": "input", "address": 0, "type": "bcd16", "value": "12A4"},
        {"kind": "input", "address": 1, "type": "bcd32", "order": "CDAB", "value": "0012345F"},
        {"kind": "input", "address": 3, "type": "bcd16", "value": "0042"},
    ]);
    let (_server, port, _dir) = start_pymodbus(&spec);
    let yaml = format!(
        "devices:\n  - name: independent\n    host: 127.0.0.1\n    port: {port}\n    registers:\n      - {{ name: a, kind: input, address: 0, type: bcd16 }}\n      - {{ name: b, kind: input, address: 1, type: bcd32, order: CDAB }}\n      - {{ name: c, kind: input, address: 3, type: bcd16 }}\n"
    );
    let device = Arc::new(config::parse(&yaml, "interop.yaml").unwrap().remove(0));
    let report = DevicePoller::new(device, Arc::new(Endpoint::new("127.0.0.1", port)))
        .poll()
        .await;
    let seen: Vec<_> = report
        .readings
        .iter()
        .map(|r| (r.value.clone(), r.quality, r.detail.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                Value::None,
                Quality::Bad,
                Some("BCD digit 0xA at nibble 2 of 0x12A4 is not a decimal digit".into())
            ),
            (
                Value::None,
                Quality::Bad,
                Some("BCD digit 0xF at nibble 7 of 0x0012345F is not a decimal digit".into())
            ),
            (Value::Number(42.0), Quality::Good, None),
        ]
    );
}
