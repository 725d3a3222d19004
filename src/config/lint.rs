//! Warnings about a valid devices.yaml that is probably still wrong: addresses
//! that look like 1-based Modicon numbering (40001 for the first holding
//! register), registers whose addresses overlap, and deadbands whose
//! heartbeat is missing or shorter than the poll interval. They are
//! warnings, not errors: some devices really do use such addresses, and a
//! register that is stored once and never again may be what someone wants.

use crate::registry::{Device, Register, RegisterKind, Schedule, format_duration};

/// One warning, already phrased for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub device: String,
    pub message: String,
}

pub fn warnings(devices: &[Device]) -> Vec<Warning> {
    let mut out = Vec::new();
    for d in devices {
        for r in d.registers.iter() {
            for message in [modicon(r), heartbeat(r, &d.schedule)]
                .into_iter()
                .flatten()
            {
                out.push(Warning {
                    device: d.name.clone(),
                    message,
                });
            }
        }
        out.extend(overlaps(&d.registers).into_iter().map(|message| Warning {
            device: d.name.clone(),
            message,
        }));
    }
    out
}

/// The 1-based Modicon range of a kind (coils, 00001…, cannot be told apart).
fn modicon_base(kind: RegisterKind) -> Option<u16> {
    match kind {
        RegisterKind::Holding => Some(40001),
        RegisterKind::Input => Some(30001),
        RegisterKind::Discrete => Some(10001),
        RegisterKind::Coil => None,
    }
}

fn modicon(r: &Register) -> Option<String> {
    let base = modicon_base(r.kind)?;
    let a = r.address.0;
    (base..base + 9999).contains(&a).then(|| {
        format!(
            "register `{}`: {} address {a} looks like 1-based Modicon numbering; the protocol address of {a} would be {}. \
             Ignore this if the device documents {a} as a 0-based address.",
            r.name,
            r.kind.as_str(),
            a - base
        )
    })
}

/// A deadband without a heartbeat stores a value that never moves once,
/// and retention deletes that row in time; a heartbeat no longer than the
/// poll interval stores every reading, so the deadband does nothing.
fn heartbeat(r: &Register, device: &Schedule) -> Option<String> {
    let d = r.deadband.as_deref()?;
    let Some(h) = d.heartbeat else {
        return Some(format!(
            "register `{}`: {} without a heartbeat: a value that never moves is stored once, and once retention deletes that row history no longer says what the value is; add e.g. `heartbeat: 15m`",
            r.name,
            d.band.describe()
        ));
    };
    match r.schedule.as_deref().unwrap_or(device) {
        Schedule::Every { every, .. } if h <= *every => Some(format!(
            "register `{}`: heartbeat {} is not longer than its poll interval {}: every reading is stored and the deadband does nothing",
            r.name,
            format_duration(h),
            format_duration(*every)
        )),
        _ => None,
    }
}

/// Pairs of registers of one kind whose addresses overlap, except bit fields
/// that share a word (that is what bit fields are for) on different bits.
fn overlaps(registers: &[Register]) -> Vec<String> {
    let mut sorted: Vec<&Register> = registers.iter().collect();
    sorted.sort_by_key(|r| (r.kind, r.address));
    let mut out = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        for b in sorted[i + 1..]
            .iter()
            .take_while(|b| b.kind == a.kind && u32::from(b.address.0) <= a.last_address())
        {
            let distinct_bits =
                matches!((a.bit, b.bit), (Some(x), Some(y)) if x != y) && a.address == b.address;
            if !distinct_bits {
                out.push(format!(
                    "registers `{}` ({} {}..{}) and `{}` ({}..{}) overlap",
                    a.name,
                    a.kind.as_str(),
                    a.address.0,
                    a.last_address(),
                    b.name,
                    b.address.0,
                    b.last_address()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn warn(registers: &str) -> Vec<String> {
        let yaml = format!("devices:\n  - name: d\n    host: h\n    registers:\n{registers}");
        warnings(&parse(&yaml, "t.yaml").unwrap())
            .into_iter()
            .map(|w| w.message)
            .collect()
    }

    #[test]
    fn modicon_style_addresses_are_flagged_with_the_likely_address() {
        let w = warn(
            "      - { name: a, kind: holding, address: 40001 }\n      - { name: b, kind: input, address: 30010 }\n      - { name: c, kind: holding, address: 100 }\n",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("address 40001 looks like 1-based Modicon numbering")
                && w[0].contains("would be 0"),
            "{w:?}"
        );
        assert!(w[1].contains("would be 9"), "{w:?}");
    }

    #[test]
    fn a_deadband_without_a_useful_heartbeat_is_flagged() {
        let w = warn(
            "      - { name: a, kind: holding, address: 0, deadband: 1 }\n      - { name: b, kind: holding, address: 1, deadband: 1, heartbeat: 5s }\n      - { name: c, kind: holding, address: 2, deadband: 1, heartbeat: 6s }\n      - { name: d, kind: holding, address: 3 }\n",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("register `a`: deadband 1 without a heartbeat"),
            "{w:?}"
        );
        assert_eq!(
            w[1],
            "register `b`: heartbeat 5s is not longer than its poll interval 5s: every reading is stored and the deadband does nothing"
        );
    }

    #[test]
    fn overlapping_registers_are_flagged_but_bit_fields_of_one_word_are_not() {
        let w = warn(
            "      - { name: a, kind: holding, address: 0, type: u32 }\n      - { name: b, kind: holding, address: 1 }\n      - { name: c, kind: input, address: 1 }\n",
        );
        assert_eq!(w, ["registers `a` (holding 0..1) and `b` (1..1) overlap"]);
        assert!(warn("      - { name: a, kind: holding, address: 5, bit: 0 }\n      - { name: b, kind: holding, address: 5, bit: 1 }\n").is_empty());
        assert_eq!(warn("      - { name: a, kind: holding, address: 5, bit: 3 }\n      - { name: b, kind: holding, address: 5, bit: 3 }\n").len(), 1);
    }
}
