//! `transport` and `serial`: the defaults, what each transport refuses, and
//! devices that share a link but disagree on it.

use super::*;
use crate::registry::{DataBits, Parity, SerialLine, StopBits, Transport};

const REGS: &str = "    registers:\n      - { name: t, kind: holding, address: 0, type: u16 }\n";

fn file(devices: &[&str]) -> String {
    let mut s = String::from("devices:\n");
    for d in devices {
        s.push_str(d);
        s.push_str(REGS);
    }
    s
}

fn place(e: &ConfigError) -> String {
    format!("{}:{}:{}", e.file, e.line, e.column)
}

#[test]
fn transports_default_to_tcp_and_serial_lines_to_9600_8n1() {
    let yaml = "defaults:\n  serial: { baud: 19200 }\n".to_string()
        + &file(&[
            "  - name: a\n    host: 10.0.0.5\n",
            "  - name: b\n    host: 10.0.0.6\n    transport: rtu-over-tcp\n    unit_id: 7\n",
            "  - name: c\n    transport: rtu\n    unit_id: 2\n    serial: { path: /dev/ttyUSB0 }\n",
            "  - name: d\n    transport: rtu\n    unit_id: 3\n    serial: { path: /dev/ttyUSB0, parity: none, data_bits: 8, stop_bits: 1 }\n",
            "  - name: e\n    transport: rtu\n    serial: { path: /dev/ttyS1, baud: 9600, parity: even, data_bits: 7, stop_bits: 2 }\n",
        ]);
    let devices = parse(&yaml, "devices.yaml").unwrap();
    assert_eq!(devices[0].transport, Transport::Tcp);
    assert_eq!(devices[1].transport, Transport::RtuOverTcp);
    assert_eq!(devices[1].endpoint(), "10.0.0.6:502");
    let usb0 = SerialLine {
        baud: 19_200,
        ..SerialLine::new("/dev/ttyUSB0")
    };
    assert_eq!(devices[2].transport, Transport::Rtu(Box::new(usb0.clone())));
    assert_eq!(devices[3].transport, Transport::Rtu(Box::new(usb0)));
    assert_eq!(devices[2].endpoint(), "/dev/ttyUSB0");
    assert_eq!(devices[2].host, "", "a serial device has no host");
    let s1 = devices[4].transport.serial().unwrap();
    assert_eq!(
        (s1.baud, s1.parity, s1.data_bits, s1.stop_bits),
        (9600, Parity::Even, DataBits::Seven, StopBits::Two)
    );
    assert_eq!(SerialLine::new("x").settings(), "9600 8N1");
}

#[test]
fn hostile_transports_and_serial_lines_are_refused_where_they_are_written() {
    let cases: [(&str, &str, (u64, u64)); 12] = [
        (
            "  - name: a\n    host: h\n    transport: rs485\n",
            "unknown transport `rs485`; valid transports: tcp, rtu-over-tcp, rtu",
            (4, 16),
        ),
        (
            "  - name: a\n    transport: rtu\n",
            "transport rtu needs the serial line's path: serial: {path: /dev/ttyUSB0}",
            (2, 5),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: { baud: 9600 }\n",
            "transport rtu needs the serial line's path",
            (4, 13),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: /dev/ttyUSB0\n",
            "`serial` is the string `/dev/ttyUSB0`; valid: a map with path, baud",
            (4, 13),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: { path: /dev/ttyUSB0, baud: 96000000 }\n",
            "baud 96000000 is outside 300..4000000",
            (4, 41),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: { path: /dev/ttyUSB0, parity: mark }\n",
            "unknown parity `mark`; valid: none, even, odd",
            (4, 43),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: { path: /dev/ttyUSB0, data_bits: 9 }\n",
            "data_bits 9 is neither 7 nor 8",
            (4, 46),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: { path: /dev/ttyUSB0, stop_bits: 1.5 }\n",
            "`stop_bits` is the number `1.5`; valid: 1 (default) or 2",
            (4, 46),
        ),
        (
            "  - name: a\n    transport: rtu\n    serial: { path: /dev/ttyUSB0, flow: rts }\n",
            "unknown `serial` line field `flow`; valid fields: path, baud",
            (4, 35),
        ),
        (
            "  - name: a\n    transport: rtu\n    host: 10.0.0.5\n    serial: { path: /dev/ttyUSB0 }\n",
            "`host` does not apply to transport rtu (a serial line); remove it",
            (4, 11),
        ),
        (
            "  - name: a\n    host: h\n    serial: { path: /dev/ttyUSB0 }\n",
            "`serial` is only for transport rtu, and this device's transport is tcp",
            (4, 13),
        ),
        (
            "  - name: a\n    transport: rtu\n    unit_id: 0\n    serial: { path: /dev/ttyUSB0 }\n",
            "unit_id 0 is the broadcast address: no device answers it, so it cannot be read",
            (4, 14),
        ),
    ];
    for (device, want, at) in cases {
        let e = only_error(&file(&[device]));
        assert!(e.message.contains(want), "{device}: {e}");
        assert_eq!((e.line, e.column), at, "{device}: {e}");
        assert_eq!(e.device.as_deref(), Some("a"), "{e}");
    }
    let e = only_error(&file(&[
        "  - name: a\n    host: h\n    transport: rtu-over-tcp\n    unit_id: 248\n",
    ]));
    assert!(
        e.message.contains(
            "unit_id 248 is reserved on RTU links (valid: 1..247) (transport rtu-over-tcp)"
        ),
        "{e}"
    );
    // On Modbus TCP the unit id is the gateway's to route: 0 and 255 pass.
    parse(
        &file(&["  - name: a\n    host: h\n    unit_id: 0\n"]),
        "devices.yaml",
    )
    .unwrap();
    parse(
        &file(&["  - name: a\n    host: h\n    unit_id: 255\n"]),
        "devices.yaml",
    )
    .unwrap();
}

