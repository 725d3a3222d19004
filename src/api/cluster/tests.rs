use std::time::{Duration, Instant};

use chrono::TimeZone as _;

use super::*;
use crate::cluster::{ClusterSettings, Member};

fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
}

fn member(id: &str, age: f64, links: u32, devices: u32, this: bool) -> Member {
    Member {
        instance_id: id.to_string(),
        address: Some(format!("{id}.local:8080")),
        started_at: at(-600),
        heartbeat_age_s: age,
        links_owned: links,
        devices_owned: devices,
        serial_lines: if id == "a" {
            vec!["/dev/ttyUSB0".to_string()]
        } else {
            Vec::new()
        },
        this,
    }
}

/// Instance `b` of a cluster of `a` and `b`, renewed at `at(0)`, as the
/// cluster task leaves it after a heartbeat, with its fence open.
pub(crate) fn two_instances() -> ClusterView {
    let view = ClusterView::new(ClusterSettings {
        instance_id: "b".to_string(),
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        fence_margin: Duration::from_millis(1500),
        address: Some("b.local:8080".to_string()),
    });
    view.update(|s| {
        s.session = Some(7);
        s.members = vec![member("a", 0.4, 2, 9, false), member("b", 0.0, 1, 2, true)];
        // Acquired a link since the renewal: the database still says 1 and 2.
        s.links_owned = 2;
        s.devices_owned = 5;
        s.renewed_at = Some(at(0));
    });
    view.fence
        .extend_to(Instant::now() + Duration::from_secs(60));
    view.handovers.acquired.store(3, Ordering::Relaxed);
    view.handovers.taken_over.store(1, Ordering::Relaxed);
    view.handovers.released.store(1, Ordering::Relaxed);
    view
}

#[test]
fn the_view_lists_members_with_this_instance_marked_and_its_counts_current() {
    let view = two_instances();
    let body = view_json(&view, 4, at(2));
    assert_eq!(body["enabled"], true);
    assert_eq!(body["this"], "b");
    assert_eq!(body["lease_s"], 5.0);
    assert_eq!(body["heartbeat_s"], 1.0);
    assert_eq!(body["fence_margin_s"], 1.5);
    assert_eq!(body["session"], 7);
    assert_eq!(body["fenced"], false);
    assert_eq!(body["last_error"], Value::Null);
    assert_eq!(body["renewed_at"], rfc3339(at(0)));
    let instances = body["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    let a = &instances[0];
    assert_eq!(a["instance_id"], "a");
    assert_eq!(a["address"], "a.local:8080");
    assert_eq!(a["started_at"], rfc3339(at(-600)));
    assert_eq!(a["serial_lines"], json!(["/dev/ttyUSB0"]));
    assert_eq!(a["this"], false);
    assert_eq!(
        (a["links_owned"].clone(), a["devices_owned"].clone()),
        (json!(2), json!(9))
    );
    // Two seconds after the heartbeat that measured 0.4 s.
    assert!(
        (a["heartbeat_age_s"].as_f64().unwrap() - 2.4).abs() < 1e-9,
        "{a}"
    );
    let b = &instances[1];
    assert_eq!(b["this"], true);
    assert_eq!(
        (b["links_owned"].clone(), b["devices_owned"].clone()),
        (json!(2), json!(5))
    );
    assert_eq!(
        body["handovers"],
        json!({"acquired": 3, "taken_over": 1, "released": 1, "fenced": 0, "fenced_polls": 4})
    );
    // The owners are the handler's (from the database), never the view's.
    assert!(body.get("owners").is_none());
}

#[test]
fn a_fenced_instance_says_so_with_the_heartbeats_error() {
    let view = two_instances();
    view.fence.close();
    view.update(|s| s.last_error = Some("connection refused".to_string()));
    let body = view_json(&view, 0, at(9));
    assert_eq!(body["fenced"], true);
    assert_eq!(body["last_error"], "connection refused");
    // The last known members stay listed, their ages still growing.
    assert!(body["instances"][0]["heartbeat_age_s"].as_f64().unwrap() > 9.0);

    let (ready_body, problem) = ready(&view);
    assert_eq!(ready_body["fenced"], true);
    assert_eq!(ready_body["session"], 7);
    assert_eq!(ready_body["devices_owned"], 5);
    assert_eq!(ready_body["links_owned"], 2);
    let problem = problem.expect("a fenced instance is not ready");
    assert!(
        problem.starts_with("cluster: fenced") && problem.contains("connection refused"),
        "{problem}"
    );
}

#[test]
fn an_instance_that_has_not_joined_is_fenced_and_says_why() {
    let view = ClusterView::new(two_instances().settings.clone());
    let (body, problem) = ready(&view);
    assert_eq!(body["session"], Value::Null);
    assert_eq!(body["fenced"], true);
    let problem = problem.unwrap();
    assert!(
        problem.contains("not a member yet") && problem.contains("--instance-id b"),
        "{problem}"
    );
    let body = view_json(&view, 0, at(0));
    assert_eq!(body["instances"], json!([]));
    assert_eq!(body["renewed_at"], Value::Null);
}

#[test]
fn a_healthy_member_is_ready() {
    let (body, problem) = ready(&two_instances());
    assert_eq!(problem, None);
    assert_eq!(body["fenced"], false);
    assert_eq!(body["last_error"], Value::Null);
}

#[test]
fn without_a_cluster_every_field_is_there_and_empty() {
    let body = disabled();
    assert_eq!(body["enabled"], false);
    assert_eq!(body["this"], Value::Null);
    assert_eq!(body["instances"], json!([]));
    assert_eq!(body["owners"], Value::Null);
    assert_eq!(body["fenced"], false);
    // The same keys as a clustered answer (plus its owners), so a client
    // reads both the same way.
    let mut clustered: Vec<String> = view_json(&two_instances(), 0, at(0))
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    clustered.push("owners".to_string());
    clustered.sort();
    let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, clustered);
}

