//! The devices.yaml skeleton `regpoll scan` prints: one device per unit
//! that answers with something readable, with the largest read it takes as
//! its request limit, and registers at the start of each readable range for
//! the engineer to name and type. `regpoll check` accepts it as printed.

use std::fmt::Write as _;

use super::probe::{Report, UnitReport, protocol_limit, span_text};
use crate::registry::{RegisterKind, Transport};

/// Registers listed at the start of each readable range: enough to see
/// the pattern of a map, few enough that a range of 65,536 stays readable.
pub const PER_RANGE: u32 = 8;
/// Registers listed per device at most.
pub const PER_DEVICE: usize = 100;

/// The skeleton for `report`, or `None` when no unit has a readable address.
pub fn skeleton(
    host: &str,
    port: u16,
    transport: &Transport,
    kind: RegisterKind,
    report: &Report,
) -> Option<String> {
    let devices: Vec<&UnitReport> = report
        .units
        .iter()
        .filter(|u| u.readable().next().is_some())
        .collect();
    if devices.is_empty() {
        return None;
    }
    let mut out = String::new();
    let link = match transport {
        Transport::Tcp => format!("{host}:{port}"),
        Transport::RtuOverTcp => format!("{host}:{port} --transport rtu-over-tcp"),
        Transport::Rtu(line) => format!("--serial {} --baud {}", line.path, line.baud),
    };
    let _ = writeln!(
        out,
        "# devices.yaml skeleton from `regpoll scan {link} --kind {}`:",
        kind.as_str()
    );
    out.push_str("# name each register and give it its type (`regpoll read --guess-order` shows\n");
    out.push_str("# a 32- or 64-bit value in every byte order), then `regpoll check` the file.\n");
    if let Some(why) = &report.stopped {
        let _ = writeln!(out, "# The scan ended early: {why}.");
    }
    out.push_str("devices:\n");
    for unit in devices {
        device(&mut out, (host, port, transport), kind, unit);
    }
    Some(out)
}

fn device(
    out: &mut String,
    (host, port, transport): (&str, u16, &Transport),
    kind: RegisterKind,
    unit: &UnitReport,
) {
    // JSON's quoting is YAML's double-quoted form: any host name or path is
    // safe in it.
    match transport.serial() {
        Some(line) => {
            let file = line.path.rsplit('/').next().unwrap_or(&line.path);
            let _ = writeln!(out, "  - name: {}", device_name(file, unit.unit.0));
            let _ = writeln!(out, "    transport: rtu");
            let _ = writeln!(
                out,
                "    serial: {{ path: {}, baud: {}, parity: {}, data_bits: {}, stop_bits: {} }}",
                serde_json::Value::from(line.path.as_str()),
                line.baud,
                line.parity.as_str(),
                line.data_bits.as_u8(),
                line.stop_bits.as_u8()
            );
        }
        None => {
            let _ = writeln!(out, "  - name: {}", device_name(host, unit.unit.0));
            let _ = writeln!(out, "    host: {}", serde_json::Value::from(host));
            let _ = writeln!(out, "    port: {port}");
            if *transport == Transport::RtuOverTcp {
                let _ = writeln!(out, "    transport: rtu-over-tcp");
            }
        }
    }
    let _ = writeln!(out, "    unit_id: {}", unit.unit.0);
    let limit_key = if kind.is_bit() {
        "max_bits_per_request"
    } else {
        "max_registers_per_request"
    };
    if unit.largest < protocol_limit(kind) {
        let _ = writeln!(out, "    {limit_key}: {}", unit.largest);
    }
    if let Some(why) = &unit.stopped {
        let _ = writeln!(out, "    # probing ended early: {why}");
    }
    out.push_str("    registers:\n");
    let data_type = if kind.is_bit() { "bool" } else { "u16" };
    let mut listed = 0;
    for p in &unit.pieces {
        let Some(e) = &p.refused else {
            let len = u32::from(p.last) - u32::from(p.first) + 1;
            let shown = len.min(PER_RANGE).min((PER_DEVICE - listed) as u32);
            let _ = match shown {
                0 => writeln!(
                    out,
                    "      # {} {} readable (not listed: {PER_DEVICE} registers are listed at most)",
                    kind.as_str(),
                    span_text(p)
                ),
                _ if shown == len => {
                    writeln!(out, "      # {} {} readable", kind.as_str(), span_text(p))
                }
                _ => writeln!(
                    out,
                    "      # {} {} readable ({len} addresses; the first {shown} listed)",
                    kind.as_str(),
                    span_text(p)
                ),
            };
            for address in u32::from(p.first)..u32::from(p.first) + shown {
                let _ = writeln!(
                    out,
                    "      - {{ name: {}_{address}, kind: {}, address: {address}, type: {data_type} }}",
                    kind.as_str(),
                    kind.as_str()
                );
            }
            listed += shown as usize;
            continue;
        };
        let _ = writeln!(
            out,
            "      # {} {} not readable: {e}",
            kind.as_str(),
            span_text(p)
        );
    }
}

/// `HOST-unit-N`, in the alphabet device names allow (other characters
/// of the host, such as an IPv6 address's colons, become `-`).
fn device_name(host: &str, unit: u8) -> String {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    format!("{safe}-unit-{unit}")
}