#[test]
fn devices_on_one_serial_path_must_agree_on_its_settings_and_both_are_named() {
    let yaml = file(&[
        "  - name: first\n    transport: rtu\n    unit_id: 1\n    serial: { path: /dev/ttyUSB0, baud: 9600 }\n",
        "  - name: second\n    transport: rtu\n    unit_id: 2\n    serial: { path: /dev/ttyUSB0, baud: 19200, parity: even }\n",
    ]);
    let e = only_error(&yaml);
    assert_eq!(place(&e), "devices.yaml:11:13");
    assert_eq!(e.device.as_deref(), Some("second"));
    assert!(
        e.message.contains("serial line /dev/ttyUSB0 is 19200 8E1 here but 9600 8N1 for device `first` (devices.yaml:5:13)"),
        "{e}"
    );
}

#[test]
fn one_gateway_cannot_speak_two_framings() {
    let yaml = file(&[
        "  - name: first\n    host: 10.0.0.5\n",
        "  - name: second\n    host: 10.0.0.5\n    transport: rtu-over-tcp\n    unit_id: 2\n",
    ]);
    let e = only_error(&yaml);
    assert_eq!(place(&e), "devices.yaml:8:16");
    assert!(
        e.message.contains(
            "10.0.0.5:502 is rtu-over-tcp here but tcp for device `first` (devices.yaml:2:5)"
        ),
        "{e}"
    );
}

#[test]
fn max_in_flight_needs_tcp_and_link_settings_are_shared_per_link() {
    let yaml = file(&[
        "  - name: a\n    host: h\n    transport: rtu-over-tcp\n    unit_id: 1\n    max_in_flight: 4\n",
    ]);
    let e = only_error(&yaml);
    assert_eq!(place(&e), "devices.yaml:6:20", "{e}");
    assert!(
        e.message.contains("`max_in_flight` 4 needs transport tcp"),
        "{e}"
    );
    // Two serial lines are two links: their delays may differ.
    let yaml = file(&[
        "  - name: a\n    transport: rtu\n    unit_id: 1\n    delay_after_connect: 100ms\n    serial: { path: /dev/ttyS0 }\n",
        "  - name: b\n    transport: rtu\n    unit_id: 1\n    serial: { path: /dev/ttyS1 }\n",
    ]);
    assert_eq!(parse(&yaml, "devices.yaml").unwrap().len(), 2);
    // One serial line is one link: they may not.
    let yaml = file(&[
        "  - name: a\n    transport: rtu\n    unit_id: 1\n    delay_after_connect: 100ms\n    serial: { path: /dev/ttyS0 }\n",
        "  - name: b\n    transport: rtu\n    unit_id: 2\n    serial: { path: /dev/ttyS0 }\n",
    ]);
    let e = only_error(&yaml);
    assert!(
        e.message.contains("differs from 100 ms of device `a`") && e.message.contains("/dev/ttyS0"),
        "{e}"
    );
}
