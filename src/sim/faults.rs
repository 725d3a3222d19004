//! What a simulated device can do wrong, and where: answer late, not at all,
//! with an exception, with garbage or a truncated frame, drop the connection
//! every N requests, or refuse reads longer than a limit. Each is a failure
//! seen on real devices and gateways. A fault applies to one unit id, or only
//! to the requests that touch one table or address range of it (a register).
//!
//! [`parse_faults`] reads the `faults:` file of `regpoll simulate --faults`;
//! the server (`super::server`) applies a [`FaultSet`] to every request.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::server::{ReadRequest, Table};

/// Where a fault applies: a unit id, optionally narrowed to one table and an
/// address range (a register's addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub unit: u8,
    pub table: Option<Table>,
    pub addresses: Option<RangeInclusive<u16>>,
}

impl Scope {
    /// Whether `req` is in scope: same unit, same table if one is set, and at
    /// least one address of `req` inside the range if one is set (a read that
    /// covers part of a register touches that register).
    pub fn covers(&self, req: &ReadRequest) -> bool {
        // u32, because a read may end at 65536, one past the last address.
        let (first, end) = (u32::from(req.start), u32::from(req.start) + u32::from(req.count));
        self.unit == req.unit
            && self.table.is_none_or(|t| t == req.table)
            && self.addresses.as_ref().is_none_or(|a| {
                !a.is_empty() && u32::from(*a.start()) < end && first <= u32::from(*a.end())
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer after this long.
    Delay(Duration),
    /// Never answer; the connection stays open and later requests are served.
    NoReply,
    /// Answer with this Modbus exception code.
    Exception(u8),
    /// Close the connection on every Nth request in scope (counted per
    /// connection), without answering that request.
    DropEvery(u32),
    /// Answer with a frame that is no reply to the request: the right
    /// transaction id, but a PDU that no Modbus function produces.
    Garbage,
    /// Answer with a reply cut short: its byte count promises more data than
    /// follows (the MBAP length matches what is sent).
    ShortFrame,
    /// Answer exception 3 (illegal data value) to reads of more than this many
    /// registers or bits, like devices that cannot take 125.
    MaxRegisters(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub scope: Scope,
    pub action: FaultAction,
}

/// The faults of one simulated endpoint.
#[derive(Debug, Default)]
pub struct FaultSet {
    faults: Vec<Fault>,
}

impl FaultSet {
    pub fn new(faults: Vec<Fault>) -> Self {
        FaultSet { faults }
    }

    /// The actions of the faults whose scope covers `req`, in file order.
    pub fn for_request(&self, req: &ReadRequest) -> impl Iterator<Item = &FaultAction> {
        self.numbered_for_request(req).map(|(_, action)| action)
    }

    /// Like [`FaultSet::for_request`], with each fault's position in the set,
    /// so the server can keep a `DropEvery` count per fault.
    pub(super) fn numbered_for_request(
        &self,
        req: &ReadRequest,
    ) -> impl Iterator<Item = (usize, &FaultAction)> {
        self.faults
            .iter()
            .enumerate()
            .filter(|(_, f)| f.scope.covers(req))
            .map(|(i, f)| (i, &f.action))
    }
}

/// One entry of a faults file:
///
/// ```yaml
/// faults:
///   - unit: 2            # required, unit id 0..255
///     table: holding     # optional: holding | input | coil | discrete
///     addresses: 100-101 # optional: "N" or "N-M"
///     delay: 2s          # exactly one action
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    faults: Vec<Spanned<RawFault>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    unit: u8,
    table: Option<RawTable>,
    addresses: Option<Spanned<String>>,
    delay: Option<Spanned<String>>,
    no_reply: Option<bool>,
    exception: Option<u8>,
    drop_every: Option<u32>,
    garbage: Option<bool>,
    short_frame: Option<bool>,
    max_registers: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawTable {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl From<RawTable> for Table {
    fn from(t: RawTable) -> Table {
        match t {
            RawTable::Holding => Table::HoldingRegisters,
            RawTable::Input => Table::InputRegisters,
            RawTable::Coil => Table::Coils,
            RawTable::Discrete => Table::DiscreteInputs,
        }
    }
}

const ACTIONS: &str = "delay, no_reply, exception, drop_every, garbage, short_frame, max_registers";

/// Parses a faults file. Errors start with `file:line:column:` and say what
/// would be valid.
pub fn parse_faults(yaml: &str, file: &str) -> Result<Vec<Fault>, String> {
    let raw: RawFile = serde_saphyr::from_str(yaml).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        format!("{file}:{line}:{column}: {}", describe(&e))
    })?;
    raw.faults
        .into_iter()
        .map(|entry| {
            let at = |l: &serde_saphyr::Location| format!("{file}:{}:{}", l.line(), l.column());
            let here = at(&entry.referenced);
            let f = entry.value;
            let addresses = f
                .addresses
                .map(|a| {
                    parse_range(&a.value).map_err(|m| format!("{}: addresses: {m}", at(&a.referenced)))
                })
                .transpose()?;
            let action = action(&f).map_err(|m| format!("{here}: {m}"))?;
            Ok(Fault {
                scope: Scope {
                    unit: f.unit,
                    table: f.table.map(Table::from),
                    addresses,
                },
                action,
            })
        })
        .collect()
}

/// The one action an entry names.
fn action(f: &RawFault) -> Result<FaultAction, String> {
    let mut actions = Vec::new();
    if let Some(d) = &f.delay {
        let delay = parse_duration(&d.value).map_err(|m| format!("delay: {m}"))?;
        actions.push(FaultAction::Delay(delay));
    }
    for (key, flag, action) in [
        ("no_reply", f.no_reply, FaultAction::NoReply),
        ("garbage", f.garbage, FaultAction::Garbage),
        ("short_frame", f.short_frame, FaultAction::ShortFrame),
    ] {
        match flag {
            Some(true) => actions.push(action),
            // Counting `false` as "no action" would let a typo'd intent pass silently.
            Some(false) => {
                return Err(format!("`{key}: false` does nothing; write `{key}: true` or leave the key out"));
            }
            None => {}
        }
    }
    if let Some(code) = f.exception {
        if code == 0 {
            return Err("exception: codes start at 1 (2 is illegal data address)".into());
        }
        actions.push(FaultAction::Exception(code));
    }
    if let Some(n) = f.drop_every {
        if n == 0 {
            return Err("drop_every: must be at least 1 (1 drops every request)".into());
        }
        actions.push(FaultAction::DropEvery(n));
    }
    if let Some(n) = f.max_registers {
        if n == 0 {
            return Err("max_registers: must be at least 1 (use `exception: 3` to refuse every read)".into());
        }
        actions.push(FaultAction::MaxRegisters(n));
    }
    match <[FaultAction; 1]>::try_from(actions) {
        Ok([action]) => Ok(action),
        Err(found) => Err(format!(
            "an entry needs exactly one of {ACTIONS} (found {})",
            found.len()
        )),
    }
}

/// `N` or `N-M` with `N <= M`, addresses 0..=65535.
fn parse_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("`{text}` is not an address or range; write `100` or `100-101` (0..=65535)");
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let first: u16 = first.parse().map_err(|_| bad())?;
    let last: u16 = last.parse().map_err(|_| bad())?;
    if first > last {
        return Err(format!("`{text}` runs backwards; write the lower address first"));
    }
    Ok(first..=last)
}

/// A whole number with a unit: `500ms`, `2s`, `1m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration; write a whole number with ms, s or m, like 500ms or 2s");
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = text[..split].parse().map_err(|_| bad())?;
    match &text[split..] {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// serde-saphyr's message without its source snippet and its own trailing
/// position, which our `file:line:column:` prefix already gives.
fn describe(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let text = text.find(" at line ").map_or(text.as_str(), |i| &text[..i]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(unit: u8, start: u16, count: u16) -> ReadRequest {
        ReadRequest {
            unit,
            table: Table::HoldingRegisters,
            start,
            count,
        }
    }

    #[test]
    fn a_register_scope_covers_reads_that_overlap_it_and_nothing_else() {
        let scope = Scope {
            unit: 1,
            table: Some(Table::HoldingRegisters),
            addresses: Some(100..=101),
        };
        assert!(scope.covers(&holding(1, 99, 2)), "ends on the first address");
        assert!(scope.covers(&holding(1, 101, 5)), "starts on the last address");
        assert!(scope.covers(&holding(1, 0, 125)), "spans the whole register");
        assert!(!scope.covers(&holding(1, 98, 2)), "ends just before");
        assert!(!scope.covers(&holding(1, 102, 1)), "starts just after");
        assert!(!scope.covers(&holding(2, 100, 1)), "other unit");
        let input = ReadRequest {
            table: Table::InputRegisters,
            ..holding(1, 100, 1)
        };
        assert!(!scope.covers(&input), "other table");
    }

    #[test]
    fn a_unit_scope_covers_every_read_of_that_unit_up_to_the_last_address() {
        let set = FaultSet::new(vec![Fault {
            scope: Scope {
                unit: 7,
                table: None,
                addresses: None,
            },
            action: FaultAction::NoReply,
        }]);
        let last = holding(7, 65535, 1);
        assert_eq!(set.for_request(&last).collect::<Vec<_>>(), [&FaultAction::NoReply]);
        assert_eq!(set.for_request(&holding(8, 0, 1)).count(), 0);
    }

    #[test]
    fn a_faults_file_parses_into_one_scoped_action_per_entry() {
        let yaml = "\
faults:
  - unit: 2            # the whole device
    delay: 500ms
  - unit: 2
    table: holding
    addresses: 100-101
    exception: 2
  - { unit: 3, table: coil, addresses: 7, no_reply: true }
  - { unit: 4, table: input, drop_every: 5 }
  - { unit: 4, table: discrete, garbage: true }
  - { unit: 5, short_frame: true }
  - { unit: 255, max_registers: 40 }
  - { unit: 0, delay: 1m }
";
        let f = parse_faults(yaml, "faults.yaml").unwrap();
        let unit = |unit| Scope {
            unit,
            table: None,
            addresses: None,
        };
        assert_eq!(
            f,
            [
                Fault {
                    scope: unit(2),
                    action: FaultAction::Delay(Duration::from_millis(500)),
                },
                Fault {
                    scope: Scope {
                        unit: 2,
                        table: Some(Table::HoldingRegisters),
                        addresses: Some(100..=101),
                    },
                    action: FaultAction::Exception(2),
                },
                Fault {
                    scope: Scope {
                        unit: 3,
                        table: Some(Table::Coils),
                        addresses: Some(7..=7),
                    },
                    action: FaultAction::NoReply,
                },
                Fault {
                    scope: Scope {
                        table: Some(Table::InputRegisters),
                        ..unit(4)
                    },
                    action: FaultAction::DropEvery(5),
                },
                Fault {
                    scope: Scope {
                        table: Some(Table::DiscreteInputs),
                        ..unit(4)
                    },
                    action: FaultAction::Garbage,
                },
                Fault {
                    scope: unit(5),
                    action: FaultAction::ShortFrame,
                },
                Fault {
                    scope: unit(255),
                    action: FaultAction::MaxRegisters(40),
                },
                Fault {
                    scope: unit(0),
                    action: FaultAction::Delay(Duration::from_secs(60)),
                },
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let e = parse_faults("faults:\n  - unit: 2\n    slow: true\n", "f.yaml").unwrap_err();
        assert!(e.starts_with("f.yaml:3:"), "{e}");
        assert!(e.contains("unknown field `slow`") && e.contains("no_reply"), "{e}");
    }

    #[test]
    fn an_entry_with_two_actions_is_refused_with_the_valid_ones_named() {
        let e = parse_faults(
            "faults:\n  - { unit: 1, delay: 1s }\n  - { unit: 2, delay: 2s, no_reply: true }\n",
            "f.yaml",
        )
        .unwrap_err();
        assert!(e.starts_with("f.yaml:3:"), "{e}");
        assert!(e.contains(&format!("exactly one of {ACTIONS}")), "{e}");
    }

    #[test]
    fn an_entry_without_an_action_is_refused() {
        let e = parse_faults("faults:\n  - { unit: 1, table: holding }\n", "f.yaml").unwrap_err();
        assert!(e.starts_with("f.yaml:2:") && e.contains("exactly one of"), "{e}");
    }

    #[test]
    fn bad_address_ranges_are_refused_where_they_are_written() {
        for bad in ["101-100", "abc", "1-", "70000"] {
            let yaml = format!("faults:\n  - unit: 1\n    addresses: {bad}\n    no_reply: true\n");
            let e = parse_faults(&yaml, "f.yaml").unwrap_err();
            assert!(e.starts_with("f.yaml:3:") && e.contains("addresses:"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_say_what_is_valid() {
        let cases = [
            ("{ unit: 300, no_reply: true }", "unit"),
            ("{ unit: 1, table: holdings, no_reply: true }", "holding"),
            ("{ unit: 1, delay: 2 }", "like 500ms or 2s"),
            ("{ unit: 1, delay: 2h }", "like 500ms or 2s"),
            ("{ unit: 1, garbage: false }", "`garbage: true`"),
            ("{ unit: 1, drop_every: 0 }", "at least 1"),
            ("{ unit: 1, exception: 0 }", "start at 1"),
        ];
        for (entry, hint) in cases {
            let e = parse_faults(&format!("faults:\n  - {entry}\n"), "f.yaml").unwrap_err();
            assert!(e.starts_with("f.yaml:2:") && e.contains(hint), "{entry}: {e}");
        }
    }
}
