//! A device's transport and serial line, and the rule that devices sharing a
//! link agree on it: one serial path is one wire with one baud rate and
//! character format, and one gateway's host:port speaks one framing.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::super::raw::{RawDevice, RawSerial};
use super::{Ctx, Validator};
use crate::registry::{
    BAUD_MAX, BAUD_MIN, DataBits, Device, SerialLine, StopBits, Transport, TransportKind,
    link_conflict,
};

/// The first device seen on each link: its name, where its transport was
/// set, and the transport.
#[derive(Default)]
pub(super) struct Buses(HashMap<String, (String, Location, Transport)>);

impl Validator<'_> {
    /// `transport` (default tcp) and, for `rtu`, the serial line from the
    /// device's `serial` keys over those of `defaults`. `serial` on a TCP
    /// device is an error; in `defaults` it is for the file's rtu devices.
    pub(super) fn transport(
        &mut self,
        raw: &RawDevice,
        defaults: &RawDevice,
        at: Location,
        ctx: Ctx<'_>,
    ) -> Transport {
        let kind = raw
            .transport
            .as_ref()
            .or(defaults.transport.as_ref())
            .and_then(|t| self.parsed::<TransportKind>(t, ctx))
            .unwrap_or(TransportKind::Tcp);
        match kind {
            TransportKind::Rtu => {
                let own = raw.serial.as_ref().map(|s| &s.value);
                let base = defaults.serial.as_ref().map(|s| &s.value);
                let place = raw.serial.as_ref().map_or(at, |s| s.referenced);
                // Without a usable line the device is refused anyway; an
                // empty one keeps the host checks (TCP's) from adding noise.
                let line = self
                    .serial_line(own, base, place, ctx)
                    .unwrap_or_else(|| SerialLine::new(""));
                Transport::Rtu(Box::new(line))
            }
            other => {
                if let Some(s) = &raw.serial {
                    let name = if other == TransportKind::Tcp {
                        "tcp"
                    } else {
                        "rtu-over-tcp"
                    };
                    self.error(
                        s.referenced,
                        ctx,
                        format!("`serial` is only for transport rtu, and this device's transport is {name}; set `transport: rtu` to poll it on a serial line, or remove `serial`"),
                    );
                }
                if other == TransportKind::Tcp {
                    Transport::Tcp
                } else {
                    Transport::RtuOverTcp
                }
            }
        }
    }

    fn serial_line(
        &mut self,
        own: Option<&RawSerial>,
        base: Option<&RawSerial>,
        at: Location,
        ctx: Ctx<'_>,
    ) -> Option<SerialLine> {
        let pick = |f: fn(&RawSerial) -> Option<&Spanned<String>>| {
            own.and_then(f).or_else(|| base.and_then(f)).cloned()
        };
        let pick_int = |f: fn(&RawSerial) -> Option<&Spanned<i64>>| {
            own.and_then(f).or_else(|| base.and_then(f)).cloned()
        };
        let Some(path) = pick(|s| s.path.as_ref()).filter(|p| !p.value.trim().is_empty()) else {
            if own.is_some_and(|s| s.malformed) {
                return None;
            }
            self.error(
                at,
                ctx,
                "transport rtu needs the serial line's path: serial: {path: /dev/ttyUSB0} (baud 9600, parity none, data_bits 8, stop_bits 1 by default)",
            );
            return None;
        };
        let mut line = SerialLine::new(path.value);
        line.baud = self.int_in(
            pick_int(|s| s.baud.as_ref()).as_ref(),
            ctx,
            "baud",
            BAUD_MIN.into(),
            BAUD_MAX.into(),
            line.baud.into(),
        ) as u32;
        if let Some(p) = pick(|s| s.parity.as_ref())
            && let Some(parity) = self.parsed(&p, ctx)
        {
            line.parity = parity;
        }
        if let Some(b) = pick_int(|s| s.data_bits.as_ref()) {
            match DataBits::of(b.value) {
                Ok(bits) => line.data_bits = bits,
                Err(m) => self.error(b.referenced, ctx, m),
            }
        }
        if let Some(b) = pick_int(|s| s.stop_bits.as_ref()) {
            match StopBits::of(b.value) {
                Ok(bits) => line.stop_bits = bits,
                Err(m) => self.error(b.referenced, ctx, m),
            }
        }
        Some(line)
    }

    /// Whether `device`'s link agrees with the first device on it; if not,
    /// says so at `at` (where this device sets its transport) naming the
    /// other device and its place.
    pub(super) fn same_bus(&mut self, device: &Device, at: Location, ctx: Ctx<'_>) -> bool {
        let key = device.endpoint();
        let Some((first, place, transport)) = self.buses.0.get(&key) else {
            self.buses
                .0
                .insert(key, (device.name.clone(), at, device.transport.clone()));
            return true;
        };
        let other = format!(
            "device `{first}` ({}:{}:{})",
            self.file,
            place.line(),
            place.column()
        );
        match link_conflict(&key, &device.transport, transport, &other) {
            None => true,
            Some(message) => {
                self.error(at, ctx, message);
                false
            }
        }
    }
}
