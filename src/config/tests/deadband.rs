//! `deadband`, `deadband_percent` and `heartbeat`: inheritance from the
//! device and `defaults`, and every value that means nothing, refused where
//! it is written.

use super::*;
use crate::registry::{Band, Deadband};

fn place(e: &ConfigError) -> String {
    format!("{}:{}:{}", e.file, e.line, e.column)
}

fn deadbands(yaml: &str) -> Vec<Option<Deadband>> {
    parse(yaml, "devices.yaml").unwrap()[0]
        .registers
        .iter()
        .map(|r| r.deadband.as_deref().copied())
        .collect()
}

fn band(band: Band, heartbeat_s: Option<u64>) -> Option<Deadband> {
    Some(Deadband {
        band,
        heartbeat: heartbeat_s.map(Duration::from_secs),
    })
}

#[test]
fn a_register_takes_its_devices_deadband_and_its_own_wins() {
    let yaml = "\
defaults:
  heartbeat: 1h
devices:
  - name: a
    host: 127.0.0.1
    deadband_percent: 1
    heartbeat: 15m
    registers:
      - { name: t, kind: holding, address: 0, type: f32 }
      - { name: p, kind: holding, address: 2, type: f32, deadband: 0.5 }
      - { name: q, kind: holding, address: 4, heartbeat: 30s }
      - { name: s, kind: holding, address: 5, type: string, length: 2 }
      - { name: b, kind: coil, address: 0 }
      - { name: z, kind: coil, address: 1, deadband: 0 }
  - name: plain
    host: 127.0.0.1
    registers:
      - { name: t, kind: holding, address: 0 }
";
    assert_eq!(
        deadbands(yaml),
        [
            band(Band::Percent(1.0), Some(900)),
            band(Band::Absolute(0.5), Some(900)),
            band(Band::Percent(1.0), Some(30)),
            // No distance between two texts or two bits: changes only.
            band(Band::Absolute(0.0), Some(900)),
            band(Band::Absolute(0.0), Some(900)),
            band(Band::Absolute(0.0), Some(900)),
        ]
    );
    // `defaults`' heartbeat is for the devices with a band; `plain` has none.
    let devices = parse(yaml, "devices.yaml").unwrap();
    assert!(devices[1].registers[0].deadband.is_none());
}

#[test]
fn a_device_without_deadband_keys_stores_every_reading() {
    let yaml = "devices:\n  - name: a\n    host: h\n    registers:\n      - { name: t, kind: holding, address: 0 }\n";
    assert_eq!(deadbands(yaml), [None]);
}

#[test]
fn nonsense_deadbands_are_refused_where_they_are_written() {
    // (keys, the text the error points at, what it says)
    let cases = [
        (
            "deadband: -0.5",
            "-0.5",
            "deadband -0.5 must be a finite number, 0 or more",
        ),
        (
            "deadband: .nan",
            ".nan",
            "deadband NaN must be a finite number",
        ),
        (
            "deadband: .inf",
            ".inf",
            "deadband inf must be a finite number",
        ),
        (
            "deadband: lots",
            "lots",
            "`deadband` is the string `lots`; valid: a number",
        ),
        (
            "deadband_percent: 150",
            "150",
            "deadband_percent 150 is outside 0..100",
        ),
        (
            "deadband_percent: -1",
            "-1",
            "deadband_percent -1 is outside 0..100",
        ),
        (
            "deadband: 1, heartbeat: 0s",
            "0s",
            "`heartbeat`: `0s` must be at least 1ms",
        ),
        (
            "deadband: 1, heartbeat: 8d",
            "8d",
            "`heartbeat`: `8d` is longer than 7 days",
        ),
        (
            "deadband: 1, heartbeat: 15 ",
            "15 ",
            "`heartbeat`: `15` has no unit",
        ),
        (
            "heartbeat: 15m",
            "15m",
            "`heartbeat` needs `deadband` or `deadband_percent`",
        ),
        (
            "deadband: 1, deadband_percent: 2",
            "2 ",
            "`deadband` and `deadband_percent` are both set (the other at line 4, column 77); keep one",
        ),
    ];
    for (keys, at, message) in cases {
        let yaml = format!(
            "devices:\n  - name: a\n    host: h\n    registers: [ {{ name: t, kind: holding, address: 0, type: f32, {keys} }} ]\n"
        );
        let line = yaml.lines().nth(3).unwrap();
        let column = line.rfind(at).unwrap() + 1;
        let e = only_error(&yaml);
        assert_eq!(place(&e), format!("devices.yaml:4:{column}"), "{keys}: {e}");
        assert!(e.message.contains(message), "{keys}: {}", e.message);
        assert_eq!(
            (e.device.as_deref(), e.register.as_deref()),
            (Some("a"), Some("t"))
        );
    }
}

#[test]
fn a_band_on_a_text_or_a_bit_is_refused_but_changes_only_is_not() {
    for (reg, t) in [
        ("type: string, length: 2", "string"),
        ("type: bool, bit: 3", "bool"),
    ] {
        for keys in ["deadband: 0.5", "deadband_percent: 0"] {
            let yaml = format!(
                "devices:\n  - name: a\n    host: h\n    registers:\n      - {{ name: t, kind: holding, address: 0, {reg}, {keys} }}\n"
            );
            let e = only_error(&yaml);
            assert!(
                e.message.contains(&format!(
                    "a {t} register has no distance between two values; only `deadband: 0` (store changes only) applies to it"
                )),
                "{}",
                e.message
            );
            assert_eq!(e.line, 5);
        }
        let yaml = format!(
            "devices:\n  - name: a\n    host: h\n    registers:\n      - {{ name: t, kind: holding, address: 0, {reg}, deadband: 0 }}\n"
        );
        assert_eq!(deadbands(&yaml), [band(Band::Absolute(0.0), None)]);
    }
}

#[test]
fn a_heartbeat_on_a_device_none_of_whose_registers_has_a_band_is_refused() {
    let yaml = "devices:\n  - name: a\n    host: h\n    heartbeat: 15m\n    registers:\n      - { name: t, kind: holding, address: 0 }\n";
    let e = only_error(yaml);
    assert_eq!(place(&e), "devices.yaml:4:16");
    assert!(
        e.message.contains("`heartbeat` needs `deadband`"),
        "{}",
        e.message
    );
}

#[test]
fn defaults_with_a_nonsense_band_are_reported_once_not_per_device() {
    let yaml = "defaults:\n  deadband_percent: 101\ndevices:\n  - { name: a, host: h, registers: [ { name: t, kind: holding, address: 0 } ] }\n  - { name: b, host: h, registers: [ { name: t, kind: holding, address: 0 } ] }\n";
    let e = only_error(yaml);
    assert_eq!(place(&e), "devices.yaml:2:21");
    assert_eq!((e.device.as_deref(), e.register.as_deref()), (None, None));
}

#[test]
fn a_device_band_over_a_defaults_band_replaces_it_whole() {
    let yaml = "defaults:\n  deadband: 2\n  heartbeat: 1m\ndevices:\n  - name: a\n    host: h\n    deadband_percent: 5\n    registers:\n      - { name: t, kind: holding, address: 0 }\n";
    assert_eq!(deadbands(yaml), [band(Band::Percent(5.0), Some(60))]);
}
