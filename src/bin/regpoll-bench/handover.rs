//! The cluster scenario's figures, from timestamps alone: who owns what,
//! when the ownership of a dead or moved link changed, and the gaps in each
//! device's readings around it. Kept apart from the processes and the
//! database so that each rule can be checked on made-up timestamps.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub type Ts = DateTime<Utc>;

/// Which instance owns each link, by link.
pub type Owners = BTreeMap<String, String>;

/// Seconds from `a` to `b` (negative when `b` is earlier).
pub fn secs_between(a: Ts, b: Ts) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Whether the ownership is the balance of `members`: every link owned,
/// and by the instance rendezvous hashing names for it among them. Until
/// then links are still moving (a join's releases, a takeover).
pub fn is_balanced(owners: &Owners, links: &[String], members: &[String]) -> bool {
    links.iter().all(|link| {
        owners.get(link).map(String::as_str) == regpoll::cluster::owner_of(link, members)
    })
}

/// The links whose owner differs between two views (a link owned in only
/// one of them counts as moved).
pub fn moved_links(before: &Owners, after: &Owners) -> Vec<String> {
    let mut moved: Vec<String> = before
        .iter()
        .filter(|(link, owner)| after.get(*link) != Some(*owner))
        .map(|(link, _)| link.clone())
        .collect();
    moved.extend(
        after
            .keys()
            .filter(|link| !before.contains_key(*link))
            .cloned(),
    );
    moved.sort();
    moved
}

/// The gaps between consecutive readings of one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gaps {
    /// Far under one interval: a firing polled twice (by two instances).
    pub shortest: Duration,
    /// Near two intervals: a firing lost.
    pub longest: Duration,
    /// The reading the longest gap follows.
    pub longest_after: Ts,
}

/// The gaps of a device from its reading timestamps in any order; `None`
/// with fewer than two.
pub fn gaps(ts: &[Ts]) -> Option<Gaps> {
    let mut sorted = ts.to_vec();
    sorted.sort();
    let between = |w: &[Ts]| (w[1] - w[0]).to_std().unwrap_or_default();
    let shortest = sorted.windows(2).map(between).min()?;
    // The first of equal longest gaps.
    let longest = sorted.windows(2).rev().max_by_key(|w| between(w))?;
    Some(Gaps {
        shortest,
        longest: between(longest),
        longest_after: longest[0],
    })
}

/// How a device's readings fall on its firings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Firings {
    /// Firings with more than one reading: polled twice (by two instances).
    pub polled_twice: usize,
    /// Firings between its first and last reading without one.
    pub lost: usize,
}

/// Sorts a device's readings onto its firings: `due_of` gives the firing a
/// reading belongs to (the last at or before it: a poll starts at its
/// firing, late by less than an interval, and a reading is stamped when its
/// request is made). Two readings of one firing are a double poll; a
/// reading late after a handover is not, however close it comes to the
/// next one.
pub fn firings(ts: &[Ts], every: Duration, due_of: impl Fn(Ts) -> Option<Ts>) -> Firings {
    let mut dues: Vec<Ts> = ts.iter().filter_map(|t| due_of(*t)).collect();
    dues.sort();
    let every_us = every.as_micros().max(1) as i64;
    let mut count = Firings::default();
    for w in dues.windows(2) {
        let steps = (w[1] - w[0]).num_microseconds().unwrap_or(0) as f64 / every_us as f64;
        let steps = steps.round() as usize;
        if steps == 0 {
            count.polled_twice += 1;
        } else {
            count.lost += steps - 1;
        }
    }
    count
}

/// One device's readings around a kill: its last before it and its first
/// after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AroundKill {
    pub before: Option<Ts>,
    pub after: Option<Ts>,
}

impl AroundKill {
    /// From a device's reading timestamps (in any order). A reading stamped
    /// at the kill itself was started by the killed instance.
    pub fn of(kill: Ts, ts: &[Ts]) -> AroundKill {
        AroundKill {
            before: ts.iter().copied().filter(|t| *t <= kill).max(),
            after: ts.iter().copied().filter(|t| *t > kill).min(),
        }
    }
}

/// How the devices of a killed instance were taken over.
#[derive(Debug, Clone, PartialEq)]
pub struct Takeover {
    /// From the kill until the last of its links was owned by a live
    /// instance (the database's `acquired_at`).
    pub ownership_s: f64,
    /// From the kill until the last of its devices had a new reading.
    pub first_reading_s: f64,
    /// The longest time any of its devices went without a stored reading:
    /// from its last reading before the kill (readings the killed instance
    /// still held in memory died with it) to its first after.
    pub largest_gap_s: f64,
}

