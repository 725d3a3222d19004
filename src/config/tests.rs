use std::time::Duration;

use super::*;
use crate::registry::{
    Address, Align, Byte, DataType, Demotion, LogFrames, RegisterKind, RequestLimits, Schedule,
    UnitId, ValidRange, WordOrder,
};

fn errors(yaml: &str) -> Vec<ConfigError> {
    parse(yaml, "devices.yaml")
        .expect_err("expected the file to be rejected")
        .0
}

fn only_error(yaml: &str) -> ConfigError {
    let mut e = errors(yaml);
    assert_eq!(e.len(), 1, "expected exactly one error, got {e:#?}");
    e.remove(0)
}

const GOOD: &str = "\
defaults:
  port: 5020
  every: 2s
devices:
  - name: boiler-1
    host: 127.0.0.1
    unit_id: 3
    tags: { site: plant-a }
    registers:
      - name: supply_temp
        kind: holding
        address: 100
        type: f32
        order: CDAB
        scale: 0.1
        unit: \"°C\"
        valid: { min: 0, max: 150 }
      - name: pump_on
        kind: coil
        address: 7
";

#[test]
fn a_good_file_yields_devices_with_defaults_applied() {
    let devices = parse(GOOD, "devices.yaml").unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(d.name, "boiler-1");
    assert_eq!(d.port, 5020);
    assert_eq!(d.unit_id, UnitId(3));
    assert_eq!(d.schedule, Schedule::every(Duration::from_secs(2)));
    assert_eq!(d.timeout, DEFAULT_TIMEOUT);
    assert_eq!(d.tags.get("site").map(String::as_str), Some("plant-a"));
    let t = &d.registers[0];
    assert_eq!(
        (t.kind, t.address, t.data_type, t.order),
        (
            RegisterKind::Holding,
            Address(100),
            DataType::F32,
            WordOrder::Cdab
        )
    );
    assert_eq!(t.scale, 0.1);
    assert_eq!(t.valid, ValidRange::new(Some(0.0), Some(150.0)));
    assert_eq!(t.unit.as_deref(), Some("°C"));
    assert_eq!(d.registers[1].data_type, DataType::Bool);
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let yaml = GOOD.replace("        scale: 0.1\n", "        scael: 0.1\n");
    let e = only_error(&yaml);
    assert_eq!(e.line, 15, "{e}");
    assert!(e.message.contains("unknown register field `scael`"), "{e}");
    assert!(e.message.contains("scale"), "should list valid fields: {e}");
}

#[test]
fn duplicate_device_name_points_at_the_second_one() {
    let yaml = format!(
        "{GOOD}  - name: boiler-1\n    host: 10.0.0.2\n    registers:\n      - {{ name: a, kind: holding, address: 1 }}\n"
    );
    let e = only_error(&yaml);
    assert_eq!(e.line, 21, "{e}");
    assert!(
        e.message.contains("duplicate device name") && e.message.contains("line 5"),
        "{e}"
    );
}

#[test]
fn duplicate_register_name_names_device_and_register() {
    let yaml = GOOD.replace("name: pump_on", "name: supply_temp");
    let e = only_error(&yaml);
    assert_eq!(e.line, 18, "{e}");
    assert_eq!(e.device.as_deref(), Some("boiler-1"));
    assert_eq!(e.register.as_deref(), Some("supply_temp"));
    assert!(e.message.contains("duplicate register name"), "{e}");
}

#[test]
fn value_running_past_65535_is_rejected() {
    let yaml = GOOD.replace("address: 100", "address: 65535");
    let e = only_error(&yaml);
    assert_eq!(e.line, 12, "{e}");
    assert!(e.message.contains("runs past 65535"), "{e}");
    assert!(
        only_error(&GOOD.replace("address: 100", "address: 70000"))
            .message
            .contains("outside 0..65535")
    );
}

#[test]
fn zero_or_malformed_interval_is_rejected() {
    let e = only_error(&GOOD.replace("every: 2s", "every: 0s"));
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("at least 1ms"), "{e}");
    let e = only_error(&GOOD.replace("every: 2s", "every: often"));
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("500ms, 5s, 1m"), "{e}");
}

#[test]
fn unknown_type_lists_valid_types() {
    let e = only_error(&GOOD.replace("type: f32", "type: f128"));
    assert_eq!(e.line, 13, "{e}");
    assert!(
        e.message.contains("unknown type `f128`") && e.message.contains("u32"),
        "{e}"
    );
    let shown = e.to_string();
    assert!(shown.starts_with("devices.yaml:13:"), "{shown}");
    assert!(
        shown.contains("device `boiler-1`: register `supply_temp`:"),
        "{shown}"
    );
}

