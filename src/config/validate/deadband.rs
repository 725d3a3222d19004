//! `deadband`, `deadband_percent` and `heartbeat`, on a register or on a
//! device (or `defaults`) as the default of its registers. A level that
//! names either form of band replaces the band of the level above whole
//! (a register's `deadband: 0.5` wins over its device's
//! `deadband_percent: 1`); `heartbeat` is inherited on its own. Both forms
//! in one map are refused: "outside either" and "outside both" are equally
//! plausible readings, and a field engineer should not have to guess.

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::{Ctx, Validator};
use crate::registry::{Band, DataType, Deadband, PERCENT_MAX, parse_duration};

/// The three keys as written in one map (a register, a device, `defaults`).
#[derive(Clone, Copy, Default)]
pub(super) struct Written<'a> {
    pub deadband: Option<&'a Spanned<f64>>,
    pub percent: Option<&'a Spanned<f64>>,
    pub heartbeat: Option<&'a Spanned<String>>,
}

impl Written<'_> {
    fn names_a_band(&self) -> bool {
        self.deadband.is_some() || self.percent.is_some()
    }
}

/// What a device gives its registers: its own keys over those of `defaults`.
#[derive(Clone, Copy, Default)]
pub(super) struct Inherited {
    band: Option<Band>,
    heartbeat: Option<Duration>,
}

impl Validator<'_> {
    /// The band and heartbeat written in one map, each checked where it is
    /// written when `report` (`defaults` is checked once, not once per device).
    fn written(
        &mut self,
        w: Written<'_>,
        ctx: Ctx<'_>,
        report: bool,
    ) -> (Option<Band>, Option<Duration>) {
        let mut errors = Vec::new();
        let band = match (w.deadband, w.percent) {
            (Some(a), Some(p)) => {
                let (second, first) = if (p.referenced.line(), p.referenced.column())
                    > (a.referenced.line(), a.referenced.column())
                {
                    (p, a)
                } else {
                    (a, p)
                };
                errors.push((
                    second.referenced,
                    format!(
                        "`deadband` and `deadband_percent` are both set (the other at line {}, column {}); keep one: an absolute band in the register's unit, or a percentage of the last stored value",
                        first.referenced.line(),
                        first.referenced.column()
                    ),
                ));
                None
            }
            (Some(a), None) if !a.value.is_finite() || a.value < 0.0 => {
                errors.push((
                    a.referenced,
                    format!(
                        "deadband {} must be a finite number, 0 or more, in the register's unit (0 stores every change)",
                        a.value
                    ),
                ));
                None
            }
            (None, Some(p)) if !p.value.is_finite() || !(0.0..=PERCENT_MAX).contains(&p.value) => {
                errors.push((
                    p.referenced,
                    format!(
                        "deadband_percent {} is outside 0..{PERCENT_MAX}: a percentage of the last stored value, e.g. 1 (0 stores every change)",
                        p.value
                    ),
                ));
                None
            }
            (Some(a), None) => Some(Band::Absolute(a.value)),
            (None, Some(p)) => Some(Band::Percent(p.value)),
            (None, None) => None,
        };
        let heartbeat = w.heartbeat.and_then(|h| match parse_duration(&h.value) {
            Ok(d) => Some(d),
            Err(m) => {
                errors.push((h.referenced, format!("`heartbeat`: {m}")));
                None
            }
        });
        if report {
            for (at, m) in errors {
                self.error(at, ctx, m);
            }
        }
        (band, heartbeat)
    }

    /// Checks the keys of `defaults` once.
    pub(super) fn defaults_deadband(&mut self, w: Written<'_>) {
        self.written(w, Ctx::TOP, true);
    }

    /// What a device gives its registers: the device's keys (checked here)
    /// over those of `defaults` (checked by `defaults_deadband`).
    pub(super) fn device_deadband(
        &mut self,
        own: Written<'_>,
        defaults: Written<'_>,
        ctx: Ctx<'_>,
    ) -> Inherited {
        let (own_band, own_heartbeat) = self.written(own, ctx, true);
        let (default_band, default_heartbeat) = self.written(defaults, ctx, false);
        Inherited {
            band: if own.names_a_band() {
                own_band
            } else {
                default_band
            },
            heartbeat: own_heartbeat.or(default_heartbeat),
        }
    }

    /// A heartbeat written on the device itself that none of its registers
    /// uses (none has a band) is a mistake; one from `defaults` is meant for
    /// the devices that have a band, so it is not.
    pub(super) fn device_heartbeat_used(
        &mut self,
        heartbeat: Option<&Spanned<String>>,
        any_band: bool,
        ctx: Ctx<'_>,
    ) {
        if let Some(h) = heartbeat
            && !any_band
        {
            self.error(h.referenced, ctx, HEARTBEAT_ALONE);
        }
    }

    /// A register's deadband: its own keys over what its device gives.
    /// A bool or string register given a band by its device stores changes
    /// only (there is no distance between two texts); its own band must be
    /// `deadband: 0`.
    pub(super) fn register_deadband(
        &mut self,
        own: Written<'_>,
        device: Inherited,
        data_type: Option<DataType>,
        at: Location,
        ctx: Ctx<'_>,
    ) -> Option<Box<Deadband>> {
        let (own_band, own_heartbeat) = self.written(own, ctx, true);
        let no_distance = matches!(data_type, Some(DataType::Bool | DataType::String));
        let band = match (own.names_a_band(), device.band) {
            (true, _) => own_band,
            (false, Some(_)) if no_distance => Some(Band::Absolute(0.0)),
            (false, inherited) => inherited,
        };
        let heartbeat = own_heartbeat.or(device.heartbeat);
        let Some(band) = band else {
            if let (Some(h), false) = (own.heartbeat, own.names_a_band()) {
                self.error(h.referenced, ctx, HEARTBEAT_ALONE);
            }
            return None;
        };
        let deadband = Deadband { band, heartbeat };
        if let Some(t) = data_type
            && let Err(m) = deadband.check(t)
        {
            let place = own.deadband.or(own.percent).map_or(at, |v| v.referenced);
            self.error(place, ctx, m);
        }
        Some(Box::new(deadband))
    }
}

const HEARTBEAT_ALONE: &str = "`heartbeat` needs `deadband` or `deadband_percent` (on the register or its device): without a band every reading is stored, so there is nothing for a heartbeat to keep alive";
