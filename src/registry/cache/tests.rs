use super::*;
use std::sync::Arc;

const DB: &str = "127.0.0.1:5432/regpoll";

/// Devices as `run` loads them: with ids, two of them sharing one map, and
/// every kind of field the registry stores.
fn registry() -> Vec<Device> {
    let yaml = r#"
defaults: { host: 10.0.0.1, every: 2s }
devices:
  - name: meter-1
    tags: { site: plant-a }
    registers: &meter
      - { name: v, kind: holding, address: 0, type: f32, scale: 0.1, unit: V, valid: { min: 0, max: 300 } }
      - { name: alarm, kind: holding, address: 2, bit: 15 }
      - { name: serial, kind: holding, address: 300, type: string, length: 8, order: BADC }
      - { name: fast, kind: input, address: 10, type: u16, every: 500ms }
  - name: meter-2
    port: 1502
    unit_id: 7
    tenant: acme
    registers: *meter
  - name: pump
    cron: "*/10 * * * * *"
    timezone: Europe/Berlin
    max_registers_per_request: 10
    log_frames: header
    registers:
      - { name: on, kind: coil, address: 0 }
"#;
    let mut devices = crate::config::parse(yaml, "test.yaml").unwrap();
    // One shared map per model, as the loader hands them out.
    let mut maps = RegisterMaps::default();
    for (n, d) in devices.iter_mut().enumerate() {
        let n = n as i32;
        d.id = 10 + n;
        d.register_ids = (0..d.registers.len() as i32).map(|i| 100 * n + i).collect();
        d.registers = maps.share(d.registers.to_vec());
    }
    devices
}

fn decoded(bytes: &[u8]) -> Result<Loaded, CacheError> {
    decode(bytes, Path::new("cache.json"), DB)
}

#[test]
fn a_cached_registry_reads_back_equal_with_its_ids() {
    let devices = registry();
    let bytes = encode(&devices, DB);
    let loaded = decoded(&bytes).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    assert_eq!(loaded.devices, devices);
    assert_eq!(loaded.devices[1].register_id(3), 103);
    assert!(
        Arc::ptr_eq(&loaded.devices[0].registers, &loaded.devices[1].registers),
        "devices of one map share it again"
    );
    let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(file["version"], VERSION);
    assert_eq!(
        file["maps"].as_array().unwrap().len(),
        2,
        "a map is stored once"
    );
}

#[test]
fn a_fleet_of_one_model_costs_little_to_cache() {
    let model = registry().remove(0);
    let fleet: Vec<Device> = (0..10_000)
        .map(|i| Device {
            id: i,
            name: format!("meter-{i}"),
            register_ids: (0..4).map(|r| i * 4 + r).collect(),
            ..model.clone()
        })
        .collect();
    let bytes = encode(&fleet, DB);
    assert!(bytes.len() < 6_000_000, "{} bytes", bytes.len());
    assert_eq!(decoded(&bytes).unwrap().devices.len(), 10_000);
}

