//! What a simulated unit answers to one request, faults included, as a PDU:
//! the part of the simulator that is the same on every transport. Modbus
//! TCP (`wire`) and RTU (`rtu`) only frame it.

use std::collections::HashMap;

use super::fault::{FaultAction, Scoped};
use super::log::EndpointLog;
use crate::registry::RegisterKind;

/// What a unit answers to a read, before faults.
pub(crate) enum Answer {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
    Exception(u8),
}

/// Produces the answers of the units behind one endpoint.
pub(crate) trait Units: Send + Sync + 'static {
    fn answer(&self, unit: u8, kind: RegisterKind, start: u16, count: u16) -> Answer;
    /// Whether a device with this unit id is behind the endpoint (on a
    /// serial line, the others are silent).
    fn has_unit(&self, unit: u8) -> bool;
    /// Where the endpoint records the requests it serves, when a test asked
    /// for it (see `log`).
    fn request_log(&self) -> Option<&EndpointLog> {
        None
    }
}

/// What to do about one request.
pub(crate) enum Reply {
    /// Send this PDU; then, when `stray`, a frame nobody asked for.
    Pdu { body: Vec<u8>, stray: bool },
    /// Send nothing (the link stays).
    Silent,
    /// Close the link unanswered.
    Close,
}

/// The reply of `unit` to the request `pdu` (function code first), after
/// the faults that apply to it. `seen` counts, per fault, the requests in
/// its scope on this link (for `DropEvery`).
pub(crate) async fn respond(
    units: &dyn Units,
    faults: &[Scoped],
    seen: &mut HashMap<usize, u32>,
    unit: u8,
    pdu: &[u8],
) -> Reply {
    let function = pdu[0];
    let (Some(kind), 5) = (RegisterKind::of_read_function(function), pdu.len()) else {
        return Reply::Pdu {
            body: vec![function | 0x80, 0x01],
            stray: false,
        };
    };
    let start = u16::from_be_bytes([pdu[1], pdu[2]]);
    let count = u16::from_be_bytes([pdu[3], pdu[4]]);
    if let Some(code) = check(kind, start, count) {
        return Reply::Pdu {
            body: body(function, &Answer::Exception(code)),
            stray: false,
        };
    }
    let mut answer = None;
    let mut broken = None;
    let mut stray = false;
    let mut fixed: Vec<(u32, u32, &[u16])> = Vec::new();
    for (i, f) in faults
        .iter()
        .enumerate()
        .filter(|(_, f)| f.applies(unit, kind, start, count))
    {
        match &f.action {
            FaultAction::Delay(d) => tokio::time::sleep(*d).await,
            FaultAction::NoReply => broken = Some(None),
            FaultAction::DropEvery(n) => {
                let k = seen.entry(i).or_default();
                *k += 1;
                if k.is_multiple_of(*n) {
                    return Reply::Close;
                }
            }
            FaultAction::Exception(code) => answer = Some(Answer::Exception(*code)),
            FaultAction::MaxRegisters(max) if count > *max => {
                answer = Some(Answer::Exception(0x03))
            }
            FaultAction::MaxRegisters(_) => {}
            FaultAction::Holes(mapped) if !mapped.covers(kind, start, count) => {
                answer = Some(Answer::Exception(0x02))
            }
            FaultAction::Holes(_) => {}
            FaultAction::Words(w) => {
                if let Some((first, last)) = f.addresses {
                    fixed.push((first, last, w));
                }
            }
            FaultAction::Garbage => broken = Some(Some(vec![function, 0xFF, 0x13, 0x37])),
            FaultAction::ShortFrame => {
                let full = body(function, &units.answer(unit, kind, start, count));
                broken = Some(Some(full[..full.len().min(3)].to_vec()));
            }
            FaultAction::StrayFrame => stray = true,
        }
    }
    match broken {
        Some(None) => Reply::Silent,
        Some(Some(body)) => Reply::Pdu { body, stray: false },
        None => {
            let mut answer = answer.unwrap_or_else(|| units.answer(unit, kind, start, count));
            if let Answer::Registers(words) = &mut answer {
                for (first, last, w) in &fixed {
                    overlay(words, start, *first, *last, w);
                }
            }
            Reply::Pdu {
                body: body(function, &answer),
                stray,
            }
        }
    }
}

/// A well-formed answer to the read request `pdu` that carries nothing the
/// device holds: every value 0xDEAD (bits all on). What a gateway that
/// repeats or invents frames sends.
pub(crate) fn stray_body(pdu: &[u8]) -> Vec<u8> {
    let function = pdu[0];
    let count = usize::from(u16::from_be_bytes([pdu[3], pdu[4]]));
    let answer = match RegisterKind::of_read_function(function) {
        Some(k) if k.is_bit() => Answer::Bits(vec![true; count]),
        _ => Answer::Registers(vec![0xDEAD; count]),
    };
    body(function, &answer)
}

/// Puts `fixed` at addresses `first..=last` (as far as it reaches) of a
/// reply holding the words from address `start`.
fn overlay(words: &mut [u16], start: u16, first: u32, last: u32, fixed: &[u16]) {
    for (addr, w) in (first..=last).zip(fixed) {
        if let Some(slot) = addr
            .checked_sub(u32::from(start))
            .and_then(|i| words.get_mut(i as usize))
        {
            *slot = *w;
        }
    }
}

/// Protocol limits (application protocol 6.1–6.4): exception 3 for a bad
/// quantity, 2 for a range past the end of the address space.
fn check(kind: RegisterKind, start: u16, count: u16) -> Option<u8> {
    let max = if kind.is_bit() { 2000 } else { 125 };
    if count == 0 || count > max {
        return Some(0x03);
    }
    (u32::from(start) + u32::from(count) > 65536).then_some(0x02)
}

/// The PDU of an answer: function code, byte count and data (bits packed
/// LSB-first per byte), or the exception form.
fn body(function: u8, answer: &Answer) -> Vec<u8> {
    match answer {
        Answer::Exception(code) => vec![function | 0x80, *code],
        Answer::Registers(words) => {
            let mut b = vec![function, (words.len() * 2) as u8];
            b.extend(words.iter().flat_map(|w| w.to_be_bytes()));
            b
        }
        Answer::Bits(bits) => {
            let mut b = vec![function, bits.len().div_ceil(8) as u8];
            b.extend(bits.chunks(8).map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, &on)| acc | (u8::from(on) << i))
            }));
            b
        }
    }
}
