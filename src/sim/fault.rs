//! What a simulated device can do wrong, per device or per register: answer
//! late, not at all, with an exception, with garbage or a truncated frame, drop
//! the connection every N requests, refuse reads longer than a limit or
//! reads touching an address no register maps, send frames nobody asked
//! for, or hold fixed words in a register (text with a NUL in it, say). Each is a failure seen on real devices and gateways.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::registry::{Device, RegisterKind, parse_duration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer after this long.
    Delay(Duration),
    /// Never answer; the connection stays open.
    NoReply,
    /// Answer with this Modbus exception code.
    Exception(u8),
    /// Close the connection on every Nth request in scope (counted per
    /// connection), without answering it.
    DropEvery(u32),
    /// Answer with bytes that are not a valid reply to the request.
    Garbage,
    /// Answer with a reply cut short (its byte count promises more data).
    ShortFrame,
    /// Answer exception 3 (illegal data value) to reads of more than this many
    /// registers or bits, like devices that cannot take 125.
    MaxRegisters(u16),
    /// Answer correctly, then send a well-formed reply nobody asked for,
    /// carrying the transaction id the next request will have if ids go up
    /// by one, with every value 0xDEAD (bits all on): a gateway that repeats
    /// or invents frames. It must never be taken as an answer.
    StrayFrame,
    /// Serve these words at the register's addresses instead of its value
    /// (only with a register; cut to the register's width).
    Words(Vec<u16>),
    /// Answer exception 2 (illegal data address) to a read touching an
    /// address none of the device's registers covers, as devices with a
    /// sparse map do (only for a whole device). Empty as parsed; resolving
    /// the fault against its device fills in the addresses.
    Holes(Mapped),
}

/// The addresses a device's registers cover, per table: inclusive ranges,
/// sorted, with touching ones merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped(Vec<(RegisterKind, u32, u32)>);

impl Mapped {
    fn of(device: &Device) -> Self {
        let mut ranges: Vec<(RegisterKind, u32, u32)> = device
            .registers
            .iter()
            .map(|r| (r.kind, u32::from(r.address.0), r.last_address()))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(RegisterKind, u32, u32)> = Vec::with_capacity(ranges.len());
        for (kind, first, last) in ranges {
            match merged.last_mut() {
                Some(m) if m.0 == kind && first <= m.2 + 1 => m.2 = m.2.max(last),
                _ => merged.push((kind, first, last)),
            }
        }
        Mapped(merged)
    }

    /// Whether every address of the read is some register's.
    pub fn covers(&self, kind: RegisterKind, start: u16, count: u16) -> bool {
        let (lo, hi) = (u32::from(start), u32::from(start) + u32::from(count) - 1);
        self.0
            .iter()
            .any(|&(k, first, last)| k == kind && first <= lo && hi <= last)
    }
}

/// A fault on a device, or only on the requests that touch one of its registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFault {
    pub device: String,
    pub register: Option<String>,
    pub action: FaultAction,
}

/// A fault resolved to what the wire sees: a unit id, and optionally a table
/// and an address range.
#[derive(Debug, Clone)]
pub(crate) struct Scoped {
    pub unit: u8,
    pub kind: Option<RegisterKind>,
    pub addresses: Option<(u32, u32)>,
    pub action: FaultAction,
}

impl Scoped {
    pub fn applies(&self, unit: u8, kind: RegisterKind, start: u16, count: u16) -> bool {
        let (lo, hi) = (u32::from(start), u32::from(start) + u32::from(count) - 1);
        self.unit == unit
            && self.kind.is_none_or(|k| k == kind)
            && self.addresses.is_none_or(|(a, b)| lo <= b && a <= hi)
    }
}