#[test]
fn owners_come_from_the_links_except_what_this_instance_polls_or_nobody_can() {
    let links: Vec<(String, String)> = [
        ("g1-1", "10.0.0.1:502"),
        ("g1-2", "10.0.0.1:502"),
        ("g2-1", "10.0.0.2:502"),
        ("bus-1", "/dev/ttyUSB0"),
        ("broken", "10.0.0.1:502"),
        ("moved", "10.0.0.9:502"),
    ]
    .into_iter()
    .map(|(n, l)| (n.to_string(), l.to_string()))
    .collect();
    let owners: HashMap<String, String> = [("10.0.0.1:502", "a"), ("/dev/ttyUSB0", "a")]
        .into_iter()
        .map(|(l, i)| (l.to_string(), i.to_string()))
        .collect();
    // `moved` is polled here on its previous link (the registry has a new
    // one nobody owns yet); `b-only` is polled here but already gone from
    // the registry.
    let polled: BTreeSet<String> = ["moved".to_string(), "b-only".to_string()].into();
    let skipped: BTreeSet<String> = ["broken".to_string()].into();
    let map = owner_map("b", &polled, &skipped, links, &owners);
    let a = Some("a".to_string());
    let b = Some("b".to_string());
    let want: BTreeMap<String, Option<String>> = [
        ("g1-1", a.clone()),
        ("g1-2", a.clone()),
        ("g2-1", None),
        ("bus-1", a),
        ("broken", None),
        ("moved", b.clone()),
        ("b-only", b),
    ]
    .into_iter()
    .map(|(n, o)| (n.to_string(), o))
    .collect();
    assert_eq!(map, want);
}

#[test]
fn hostile_device_and_instance_names_stay_data_in_the_json() {
    let links = vec![("a\"b<script>".to_string(), "h:1".to_string())];
    let owners: HashMap<String, String> = [("h:1".to_string(), "x\"}\n{".to_string())].into();
    let map = owner_map("b", &BTreeSet::new(), &BTreeSet::new(), links, &owners);
    let text = json!(map).to_string();
    let back: BTreeMap<String, Option<String>> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, map);
}