#[test]
fn schedules_are_every_or_cron_with_a_zone_and_registers_may_have_their_own() {
    let yaml = GOOD
        .replace(
            "    unit_id: 3\n",
            "    unit_id: 3\n    cron: \"0 */5 * * * *\"\n    timezone: Europe/Berlin\n",
        )
        .replace(
            "        address: 7\n",
            "        address: 7\n        every: 500ms\n",
        );
    let d = &parse(&yaml, "devices.yaml").unwrap()[0];
    assert_eq!(
        d.schedule.describe(),
        "cron \"0 */5 * * * *\" Europe/Berlin",
        "the device's own cron wins over defaults' every"
    );
    assert_eq!(
        d.registers[1].schedule,
        Some(Box::new(Schedule::every(Duration::from_millis(500))))
    );
    let groups = d.poll_groups();
    assert_eq!(
        groups
            .iter()
            .map(|(s, m)| (s.describe(), m.clone()))
            .collect::<Vec<_>>(),
        [
            (d.schedule.describe(), vec![0]),
            ("every 500ms".to_string(), vec![1])
        ]
    );
    let strict = parse(
        &GOOD.replace("  every: 2s\n", "  every: 2s\n  align: strict\n"),
        "devices.yaml",
    )
    .unwrap();
    assert_eq!(
        strict[0].schedule,
        Schedule::Every {
            every: Duration::from_secs(2),
            align: Align::Strict
        }
    );
}

#[test]
fn schedule_mistakes_are_explained() {
    let cases = [
        (
            GOOD.replace(
                "    unit_id: 3\n",
                "    unit_id: 3\n    every: 1s\n    cron: \"* * * * * *\"\n",
            ),
            "either `every` or `cron`",
        ),
        (
            GOOD.replace(
                "    unit_id: 3\n",
                "    unit_id: 3\n    cron: \"*/5 * * * *\"\n",
            ),
            "six fields, seconds first",
        ),
        (
            GOOD.replace(
                "    unit_id: 3\n",
                "    unit_id: 3\n    cron: \"* * * * * *\"\n    timezone: Europe/Atlantis\n",
            ),
            "unknown time zone",
        ),
        (
            GOOD.replace(
                "    unit_id: 3\n",
                "    unit_id: 3\n    cron: \"* * * * * *\"\n    align: strict\n",
            ),
            "`align` applies to `every`",
        ),
        (
            GOOD.replace("  every: 2s\n", "  every: 2s\n  align: sideways\n"),
            "unknown align `sideways`",
        ),
    ];
    for (yaml, message) in cases {
        let e = only_error(&yaml);
        assert!(e.message.contains(message), "expected `{message}` in `{e}`");
    }
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let yaml = GOOD
        .replace("type: f32", "type: f16")
        .replace("address: 7", "address: -1");
    let e = errors(&yaml);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].line < e[1].line);
}

#[test]
fn coil_with_a_word_type_is_rejected() {
    let yaml = GOOD.replace(
        "        address: 7\n",
        "        address: 7\n        type: u16\n",
    );
    assert!(only_error(&yaml).message.contains("use `type: bool`"));
}

#[test]
fn missing_host_and_registers_are_explained() {
    let e = errors("devices:\n  - name: x\n");
    assert!(e.iter().any(|e| e.message.contains("no `host`")), "{e:#?}");
    assert!(
        e.iter().any(|e| e.message.contains("no `registers`")),
        "{e:#?}"
    );
    assert!(e.iter().all(|e| e.line == 2), "{e:#?}");
}

fn with_register(register: &str) -> String {
    GOOD.replace(
        "      - name: pump_on\n",
        &format!("      - {register}\n      - name: pump_on\n"),
    )
}

#[test]
fn every_type_order_bit_field_and_string_is_accepted() {
    let yaml = with_register("{ name: total, kind: input, address: 0, type: u64, order: GHEFCDAB }")
        .replace("      - name: pump_on\n", "      - { name: alarm, kind: holding, address: 200, bit: 15 }\n      - { name: serial, kind: holding, address: 300, type: string, length: 8, order: BADC }\n      - { name: energy, kind: input, address: 10, type: f64, order: DCBA }\n      - name: pump_on\n");
    let d = &parse(&yaml, "devices.yaml").unwrap()[0];
    let by = |n: &str| d.registers.iter().find(|r| *r.name == *n).unwrap().clone();
    assert_eq!(
        (by("total").data_type, by("total").order),
        (DataType::U64, WordOrder::Cdab)
    );
    assert_eq!(
        (by("alarm").data_type, by("alarm").bit),
        (DataType::Bool, Some(15))
    );
    assert_eq!(
        (by("serial").width(), by("serial").order),
        (8, WordOrder::Badc)
    );
    assert_eq!(by("energy").width(), 4);
}