#[test]
fn garbage_truncation_and_other_files_are_damaged_caches() {
    let good = encode(&registry(), DB);
    for (what, bytes) in [
        ("garbage", b"\x00\xffnot json".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        (
            "other JSON",
            br#"{"format":"something else","version":1}"#.to_vec(),
        ),
        ("no header", br#"{"devices":[]}"#.to_vec()),
    ] {
        let e = decoded(&bytes).unwrap_err();
        assert!(matches!(e, CacheError::Damaged { .. }), "{what}: {e}");
        assert!(e.to_string().contains("is ignored"), "{what}: {e}");
    }
}

#[test]
fn a_cache_of_another_version_is_refused_by_name() {
    let text = String::from_utf8(encode(&registry(), DB)).unwrap();
    let newer = text.replacen(r#""version":1"#, r#""version":2"#, 1);
    let e = decoded(newer.as_bytes()).unwrap_err();
    assert!(matches!(e, CacheError::Version { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("format version 2"), "{e}");
}

#[test]
fn a_cache_of_another_database_is_not_used() {
    let bytes = encode(&registry(), "db-host:5432/regpoll");
    let e = decoded(&bytes).unwrap_err();
    assert!(matches!(e, CacheError::OtherDatabase { .. }), "{e}");
    assert!(e.to_string().contains("db-host:5432/regpoll"), "{e}");
}

#[test]
fn a_device_that_fails_the_registry_checks_is_left_out_and_named() {
    let text = String::from_utf8(encode(&registry(), DB)).unwrap();
    // meter-2's port edited to one that cannot exist, and pump's ids cut short.
    let bad = text
        .replacen(r#""port":1502"#, r#""port":70000"#, 1)
        .replacen(r#""register_ids":[200]"#, r#""register_ids":[]"#, 1);
    let loaded = decoded(bad.as_bytes()).unwrap();
    let names: Vec<&str> = loaded.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["meter-1"]);
    assert_eq!(loaded.problems.len(), 2, "{:?}", loaded.problems);
    assert!(loaded.problems[0].contains("meter-2") && loaded.problems[0].contains("70000"));
    assert!(loaded.problems[1].contains("pump") && loaded.problems[1].contains("register ids"));
}

#[test]
fn log_frames_is_cached_only_when_on_and_an_unknown_word_leaves_its_device_out() {
    let text = String::from_utf8(encode(&registry(), DB)).unwrap();
    // Only pump logs frames: the other devices' entries are as before the setting.
    assert_eq!(text.matches(r#""log_frames""#).count(), 1, "{text}");
    assert!(text.contains(r#""log_frames":"header""#), "{text}");
    let loud = text.replacen(r#""log_frames":"header""#, r#""log_frames":"loud""#, 1);
    let loaded = decoded(loud.as_bytes()).unwrap();
    assert_eq!(loaded.devices.len(), 2);
    assert!(
        loaded.problems[0].contains("pump")
            && loaded.problems[0].contains("unknown log_frames `loud`"),
        "{:?}",
        loaded.problems
    );
}

#[test]
fn a_missing_cache_says_where_it_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let e = load(&path, DB).unwrap_err();
    assert!(matches!(e, CacheError::Missing(_)), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[tokio::test]
async fn the_writer_writes_only_when_the_registry_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir.path().join("data"));
    let mut devices = registry();
    let mut writer = CacheWriter::new(path.clone(), DB.to_string());
    writer.store(&devices).await;
    assert_eq!(load(&path, DB).unwrap().devices, devices);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, [std::ffi::OsString::from("registry-cache.json")]);

    // Unchanged: not written (the removed file stays removed).
    std::fs::remove_file(&path).unwrap();
    writer.store(&devices).await;
    assert!(!path.exists());
    // A writer started over the file of the same registry does not rewrite it.
    std::fs::write(&path, encode(&devices[..1], DB)).unwrap();
    let mut restarted = CacheWriter::new(path.clone(), DB.to_string());
    std::fs::remove_file(&path).unwrap();
    restarted.store(&devices[..1]).await;
    assert!(!path.exists());

    devices.pop();
    writer.store(&devices).await;
    assert_eq!(load(&path, DB).unwrap().devices, devices);
}

#[tokio::test]
async fn a_cache_that_cannot_be_written_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    // The data dir is a file: nothing can be created under it.
    let blocker = dir.path().join("data");
    std::fs::write(&blocker, "").unwrap();
    let mut writer = CacheWriter::new(path_in(&blocker), DB.to_string());
    writer.store(&registry()).await;
    assert!(writer.failing);
    assert!(writer.last.is_none(), "a failed write is tried again");
}

#[test]
fn rtu_devices_read_back_with_their_transport_and_tcp_ones_without_new_keys() {
    let yaml = r#"
devices:
  - name: gw
    host: 10.0.0.1
    transport: rtu-over-tcp
    unit_id: 3
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: bus
    transport: rtu
    serial: { path: /dev/ttyUSB0, baud: 38400, parity: odd, stop_bits: 2 }
    registers: [ { name: r, kind: holding, address: 0 } ]
"#;
    let mut devices = crate::config::parse(yaml, "test.yaml").unwrap();
    for (n, d) in devices.iter_mut().enumerate() {
        d.id = 1 + n as i32;
        d.register_ids = Box::new([10 + n as i32]);
    }
    devices.extend(registry());
    let bytes = encode(&devices, DB);
    let loaded = decoded(&bytes).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    assert_eq!(loaded.devices, devices);
    // A TCP device is written as before transports existed.
    let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let text = file.to_string();
    assert!(
        text.contains(r#""transport":"rtu""#) && text.contains(r#""baud":38400"#),
        "{text}"
    );
    assert_eq!(text.matches(r#""transport""#).count(), 2, "{text}");
}

#[test]
fn a_tenant_is_cached_only_where_a_device_has_one_and_a_bad_one_skips_its_device() {
    let devices = registry();
    let text = String::from_utf8(encode(&devices, DB)).unwrap();
    assert_eq!(text.matches("\"tenant\"").count(), 1, "{text}");
    let loaded = decoded(text.as_bytes()).unwrap();
    assert_eq!(loaded.devices[1].tenant_name(), Some("acme"));
    // A cache edited by hand into a tenant that would escape its keys.
    let edited = text.replace("\"tenant\":\"acme\"", "\"tenant\":\"acme:*\"");
    let loaded = decoded(edited.as_bytes()).unwrap();
    assert!(loaded.devices.iter().all(|d| d.name != "meter-2"));
    assert!(
        loaded
            .problems
            .iter()
            .any(|p| p.contains("meter-2") && p.contains("contains `:`")),
        "{:?}",
        loaded.problems
    );
}
