use super::*;

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
    assert_eq!(d.schedule, Schedule::Every(Duration::from_secs(2)));
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
    assert_eq!(
        t.valid,
        ValidRange {
            min: Some(0.0),
            max: Some(150.0)
        }
    );
    assert_eq!(t.unit.as_deref(), Some("°C"));
    assert_eq!(d.registers[1].data_type, DataType::Bool);
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let yaml = GOOD.replace("        scale: 0.1\n", "        scael: 0.1\n");
    let e = only_error(&yaml);
    assert_eq!(e.line, 15, "{e}");
    assert!(e.message.contains("unknown field `scael`"), "{e}");
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
    let e = only_error(&GOOD.replace("type: f32", "type: f16"));
    assert_eq!(e.line, 13, "{e}");
    assert!(
        e.message.contains("unknown type `f16`") && e.message.contains("u32"),
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
fn contract_features_not_built_yet_are_refused_not_ignored() {
    let e = only_error(&GOOD.replace("type: f32", "type: f64"));
    assert!(e.message.contains("not supported yet"), "{e}");
    let e = only_error(&GOOD.replace("every: 2s", "cron: \"*/5 * * * * *\""));
    assert!(e.message.contains("`cron` is not supported yet"), "{e}");
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