#[test]
fn shapes_that_cannot_work_are_explained() {
    let cases = [
        (
            "{ name: x, kind: holding, address: 0, type: bool }",
            "needs `bit: 0..15`",
        ),
        (
            "{ name: x, kind: holding, address: 0, bit: 16 }",
            "outside 0..15",
        ),
        (
            "{ name: x, kind: coil, address: 0, bit: 1 }",
            "single bits already",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: u16, bit: 1 }",
            "needs `type: bool`",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: string }",
            "needs `length`",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: u32, length: 2 }",
            "only for `type: string`",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: string, length: 126 }",
            "outside 1..125",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: u16, order: CDAB }",
            "swaps words",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: f32, order: GHEFCDAB }",
            "64-bit order; for f32 use CDAB",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: f32, order: ACBD }",
            "valid orders",
        ),
        (
            "{ name: x, kind: holding, address: 65530, type: string, length: 10 }",
            "runs past 65535",
        ),
    ];
    for (register, message) in cases {
        let e = only_error(&with_register(register));
        assert_eq!(e.line, 18, "{register}: {e}");
        assert!(
            e.message.contains(message),
            "{register}: expected `{message}` in `{e}`"
        );
    }
}

#[test]
fn the_new_types_are_read_with_their_byte_and_order() {
    let yaml = with_register(
        "{ name: mode, kind: holding, address: 400, type: u8, byte: high }\n      - { name: trim, kind: holding, address: 400, type: i8, byte: low }\n      - { name: level, kind: input, address: 401, type: f16, order: BADC }\n      - { name: hours, kind: input, address: 402, type: bcd32, order: CDAB }\n      - { name: code, kind: input, address: 404, type: bcd16 }\n      - { name: label, kind: input, address: 405, type: string, length: 4, order: DCBA }",
    );
    let d = &parse(&yaml, "devices.yaml").unwrap()[0];
    let by = |n: &str| d.registers.iter().find(|r| &*r.name == n).unwrap();
    assert_eq!(
        (by("mode").data_type, by("mode").byte),
        (DataType::U8, Some(Byte::High))
    );
    assert_eq!(
        (by("trim").data_type, by("trim").byte),
        (DataType::I8, Some(Byte::Low))
    );
    assert_eq!(
        (by("level").data_type, by("level").order),
        (DataType::F16, WordOrder::Badc)
    );
    assert_eq!(
        (by("hours").width(), by("hours").order),
        (2, WordOrder::Cdab)
    );
    assert_eq!((by("code").width(), by("code").byte), (1, None));
    assert_eq!(by("label").order, WordOrder::Dcba);
}

#[test]
fn hostile_bytes_and_orders_of_the_new_types_are_explained_in_place() {
    let cases = [
        (
            "{ name: x, kind: holding, address: 0, type: u8, byte: middle }",
            "unknown byte `middle`; valid bytes: high, low",
            "middle",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: u16, byte: high }",
            "`byte` is only for `type: u8` or `type: i8`; u16 uses the whole register",
            "high",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: i8 }",
            "`type: i8` needs `byte: high` (bits 15..8, first on the wire) or `byte: low`",
            "i8 }",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: u8, byte: low, order: BADC }",
            "BADC does not apply to u8: a byte has no byte order",
            "BADC",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: bcd16, order: CDAB }",
            "CDAB swaps words, but bcd16 has one word; use ABCD or BADC",
            "CDAB",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: bcd32, order: GHEFCDAB }",
            "GHEFCDAB is a 64-bit order; for bcd32 use CDAB",
            "GHEFCDAB",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: f16, order: DCBA }",
            "DCBA swaps words, but f16 has one word",
            "DCBA",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: string, length: 4, order: HGFEDCBA }",
            "HGFEDCBA is a 64-bit order; for string use DCBA",
            "HGFEDCBA",
        ),
        (
            "{ name: x, kind: holding, address: 0, type: u16, byte: [high] }",
            "`byte` is a list; valid: high, low",
            "[high]",
        ),
    ];
    for (register, message, at) in cases {
        let e = only_error(&with_register(register));
        // The place of the offending text: `      - ` starts the line.
        let column = 9 + register.find(at).unwrap() as u64;
        assert_eq!((e.line, e.column), (18, column), "{register}: {e}");
        assert!(
            e.message.contains(message),
            "{register}: expected `{message}` in `{e}`"
        );
    }
}

