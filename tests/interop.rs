//! regpoll against an independent Modbus TCP server: pymodbus, loaded with known
//! values of every type and byte order that it encodes itself (Python's struct
//! module). Every decoded value must come back exactly.

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
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start the pymodbus server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pymodbus server did not report its port: {line:?}"));
    (Server(child), port, dir)
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
    for order in ["ABCD", "BADC"] {
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

#[tokio::test]
async fn every_type_and_order_decodes_exactly_from_an_independent_server() {
    let cases = cases();
    let mut spec: Vec<serde_json::Value> = cases.iter().map(|c| c.2.clone()).collect();
    spec.push(json!({"kind": "holding", "address": 150, "type": "bool", "bit": 13, "value": true}));
    spec.push(json!({"kind": "coil", "address": 7, "type": "bool", "value": true}));
    spec.push(json!({"kind": "discrete", "address": 9, "type": "bool", "value": true}));
    let (_server, port, _dir) = start_pymodbus(&json!(spec));

    let mut yaml = format!(
        "devices:\n  - name: independent\n    host: 127.0.0.1\n    port: {port}\n    registers:\n"
    );
    for (_, reg, _, _) in &cases {
        yaml += &format!("      - {reg}\n");
    }
    yaml += "      - { name: alarm, kind: holding, address: 150, bit: 13 }\n      - { name: alarm_off, kind: holding, address: 150, bit: 12 }\n";
    yaml += "      - { name: pump_on, kind: coil, address: 7 }\n      - { name: coil_off, kind: coil, address: 8 }\n      - { name: running, kind: discrete, address: 9 }\n";
    let device = Arc::new(config::parse(&yaml, "interop.yaml").unwrap().remove(0));
    let poller = DevicePoller::new(
        Arc::clone(&device),
        Arc::new(Endpoint::new("127.0.0.1", port)),
    );
    let report = poller.poll().await;

    let read = |name: &str| {
        let r = report
            .readings
            .iter()
            .find(|r| *report.register(r).name == *name)
            .unwrap_or_else(|| panic!("no reading for {name}"));
        assert_eq!(r.quality, Quality::Good, "{name}: {:?}", r.detail);
        r.value.clone()
    };
    for (name, _, _, expect) in &cases {
        assert_eq!(read(name), *expect, "{name}");
    }
    assert_eq!(read("alarm"), Value::Bool(true));
    assert_eq!(read("alarm_off"), Value::Bool(false));
    assert_eq!(read("pump_on"), Value::Bool(true));
    assert_eq!(read("coil_off"), Value::Bool(false));
    assert_eq!(read("running"), Value::Bool(true));
    assert_eq!(report.readings.len(), cases.len() + 5);
}
