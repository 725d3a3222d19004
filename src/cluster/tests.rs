use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn links(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:502", i / 250, i % 250))
        .collect()
}

fn spread(links: &[String], instances: &[String]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for l in links {
        *by.entry(owner_of(l, instances).unwrap().to_string())
            .or_insert(0) += 1;
    }
    by
}

#[test]
fn rendezvous_spreads_links_evenly() {
    let links = links(3_000);
    let by = spread(&links, &ids(3));
    assert_eq!(by.len(), 3, "{by:?}");
    for (id, n) in &by {
        assert!((850..=1150).contains(n), "{id} owns {n} of 3,000: {by:?}");
    }
}

#[test]
fn rendezvous_ignores_the_order_instances_are_listed_in() {
    let mut reversed = ids(5);
    reversed.reverse();
    for l in links(200) {
        assert_eq!(owner_of(&l, &ids(5)), owner_of(&l, &reversed));
    }
    assert_eq!(owner_of("a:502", &[]), None);
}

#[test]
fn a_join_moves_about_one_link_in_n_and_only_to_the_newcomer() {
    let links = links(3_000);
    let three = ids(3);
    let four = ids(4);
    let mut moved = 0;
    for l in &links {
        let (before, after) = (owner_of(l, &three).unwrap(), owner_of(l, &four).unwrap());
        if before != after {
            assert_eq!(after, "node-3", "{l} moved between old instances");
            moved += 1;
        }
    }
    assert!((600..=900).contains(&moved), "{moved} of 3,000 moved");
    // A leave moves only the leaver's links.
    for l in &links {
        let (before, after) = (owner_of(l, &four).unwrap(), owner_of(l, &three).unwrap());
        if before != "node-3" {
            assert_eq!(before, after);
        }
    }
}

#[test]
fn timings_that_would_fence_a_healthy_instance_are_refused() {
    let ok = ClusterSettings {
        instance_id: "a".into(),
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
        fence_margin: Duration::from_secs(1),
        address: None,
    };
    ok.check().unwrap();
    let tight = ClusterSettings {
        heartbeat: Duration::from_secs(4),
        ..ok.clone()
    };
    let e = tight.check().unwrap_err().to_string();
    assert!(e.contains("--cluster-lease (5s) must be longer"), "{e}");
    let unnamed = ClusterSettings {
        instance_id: " ".into(),
        ..ok
    };
    assert!(unnamed.check().is_err());
}

#[test]
fn the_fence_opens_until_its_deadline_and_closes_at_once() {
    let fence = Fence::default();
    assert!(!fence.is_open(), "closed until the first renewal");
    let now = std::time::Instant::now();
    fence.extend_to(now + Duration::from_millis(200));
    assert!(fence.open_at(now + Duration::from_millis(199)));
    assert!(!fence.open_at(now + Duration::from_millis(200)));
    // A late answer to an older renewal does not shorten it.
    fence.extend_to(now + Duration::from_millis(100));
    assert!(fence.open_at(now + Duration::from_millis(150)));
    fence.close();
    assert!(!fence.is_open());
    assert_eq!(fence.remaining(), Duration::ZERO);
}