#[test]
fn request_limits_are_device_settings_with_defaults() {
    let yaml = GOOD.replace("    unit_id: 3\n", "    unit_id: 3\n    max_registers_per_request: 40\n    max_gap: 0\n    retries: 3\n    connect_timeout: 250ms\n    pause_between_requests: 20ms\n");
    let d = &parse(&yaml, "devices.yaml").unwrap()[0];
    assert_eq!(
        d.limits,
        RequestLimits {
            max_registers: 40,
            max_bits: 2000,
            max_gap: 0,
            retries: 3,
            connect_timeout: Duration::from_millis(250),
            pause: Duration::from_millis(20),
            ..RequestLimits::DEFAULT
        }
    );
    let d = &parse(GOOD, "devices.yaml").unwrap()[0];
    assert_eq!(d.limits, RequestLimits::DEFAULT);
    let e = only_error(&GOOD.replace(
        "    unit_id: 3\n",
        "    unit_id: 3\n    max_registers_per_request: 200\n",
    ));
    assert!(
        e.message
            .contains("max_registers_per_request 200 is outside 1..125"),
        "{e}"
    );
    let limited = with_register("{ name: s, kind: holding, address: 0, type: string, length: 5 }")
        .replace(
            "    unit_id: 3\n",
            "    unit_id: 3\n    max_registers_per_request: 4\n",
        );
    let e = only_error(&limited);
    assert!(e.message.contains("length 5 is outside 1..4"), "{e}");
}

#[test]
fn log_frames_is_off_unless_a_device_or_the_defaults_turn_it_on() {
    let d = &parse(GOOD, "devices.yaml").unwrap()[0];
    assert_eq!(d.limits.log_frames, LogFrames::Off);
    // `off` is a YAML 1.1 boolean; written as a word it is still the word.
    for (yaml, want) in [
        ("    log_frames: header\n", LogFrames::Header),
        ("    log_frames: payload\n", LogFrames::Payload),
        ("    log_frames: off\n", LogFrames::Off),
    ] {
        let file = GOOD.replace("    unit_id: 3\n", &format!("    unit_id: 3\n{yaml}"));
        assert_eq!(
            parse(&file, "devices.yaml").unwrap()[0].limits.log_frames,
            want
        );
    }
    let from_defaults = GOOD.replace("  every: 2s\n", "  every: 2s\n  log_frames: payload\n");
    let d = &parse(&from_defaults, "devices.yaml").unwrap()[0];
    assert_eq!(d.limits.log_frames, LogFrames::Payload);
}

#[test]
fn a_log_frames_typo_is_refused_where_it_is_with_the_valid_words() {
    for (value, found) in [
        ("headers", "unknown log_frames `headers`"),
        ("on", "unknown log_frames `on`"),
    ] {
        let e = only_error(&GOOD.replace(
            "    unit_id: 3\n",
            &format!("    unit_id: 3\n    log_frames: {value}\n"),
        ));
        assert_eq!(
            (e.line, e.column, e.device.as_deref()),
            (8, 17, Some("boiler-1")),
            "{e}"
        );
        assert!(
            e.message.contains(found) && e.message.contains("valid: off, header, payload"),
            "{e}"
        );
    }
    let e = only_error(&GOOD.replace(
        "    unit_id: 3\n",
        "    unit_id: 3\n    log_frames: [header]\n",
    ));
    assert!(
        e.message
            .contains("`log_frames` is a list; valid: off (default), header or payload"),
        "{e}"
    );
}

#[test]
fn pacing_and_demotion_are_device_settings_with_defaults() {
    let d = &parse(GOOD, "devices.yaml").unwrap()[0];
    assert_eq!(d.limits.delay_after_connect, Duration::ZERO);
    assert_eq!(d.limits.max_in_flight, 1);
    assert_eq!(
        d.limits.demotion,
        Demotion {
            after: 3,
            max: Duration::from_secs(60)
        }
    );
    let yaml = GOOD.replace(
        "    unit_id: 3\n",
        "    unit_id: 3\n    delay_after_connect: 250ms\n    max_in_flight: 4\n    demote_after: 5\n    demote_max: 10m\n",
    );
    let d = &parse(&yaml, "devices.yaml").unwrap()[0];
    assert_eq!(d.limits.delay_after_connect, Duration::from_millis(250));
    assert_eq!(d.limits.max_in_flight, 4);
    assert_eq!(
        d.limits.demotion,
        Demotion {
            after: 5,
            max: Duration::from_secs(600)
        }
    );
    // From `defaults`, like every device setting.
    let yaml = GOOD.replace("  every: 2s\n", "  every: 2s\n  demote_after: 1\n");
    assert_eq!(
        parse(&yaml, "devices.yaml").unwrap()[0]
            .limits
            .demotion
            .after,
        1
    );
}