/// The takeover of one kill, from when its links were acquired again and
/// its devices' readings around it; an error names a device never read
/// again, or a link never owned again.
pub fn takeover(
    kill: Ts,
    acquired: &[Option<Ts>],
    devices: &[(String, AroundKill)],
) -> anyhow::Result<Takeover> {
    let mut owned_at = kill;
    for at in acquired {
        owned_at = owned_at.max(at.ok_or_else(|| {
            anyhow::anyhow!("a link of the killed instance was never owned again")
        })?);
    }
    let mut first_reading_s = 0.0_f64;
    let mut largest_gap_s = 0.0_f64;
    for (name, around) in devices {
        let after = around
            .after
            .ok_or_else(|| anyhow::anyhow!("device {name} has no reading after the kill"))?;
        let before = around.before.ok_or_else(|| {
            anyhow::anyhow!("device {name} has no reading before the kill to measure its gap from")
        })?;
        first_reading_s = first_reading_s.max(secs_between(kill, after));
        largest_gap_s = largest_gap_s.max(secs_between(before, after));
    }
    Ok(Takeover {
        ownership_s: secs_between(kill, owned_at),
        first_reading_s,
        largest_gap_s,
    })
}

/// The median (the mean of the middle two for an even count) and the
/// largest of `xs`; `None` when empty.
pub fn median_and_max(xs: &[f64]) -> Option<(f64, f64)> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let max = *sorted.last()?;
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some((median, max))
}