/// Resolves device and register names against the simulated devices.
pub(crate) fn resolve(
    faults: &[SimFault],
    devices: &[Device],
) -> Result<Vec<(String, Scoped)>, String> {
    faults
        .iter()
        .map(|f| {
            let d = devices
                .iter()
                .find(|d| d.name == f.device)
                .ok_or_else(|| format!("fault names unknown device `{}`", f.device))?;
            let (kind, addresses) = match &f.register {
                None if matches!(f.action, FaultAction::Words(_)) => {
                    return Err(format!(
                        "a `words` fault on device `{}` needs a register to hold them",
                        f.device
                    ));
                }
                Some(name) if matches!(f.action, FaultAction::Holes(_)) => {
                    return Err(format!(
                        "a `holes` fault applies to the whole device `{}`: drop `register: {name}`",
                        f.device
                    ));
                }
                None => (None, None),
                Some(name) => {
                    let r = d
                        .registers
                        .iter()
                        .find(|r| *r.name == **name)
                        .ok_or_else(|| {
                            format!(
                                "fault names unknown register `{name}` of device `{}`",
                                d.name
                            )
                        })?;
                    (
                        Some(r.kind),
                        Some((u32::from(r.address.0), r.last_address())),
                    )
                }
            };
            let action = match &f.action {
                FaultAction::Holes(_) => FaultAction::Holes(Mapped::of(d)),
                other => other.clone(),
            };
            Ok((
                d.endpoint(),
                Scoped {
                    unit: d.unit_id.0,
                    kind,
                    addresses,
                    action,
                },
            ))
        })
        .collect()
}

/// The faults file of `regpoll simulate --faults`:
///
/// ```yaml
/// faults:
///   - { device: meter-2, delay: 2s }
///   - { device: boiler-1, register: pressure, exception: 2 }
///   - { device: sparse-1, holes: true }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    faults: Vec<Spanned<RawFault>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    device: String,
    register: Option<String>,
    delay: Option<String>,
    no_reply: Option<bool>,
    exception: Option<u8>,
    drop_every: Option<u32>,
    garbage: Option<bool>,
    short_frame: Option<bool>,
    max_registers: Option<u16>,
    stray_frame: Option<bool>,
    words: Option<Vec<u16>>,
    holes: Option<bool>,
}

const ACTIONS: &str = "delay, no_reply, exception, drop_every, garbage, short_frame, max_registers, stray_frame, words, holes";