#[test]
fn pacing_and_demotion_outside_their_bounds_say_where_and_what_is_valid() {
    for (setting, want) in [
        ("demote_after: 0", "demote_after 0 is outside 1..100"),
        ("demote_after: 1000", "demote_after 1000 is outside 1..100"),
        ("demote_after: three", "demote_after"),
        ("demote_max: 500ms", "`demote_max` 500ms is outside 1s..1d"),
        ("demote_max: 2d", "`demote_max` 2d is outside 1s..1d"),
        ("demote_max: soon", "`demote_max`"),
        (
            "delay_after_connect: 2m",
            "`delay_after_connect` 2m is outside 0s..60s",
        ),
        ("delay_after_connect: -1s", "`delay_after_connect`"),
        ("max_in_flight: 0", "max_in_flight 0 is outside 1..16"),
        ("max_in_flight: 17", "max_in_flight 17 is outside 1..16"),
    ] {
        let e = only_error(&GOOD.replace(
            "    unit_id: 3\n",
            &format!("    unit_id: 3\n    {setting}\n"),
        ));
        assert!(e.message.contains(want), "{setting}: {e}");
        assert_eq!(
            (e.line, e.device.as_deref()),
            (8, Some("boiler-1")),
            "{setting}: {e}"
        );
    }
}

#[test]
fn devices_on_one_endpoint_that_disagree_on_delay_after_connect_are_refused_naming_both() {
    let yaml = "\
devices:
  - name: meter-1
    host: 10.0.0.5
    delay_after_connect: 200ms
    registers: [{ name: r, kind: holding, address: 0 }]
  - name: meter-2
    host: 10.0.0.5
    unit_id: 2
    delay_after_connect: 500ms
    registers: [{ name: r, kind: holding, address: 0 }]
  - name: elsewhere
    host: 10.0.0.6
    delay_after_connect: 500ms
    registers: [{ name: r, kind: holding, address: 0 }]
";
    let e = only_error(yaml);
    assert_eq!((e.line, e.device.as_deref()), (9, Some("meter-2")), "{e}");
    assert!(
        e.message.contains(
            "`delay_after_connect` 500 ms differs from 200 ms of device `meter-1` (devices.yaml:4:26) on the same endpoint 10.0.0.5:502"
        ),
        "{e}"
    );
    let e = only_error(
        &yaml
            .replace("    delay_after_connect: 200ms\n", "    max_in_flight: 4\n")
            .replace("    delay_after_connect: 500ms\n", ""),
    );
    assert_eq!((e.line, e.device.as_deref()), (6, Some("meter-2")), "{e}");
    assert!(
        e.message.contains(
            "`max_in_flight` 1 differs from 4 of device `meter-1` (devices.yaml:4:20) on the same endpoint 10.0.0.5:502"
        ),
        "{e}"
    );
    // Set once in `defaults`, every device agrees.
    let agreed = format!(
        "defaults: {{ delay_after_connect: 1s }}\n{}",
        yaml.replace("    delay_after_connect: 200ms\n", "")
            .replace("    delay_after_connect: 500ms\n", "")
    );
    assert!(parse(&agreed, "devices.yaml").is_ok());
}

#[test]
fn a_large_fleet_is_not_refused_by_the_yaml_budget() {
    // 3,000 devices × 10 registers, about 2 MB and 300,000 YAML nodes: past
    // serde-saphyr's default cap of 250,000 nodes, which refused such files
    // (10,000 devices failed at device 2,500).
    let mut yaml = String::from("defaults: { host: 127.0.0.1, every: 1s }\ndevices:\n");
    for d in 0..3_000 {
        yaml.push_str(&format!(
            "  - name: dev-{d}\n    port: {}\n    unit_id: {}\n    registers:\n",
            10_000 + d / 100,
            d % 100 + 1
        ));
        for r in 0..10 {
            yaml.push_str(&format!(
                "      - {{ name: r{r}, kind: holding, address: {r}, type: u16 }}\n"
            ));
        }
    }
    let devices = parse(&yaml, "fleet.yaml").expect("a large honest file parses");
    assert_eq!(devices.len(), 3_000);
    assert_eq!(devices[2_999].registers.len(), 10);
}

