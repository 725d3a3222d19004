use super::*;

fn params(query: &str) -> Params {
    Params::parse(
        Some(query),
        &["devices", "search", "state", "tag", "page", "per_page"],
    )
    .unwrap()
}

fn names(query: &str, max: usize) -> Result<Vec<String>, String> {
    device_names(&params(query), max).map_err(|e| e.1)
}

#[test]
fn natural_order_counts_digits_by_value() {
    let mut v = vec!["s10", "s2", "s1", "S3", "s100", "s02", "pump", "s1a", "a"];
    v.sort_by(|a, b| natural_cmp(a, b));
    assert_eq!(
        v,
        ["a", "pump", "s1", "s1a", "s02", "s2", "S3", "s10", "s100"]
    );
    assert_eq!(natural_cmp("s2", "s10"), Ordering::Less);
    assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
    // Numbers longer than any integer type still compare by value.
    assert_eq!(
        natural_cmp("d99999999999999999999999", "d100000000000000000000000"),
        Ordering::Less
    );
}

#[test]
fn a_device_list_is_split_on_commas_and_repeats_count_once() {
    assert_eq!(
        names("devices=a,b.1,c_2,a", 3).unwrap(),
        ["a", "b.1", "c_2"]
    );
}

#[test]
fn more_names_than_the_limit_are_refused_with_what_to_do() {
    let m = names("devices=a,b,c", 2).unwrap_err();
    assert!(
        m.contains("more than 2 devices") && m.contains("split"),
        "{m}"
    );
    // A list too long to hold `max` names is refused before it is split.
    let long = format!("devices={}", "x".repeat(2 * 101 + 1));
    let m = names(&long, 2).unwrap_err();
    assert!(m.contains("more than 2 devices"), "{m}");
}

#[test]
fn bad_characters_and_empty_names_are_refused_by_name() {
    let m = names("devices=a,b%20c", 5).unwrap_err();
    assert!(m.contains("`b c`") && m.contains("letters, digits"), "{m}");
    let m = names("devices=a,,b", 5).unwrap_err();
    assert!(m.contains("empty name"), "{m}");
    let m = names("devices=a%2F..%2Fetc", 5).unwrap_err();
    assert!(m.contains("contains `/`"), "{m}");
    let m = names("devices=", 5).unwrap_err();
    assert!(m.contains("`devices` is required"), "{m}");
}

#[test]
fn the_filter_matches_name_state_and_tag() {
    let tags: BTreeMap<String, String> = [("site", "plant-a"), ("line", "3")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let d = Row {
        name: "Pump-7",
        state: "down",
        tags: Some(&tags),
        device: None,
        reason: None,
        attention: true,
    };
    let keeps = |q: &str| Filter::parse(&params(q)).unwrap().keeps(&d);
    assert!(keeps(""));
    assert!(keeps("search=pump"));
    assert!(!keeps("search=boiler"));
    assert!(keeps("state=down") && keeps("state=attention"));
    assert!(!keeps("state=up"));
    assert!(keeps("tag=site%3Dplant-a") && keeps("tag=plant-a") && keeps("tag=line=3"));
    assert!(!keeps("tag=site%3Dplant-b") && !keeps("tag=other%3Dplant-a"));
}

#[test]
fn page_sizes_are_bounded() {
    let m = count(&params("per_page=201"), "per_page", 50, 200)
        .unwrap_err()
        .1;
    assert!(m.contains("between 1 and 200"), "{m}");
    assert!(count(&params("per_page=0"), "per_page", 50, 200).is_err());
    let m = count(&params("page=-1"), "page", 0, usize::MAX)
        .unwrap_err()
        .1;
    assert!(m.contains("not a whole number"), "{m}");
    assert_eq!(count(&params(""), "per_page", 50, 200).unwrap(), 50);
}