/// How many of `owners`' links, and of the devices behind them, each
/// instance owns.
pub fn split(
    owners: &Owners,
    devices_per_link: &BTreeMap<String, u32>,
) -> BTreeMap<String, (u32, u32)> {
    let mut split: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for (link, owner) in owners {
        let entry = split.entry(owner.clone()).or_default();
        entry.0 += 1;
        entry.1 += devices_per_link.get(link).copied().unwrap_or(0);
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` milliseconds after a fixed instant.
    fn at(ms: i64) -> Ts {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gaps_are_between_neighbours_whatever_the_order() {
        let ts = [at(3000), at(0), at(1000), at(5500), at(2000), at(5600)];
        assert_eq!(
            gaps(&ts),
            Some(Gaps {
                shortest: Duration::from_millis(100),
                longest: Duration::from_millis(2500),
                longest_after: at(3000),
            })
        );
        assert_eq!(gaps(&[at(0)]), None);
        assert_eq!(gaps(&[]), None);
        // The same instant twice is a firing polled twice.
        assert_eq!(
            gaps(&[at(7), at(7)]).map(|g| g.shortest),
            Some(Duration::ZERO)
        );
        // Of equal gaps, the first.
        assert_eq!(
            gaps(&[at(0), at(1000), at(2000)]).map(|g| g.longest_after),
            Some(at(0))
        );
    }

    #[test]
    fn a_reading_at_the_kill_belongs_to_the_killed_instance() {
        let around = AroundKill::of(at(5000), &[at(6500), at(3000), at(5000), at(9000)]);
        assert_eq!(
            around,
            AroundKill {
                before: Some(at(5000)),
                after: Some(at(6500))
            }
        );
        let none_after = AroundKill::of(at(5000), &[at(1000)]);
        assert_eq!(none_after.after, None);
    }

    #[test]
    fn takeover_is_the_last_link_owned_and_the_last_device_read() {
        let kill = at(10_000);
        let devices = vec![
            (
                "dev-1".to_string(),
                AroundKill::of(kill, &[at(9_000), at(9_800), at(16_200), at(17_200)]),
            ),
            (
                "dev-2".to_string(),
                // Its last reading died in the killed instance's queue.
                AroundKill::of(kill, &[at(8_500), at(16_900)]),
            ),
        ];
        let t = takeover(kill, &[Some(at(15_400)), Some(at(16_000))], &devices).unwrap();
        assert_eq!(t.ownership_s, 6.0);
        assert_eq!(t.first_reading_s, 6.9);
        assert_eq!(t.largest_gap_s, 8.4);
    }

    #[test]
    fn takeover_names_what_never_came_back() {
        let kill = at(0);
        let read = (
            "dev-1".to_string(),
            AroundKill::of(kill, &[at(-500), at(4000)]),
        );
        let unread = ("dev-7".to_string(), AroundKill::of(kill, &[at(-500)]));
        let e = takeover(kill, &[Some(at(3000))], &[read.clone(), unread]).unwrap_err();
        assert!(e.to_string().contains("dev-7"), "{e}");
        let e = takeover(kill, &[Some(at(3000)), None], &[read]).unwrap_err();
        assert!(e.to_string().contains("never owned again"), "{e}");
        let never_before = ("dev-2".to_string(), AroundKill::of(kill, &[at(900)]));
        assert!(takeover(kill, &[], &[never_before]).is_err());
    }

    #[test]
    fn median_and_max_of_odd_and_even_counts() {
        assert_eq!(median_and_max(&[6.5, 5.1, 7.0]), Some((6.5, 7.0)));
        assert_eq!(median_and_max(&[4.0, 6.0, 5.0, 9.0]), Some((5.5, 9.0)));
        assert_eq!(median_and_max(&[]), None);
    }

    #[test]
    fn balanced_only_when_every_link_has_its_rendezvous_owner() {
        let members = ids(&["a", "b", "c"]);
        let links: Vec<String> = (0..30).map(|p| format!("127.0.0.1:{}", 5000 + p)).collect();
        let mut owners: Owners = links
            .iter()
            .map(|l| {
                let owner = regpoll::cluster::owner_of(l, &members).unwrap();
                (l.clone(), owner.to_string())
            })
            .collect();
        assert!(is_balanced(&owners, &links, &members));
        // A fourth member has joined but not taken its share yet.
        assert!(!is_balanced(&owners, &links, &ids(&["a", "b", "c", "d"])));
        // A link not owned at all.
        let first = links[0].clone();
        let owner = owners.remove(&first).unwrap();
        assert!(!is_balanced(&owners, &links, &members));
        // Owned, but by the wrong member.
        let other = members.iter().find(|m| **m != owner).unwrap().clone();
        owners.insert(first, other);
        assert!(!is_balanced(&owners, &links, &members));
    }

    #[test]
    fn moved_links_count_changed_gained_and_lost_owners() {
        let before: Owners = [("l1", "a"), ("l2", "b"), ("l3", "c")]
            .iter()
            .map(|(l, o)| (l.to_string(), o.to_string()))
            .collect();
        let after: Owners = [("l1", "a"), ("l2", "d"), ("l4", "a")]
            .iter()
            .map(|(l, o)| (l.to_string(), o.to_string()))
            .collect();
        assert_eq!(moved_links(&before, &after), ids(&["l2", "l3", "l4"]));
        assert!(moved_links(&before, &before).is_empty());
    }

    #[test]
    fn a_join_moves_about_a_quarter_of_the_links_all_to_the_newcomer() {
        let links: Vec<String> = (0..300)
            .map(|p| format!("127.0.0.1:{}", 20_000 + p))
            .collect();
        let balance = |members: &[String]| -> Owners {
            links
                .iter()
                .map(|l| {
                    (
                        l.clone(),
                        regpoll::cluster::owner_of(l, members).unwrap().to_string(),
                    )
                })
                .collect()
        };
        let three = balance(&ids(&["bench-1", "bench-2", "bench-3"]));
        let four = balance(&ids(&["bench-1", "bench-2", "bench-3", "bench-4"]));
        let moved = moved_links(&three, &four);
        assert!(moved.iter().all(|l| four[l] == "bench-4"));
        // Binomial(300, 1/4): 75 expected, 45..105 is beyond four sigmas.
        assert!((45..=105).contains(&moved.len()), "{}", moved.len());
        let per_link: BTreeMap<String, u32> = links.iter().map(|l| (l.clone(), 10)).collect();
        let split = split(&four, &per_link);
        assert_eq!(split.values().map(|(l, _)| l).sum::<u32>(), 300);
        assert_eq!(split.values().map(|(_, d)| d).sum::<u32>(), 3000);
        assert_eq!(split["bench-4"].0 as usize, moved.len());
    }

    #[test]
    fn seconds_between_keep_their_sign() {
        assert_eq!(secs_between(at(0), at(1500)), 1.5);
        assert_eq!(secs_between(at(1500), at(0)), -1.5);
    }

    /// Firings every second at a phase of 250 ms.
    fn due(t: Ts) -> Option<Ts> {
        regpoll::schedule::Ticker::Every {
            every_us: 1_000_000,
            phase_us: 250_000,
        }
        .next_after(t - chrono::Duration::seconds(1))
    }

    #[test]
    fn readings_on_time_and_late_fall_on_their_own_firings() {
        let second = Duration::from_secs(1);
        // On time, then one 900 ms late (a handover resumed late), then on
        // time again 100 ms after it: no firing lost, none polled twice.
        let ts = [at(250), at(1251), at(3150), at(3252), at(4251)];
        assert_eq!(firings(&ts, second, due), Firings::default());
        // The 2.25 s firing's reading 900 ms late, and the 2.25 s firing on
        // time as well: polled twice.
        let late_and_on_time = [at(250), at(1251), at(2252), at(3150), at(3252)];
        assert_eq!(firings(&late_and_on_time, second, due).polled_twice, 1);
        let one_lost = [at(250), at(1251), at(3252)];
        assert_eq!(
            firings(&one_lost, second, due),
            Firings {
                polled_twice: 0,
                lost: 1
            }
        );
        // Two readings of the 1.25 s firing: one by each owner.
        let twice = [at(250), at(1252), at(1260), at(2251)];
        assert_eq!(firings(&twice, second, due).polled_twice, 1);
        // Two firings lost.
        let gap = [at(250), at(3251)];
        assert_eq!(firings(&gap, second, due).lost, 2);
        assert_eq!(firings(&[], second, due), Firings::default());
    }
}