#[test]
fn a_register_map_can_be_shared_through_a_yaml_anchor() {
    // 2,000 devices × 100 registers from about 100 KB of text: 1.4 million
    // nodes once the aliases are expanded.
    // The first device defines the anchor; the others refer to it.
    let mut yaml = String::from(
        "defaults: { host: 127.0.0.1, every: 1s }\ndevices:\n  - name: m0\n    port: 10000\n    unit_id: 1\n    registers: &meter\n",
    );
    for r in 0..100 {
        yaml.push_str(&format!(
            "    - {{ name: r{r}, kind: holding, address: {r}, type: u16 }}\n"
        ));
    }
    for d in 1..2_000 {
        yaml.push_str(&format!(
            "  - {{ name: m{d}, port: {}, unit_id: {}, registers: *meter }}\n",
            10_000 + d / 100,
            d % 100 + 1
        ));
    }
    let devices = parse(&yaml, "fleet.yaml").expect("anchored register maps parse");
    assert_eq!(devices.len(), 2_000);
    assert_eq!(devices[1_999].registers.len(), 100);
    assert_eq!(&*devices[1_999].registers[99].name, "r99");
}

/// `(line, column, message)` of every error, for assertions on places.
fn places(yaml: &str) -> Vec<(u64, u64, String)> {
    errors(yaml)
        .into_iter()
        .map(|e| (e.line, e.column, e.to_string()))
        .collect()
}