/// Parses a faults file; errors carry `file:line:column`.
pub fn parse_faults(yaml: &str, file: &str) -> Result<Vec<SimFault>, String> {
    let raw: RawFaults = serde_saphyr::from_str(yaml).map_err(|e| {
        let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        format!(
            "{file}:{line}:{col}: {}",
            crate::config::describe_parse_error(&e)
        )
    })?;
    raw.faults
        .into_iter()
        .map(|f| {
            let at = format!("{file}:{}:{}", f.referenced.line(), f.referenced.column());
            let f = f.value;
            let mut actions = Vec::new();
            if let Some(d) = &f.delay {
                actions.push(FaultAction::Delay(
                    parse_duration(d).map_err(|m| format!("{at}: delay: {m}"))?,
                ));
            }
            if f.no_reply == Some(true) {
                actions.push(FaultAction::NoReply);
            }
            if let Some(c) = f.exception {
                actions.push(FaultAction::Exception(c));
            }
            if let Some(n) = f.drop_every {
                if n == 0 {
                    return Err(format!("{at}: drop_every must be at least 1"));
                }
                actions.push(FaultAction::DropEvery(n));
            }
            if f.garbage == Some(true) {
                actions.push(FaultAction::Garbage);
            }
            if f.short_frame == Some(true) {
                actions.push(FaultAction::ShortFrame);
            }
            if let Some(n) = f.max_registers {
                actions.push(FaultAction::MaxRegisters(n));
            }
            if f.stray_frame == Some(true) {
                actions.push(FaultAction::StrayFrame);
            }
            if let Some(w) = f.words {
                actions.push(FaultAction::Words(w));
            }
            if f.holes == Some(true) {
                actions.push(FaultAction::Holes(Mapped::default()));
            }
            match <[FaultAction; 1]>::try_from(actions) {
                Ok([action]) => Ok(SimFault {
                    device: f.device,
                    register: f.register,
                    action,
                }),
                Err(_) => Err(format!("{at}: a fault needs exactly one of {ACTIONS}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_faults_file_parses_into_one_action_per_entry() {
        let f = parse_faults(
            "faults:\n  - { device: a, delay: 2s }\n  - { device: b, register: r, exception: 2 }\n",
            "f.yaml",
        )
        .unwrap();
        assert_eq!(f[0].action, FaultAction::Delay(Duration::from_secs(2)));
        assert_eq!(
            (f[1].register.as_deref(), &f[1].action),
            (Some("r"), &FaultAction::Exception(2))
        );
    }

    #[test]
    fn a_words_fault_names_its_register() {
        let f = parse_faults(
            "faults:\n  - { device: a, register: label, words: [0x4142, 0x0043, 0x4400] }\n",
            "f.yaml",
        )
        .unwrap();
        assert_eq!(
            f[0].action,
            FaultAction::Words(vec![0x4142, 0x0043, 0x4400])
        );
        let device = crate::config::parse(
            "devices:\n  - { name: a, host: 127.0.0.1, port: 5020, registers: [{ name: label, kind: holding, address: 4, type: string, length: 3 }] }\n",
            "d.yaml",
        )
        .unwrap();
        let scoped = resolve(&f, &device).unwrap();
        assert_eq!(scoped[0].1.addresses, Some((4, 6)));
        let whole = SimFault {
            register: None,
            ..f[0].clone()
        };
        let e = resolve(&[whole], &device).unwrap_err();
        assert!(e.contains("needs a register"), "{e}");
    }

    #[test]
    fn a_holes_fault_refuses_reads_touching_an_unmapped_address() {
        let f = parse_faults("faults:\n  - { device: a, holes: true }\n", "f.yaml").unwrap();
        assert_eq!(f[0].action, FaultAction::Holes(Mapped::default()));
        let device = crate::config::parse(
            "devices:\n  - { name: a, host: 127.0.0.1, port: 5020, registers: [\n    { name: x, kind: holding, address: 0, type: u32 },\n    { name: y, kind: holding, address: 2, type: u16 },\n    { name: z, kind: holding, address: 10, type: u16 },\n    { name: i, kind: input, address: 3, type: u16 } ] }\n",
            "d.yaml",
        )
        .unwrap();
        let scoped = resolve(&f, &device).unwrap();
        let FaultAction::Holes(mapped) = &scoped[0].1.action else {
            panic!("{:?}", scoped[0].1.action);
        };
        let holding = RegisterKind::Holding;
        // x and y touch: 0..=2 is one mapped run.
        assert!(mapped.covers(holding, 0, 3));
        assert!(mapped.covers(holding, 10, 1));
        assert!(!mapped.covers(holding, 0, 4));
        assert!(!mapped.covers(holding, 2, 9));
        assert!(!mapped.covers(holding, 11, 1));
        assert!(!mapped.covers(RegisterKind::Input, 2, 1));
        assert!(mapped.covers(RegisterKind::Input, 3, 1));
        // It applies to the whole device only, and `false` is no fault.
        let on_register = SimFault {
            register: Some("x".into()),
            ..f[0].clone()
        };
        let e = resolve(&[on_register], &device).unwrap_err();
        assert!(e.contains("whole device `a`: drop `register: x`"), "{e}");
        let e = parse_faults("faults:\n  - { device: a, holes: false }\n", "f.yaml").unwrap_err();
        assert!(e.starts_with("f.yaml:2:") && e.contains("holes"), "{e}");
        let e = parse_faults("faults:\n  - { device: a, holes: 3 }\n", "f.yaml").unwrap_err();
        assert!(e.starts_with("f.yaml:2:"), "{e}");
    }

    #[test]
    fn bad_fault_entries_say_where_and_what_is_valid() {
        let e = parse_faults(
            "faults:\n  - { device: a, delay: 2s, no_reply: true }\n",
            "f.yaml",
        )
        .unwrap_err();
        assert!(
            e.starts_with("f.yaml:2:") && e.contains("exactly one of"),
            "{e}"
        );
        let e = parse_faults("faults:\n  - { device: a, slow: true }\n", "f.yaml").unwrap_err();
        assert!(
            e.starts_with("f.yaml:2:") && e.contains("unknown field `slow`"),
            "{e}"
        );
    }
}