#[test]
fn seven_mistakes_are_seven_errors_each_with_its_place_and_field() {
    let yaml = "\
devices:
  - name: m1
    host: 127.0.0.1
    port: \"five-oh-two\"
    unit_id: [1]
    active: maybe
    hots: 10.0.0.1
    registers:
      - name: v
        kind: holding
        address: 0
        scale: x
        offset: {a: 1}
        address: 1
";
    let e = places(yaml);
    let want = [
        (
            4,
            11,
            "`port` is the string `five-oh-two`; valid: an integer 1..65535",
        ),
        (5, 14, "`unit_id` is a list; valid: an integer 0..255"),
        (
            6,
            13,
            "`active` is the string `maybe`; valid: true or false",
        ),
        (
            7,
            5,
            "unknown device field `hots`; valid fields: name, host,",
        ),
        (12, 16, "`scale` is the string `x`; valid: a number"),
        (13, 17, "`offset` is a map; valid: a number"),
        (
            14,
            9,
            "`address` is set twice in one register, here and at line 11, column 9",
        ),
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for ((line, column, text), (wl, wc, wt)) in e.iter().zip(want) {
        assert_eq!((*line, *column), (wl, wc), "{text}");
        assert!(text.contains(wt), "{text:?} should contain {wt:?}");
        assert!(
            text.starts_with(&format!("devices.yaml:{wl}:{wc}: device `m1`: ")),
            "{text}"
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_names_its_field_and_what_is_valid() {
    for (line, field, valid) in [
        (
            "    port: \"five-oh-two\"\n",
            "`port` is the string `five-oh-two`",
            "an integer 1..65535",
        ),
        ("    port: [1]\n", "`port` is a list", "an integer 1..65535"),
        (
            "    port: 1.5\n",
            "`port` is the number `1.5`",
            "an integer 1..65535",
        ),
        (
            "    tags: [a]\n",
            "`tags` is a list",
            "a map of tag names to text",
        ),
        ("    tags: { site: [a] }\n", "tag `site` is a list", "text"),
        (
            "    registers: { a: 1 }\n",
            "`registers` is a map",
            "a list of registers",
        ),
        ("    every: [5s]\n", "`every` is a list", "a duration"),
    ] {
        let registers = "    registers:\n      - { name: v, kind: holding, address: 0 }\n";
        let registers = if line.contains("registers") {
            ""
        } else {
            registers
        };
        let yaml = format!("devices:\n  - name: d\n    host: h\n{line}{registers}");
        let e = errors(&yaml);
        assert!(
            e.iter().any(
                |e| e.message.contains(field) && e.message.contains(&format!("valid: {valid}"))
            ),
            "{line:?}: {e:#?}"
        );
    }
    for (value, found) in [
        ("x", "the string `x`"),
        ("[1]", "a list"),
        ("true", "the boolean `true`"),
    ] {
        let e = only_error(&GOOD.replace("scale: 0.1", &format!("scale: {value}")));
        assert_eq!(
            (e.line, e.register.as_deref()),
            (15, Some("supply_temp")),
            "{e}"
        );
        assert!(
            e.message
                .contains(&format!("`scale` is {found}; valid: a number")),
            "{e}"
        );
    }
}

#[test]
fn quoted_numbers_and_empty_values_still_read_as_before() {
    let yaml = GOOD
        .replace("port: 5020", "port: \"5021\"")
        .replace("scale: 0.1", "scale: \"0.5\"")
        .replace("unit_id: 3", "unit_id:");
    let d = &parse(&yaml, "q.yaml").unwrap()[0];
    assert_eq!((d.port, d.unit_id), (5021, UnitId(DEFAULT_UNIT_ID)));
    assert_eq!(d.registers[0].scale, 0.5);
}

#[test]
fn entries_that_are_not_maps_are_explained_and_the_rest_still_checked() {
    let yaml = "devices:\n  - just-a-name\n  - name: d\n    host: h\n    registers:\n      - 5\n      - { name: v, kind: holding, address: 0, valid: 3 }\n";
    let e = places(yaml);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].2
            .contains("device is the string `just-a-name`; valid: a map of fields"),
        "{e:#?}"
    );
    assert!(
        e[1].2.contains("a register must be a map of fields") && e[1].2.contains("the integer `5`"),
        "{e:#?}"
    );
    assert!(
        e[2].2
            .contains("`valid` is the integer `3`; valid: a map with `min` and/or `max`"),
        "{e:#?}"
    );
}

#[test]
fn a_key_written_twice_is_named_with_both_places() {
    let e = only_error(&GOOD.replace("    unit_id: 3\n", "    unit_id: 3\n    host: 10.0.0.9\n"));
    assert_eq!((e.line, e.column), (8, 5), "{e}");
    assert!(
        e.message
            .contains("`host` is set twice in one device, here and at line 6, column 5; keep one"),
        "{e}"
    );
    let e = only_error(&GOOD.replace("  every: 2s\n", "  every: 2s\n  every: 3s\n"));
    assert!(
        e.message.contains("`every` is set twice in one `defaults`"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_utf8_names_the_first_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"devices:\n  - name: m\xc3\xa91\xff\n").unwrap();
    let e = load(&path).unwrap_err().0;
    assert_eq!(e.len(), 1, "{e:#?}");
    // `  - name: mé1` is 13 characters (14 bytes): the bad byte is the 14th character.
    assert_eq!((e[0].line, e[0].column), (2, 14), "{}", e[0]);
    assert!(e[0].message.contains("not UTF-8: byte 0xFF"), "{}", e[0]);
    assert!(e[0].message.contains("save it as UTF-8"), "{}", e[0]);
}

#[test]
fn a_timezone_without_a_cron_is_an_error_that_says_how_to_fix_it() {
    let e = only_error(&GOOD.replace(
        "    unit_id: 3\n",
        "    unit_id: 3\n    timezone: Europe/Paris\n",
    ));
    assert_eq!((e.line, e.register.as_deref()), (8, None), "{e}");
    assert!(
        e.message
            .contains("`timezone` applies only to a `cron` schedule"),
        "{e}"
    );
    assert!(e.message.contains("remove `timezone`"), "{e}");
    let e = only_error(&GOOD.replace("        unit: \"°C\"\n", "        timezone: UTC\n"));
    assert_eq!(e.register.as_deref(), Some("supply_temp"), "{e}");
    // With a cron, in `defaults` (for the devices that use cron) or beside it, it is fine.
    let ok = GOOD
        .replace("  every: 2s\n", "  timezone: Europe/Paris\n")
        .replace(
            "    unit_id: 3\n",
            "    cron: \"0 0 * * * *\"\n    timezone: UTC\n",
        );
    parse(&ok, "ok.yaml").unwrap();
}

#[test]
fn a_cron_that_can_never_fire_is_an_error_found_quickly() {
    let started = std::time::Instant::now();
    let e = only_error(&GOOD.replace("  every: 2s\n", "  cron: \"0 0 0 30 2 *\"\n"));
    let took = started.elapsed();
    println!("never-firing cron checked in {took:?}");
    assert!(e.message.contains("cron `0 0 0 30 2 *` never fires"), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // 29 February fires every four years, and 31 April never.
    parse(
        &GOOD.replace("  every: 2s\n", "  cron: \"0 0 0 29 2 *\"\n"),
        "leap.yaml",
    )
    .unwrap();
    assert!(
        only_error(&GOOD.replace("  every: 2s\n", "  cron: \"0 0 0 31 4 *\"\n"))
            .message
            .contains("never fires")
    );
}

/// 20,000 devices sharing one 100-register map through an anchor: 1.3 MB of
/// text that expands to 120 MB of scalars (past serde-saphyr's default of
/// 64 MiB, which refused it with `budget breached: ScalarBytes`).
fn fleet_sharing_one_map(devices: usize) -> String {
    let mut yaml = String::from(
        "defaults: { host: 127.0.0.1, every: 1s }\ndevices:\n  - name: m0\n    port: 10000\n    unit_id: 1\n    registers: &meter\n",
    );
    for r in 0..100 {
        yaml.push_str(&format!(
            "    - {{ name: r{r}, kind: holding, address: {r}, type: u16 }}\n"
        ));
    }
    for d in 1..devices {
        yaml.push_str(&format!(
            "  - {{ name: m{d}, port: {}, unit_id: {}, registers: *meter }}\n",
            10_000 + d / 100,
            d % 100 + 1
        ));
    }
    yaml
}

#[test]
fn the_yaml_budget_admits_20000_devices_sharing_a_100_register_map() {
    // The budget is what refused this file; checking every one of its two
    // million registers takes minutes in an unoptimised test build (seconds
    // in release), so this reads the whole file through the parser with
    // the same options and budget, and the 2,000-device test above checks
    // the full load.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(&path, fleet_sharing_one_map(20_000)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let started = std::time::Instant::now();
    let read: Result<serde::de::IgnoredAny, _> =
        serde_saphyr::from_str_with_options(&text, yaml_options(&text));
    println!(
        "{} bytes, 20,000 devices × 100 registers through one anchor: parsed in {:?}",
        text.len(),
        started.elapsed()
    );
    read.expect("the file's budget grows with its size");
}

#[test]
fn an_alias_bomb_is_refused_with_the_limit_named() {
    // Each level doubles the one below it: 2^40 scalars from 40 short lines.
    let mut yaml = String::from("devices:\n  - &a0 [x, x]\n");
    for i in 1..40 {
        yaml.push_str(&format!("  - &a{i} [*a{p}, *a{p}]\n", p = i - 1));
    }
    let started = std::time::Instant::now();
    let e = only_error(&yaml);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.message.contains(
            "past regpoll's limit of 64 YAML nodes and 1024 bytes of text per byte of the file"
        ),
        "{e}"
    );
}

mod deadband;
mod transport;

#[test]
fn a_device_has_no_tenant_unless_it_or_the_defaults_name_one() {
    assert_eq!(parse(GOOD, "devices.yaml").unwrap()[0].tenant, None);
    let own = GOOD.replace("    unit_id: 3\n", "    unit_id: 3\n    tenant: acme\n");
    let d = &parse(&own, "devices.yaml").unwrap()[0];
    assert_eq!(d.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    let defaulted = GOOD.replace("  every: 2s\n", "  every: 2s\n  tenant: globex\n");
    let d = &parse(&defaulted, "devices.yaml").unwrap()[0];
    assert_eq!(d.tenant.as_ref().map(|t| t.as_str()), Some("globex"));
    let both = defaulted.replace("    unit_id: 3\n", "    unit_id: 3\n    tenant: acme\n");
    let d = &parse(&both, "devices.yaml").unwrap()[0];
    assert_eq!(d.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
}

#[test]
fn a_tenant_that_could_escape_a_key_or_role_name_is_refused_where_it_is_written() {
    for (value, says) in [
        ("Acme", "starts with `A`"),
        ("\"acme:*\"", "contains `:`"),
        ("\"a b\"", "contains ` `"),
        ("\"\"", "tenant is empty"),
        (&"a".repeat(64), "64 characters long"),
    ] {
        let yaml = GOOD.replace(
            "    unit_id: 3\n",
            &format!("    unit_id: 3\n    tenant: {value}\n"),
        );
        let e = only_error(&yaml);
        assert_eq!((e.line, e.column), (8, 13), "{value}: {e:?}");
        assert_eq!(e.device.as_deref(), Some("boiler-1"));
        assert!(e.message.contains(says), "{value}: {}", e.message);
        assert!(
            e.message.contains("valid: 1-63 characters of a-z"),
            "{}",
            e.message
        );
    }
    let e = only_error(&GOOD.replace("  every: 2s\n", "  every: 2s\n  tenant: ACME\n"));
    assert_eq!((e.line, e.column), (4, 11), "{e:?}");
    let e = only_error(&GOOD.replace("    unit_id: 3\n", "    unit_id: 3\n    tenant: [acme]\n"));
    assert!(e.message.contains("`tenant` is a list"), "{}", e.message);
}
