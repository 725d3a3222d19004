//! Turning the raw devices.yaml into the registry's types, one check at a
//! time: [`device`] for a device and its connection, [`register`] for each
//! register, [`schedule`] for `every` / `cron`. Every problem is collected
//! with its place in the file instead of stopping at the first, so a field
//! engineer fixes a file in one pass.

mod deadband;
mod device;
mod register;
mod schedule;
mod transport;

use std::collections::HashMap;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::node::{Node, Problems};
use super::raw::RawDevice;
use super::{ConfigError, ConfigErrors};
use crate::registry::{Device, RegisterMaps, parse_duration};

/// Names end up in Redis keys and URLs, so they are kept to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 100 {
        return Err("name is longer than 100 characters".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "name `{name}` contains `{c}`; names may use letters, digits, `-`, `_` and `.`"
        )),
        None => Ok(()),
    }
}

pub(super) struct Validator<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
    /// Devices with the same registers (an anchor, or the same model written
    /// out again) share one list.
    maps: RegisterMaps,
    /// The first device seen on each host:port, for the endpoint settings
    /// all its devices must share.
    endpoints: HashMap<String, EndpointSeen>,
    /// The first device on each link (`Device::endpoint`), to refuse a later
    /// one that frames or sets up the same link differently.
    buses: transport::Buses,
}

/// Where an endpoint's shared settings were first given.
struct EndpointSeen {
    device: String,
    at: Location,
    delay_after_connect: Duration,
    max_in_flight: u8,
}

/// Where in the file, and in which device/register, a check is running.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    device: Option<&'a str>,
    register: Option<&'a str>,
}

impl Ctx<'_> {
    /// Outside any device: `defaults` and a device without a name.
    const TOP: Ctx<'static> = Ctx {
        device: None,
        register: None,
    };
}

impl<'a> Validator<'a> {
    pub(super) fn new(file: &'a str) -> Self {
        Self {
            file,
            errors: Vec::new(),
            maps: RegisterMaps::default(),
            endpoints: HashMap::new(),
            buses: transport::Buses::default(),
        }
    }

    /// The devices, or every problem found, in the order of the file.
    pub(super) fn finish(mut self, devices: Vec<Device>) -> Result<Vec<Device>, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(devices)
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(self.errors))
        }
    }

    /// What reading the fields found wrong (see `raw`), in `ctx`.
    fn problems(&mut self, problems: Problems, ctx: Ctx<'_>) {
        for (at, message) in problems {
            self.error(at, ctx, message);
        }
    }

    fn error(&mut self, at: Location, ctx: Ctx<'_>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: at.line(),
            column: at.column(),
            device: ctx.device.map(str::to_string),
            register: ctx.register.map(str::to_string),
            message: message.into(),
        });
    }

    /// The `defaults` block, with the keys it may not set reported.
    pub(super) fn defaults(&mut self, raw: Option<Spanned<Node>>) -> RawDevice {
        let Some(node) = raw else {
            return RawDevice::default();
        };
        let mut d = Spanned::new(
            RawDevice::read(&node, "`defaults`"),
            node.referenced,
            node.defined,
        );
        self.problems(std::mem::take(&mut d.value.problems), Ctx::TOP);
        if let Some(n) = &d.value.name {
            self.error(
                n.referenced,
                Ctx::TOP,
                "`defaults` cannot set `name`; names are per device",
            );
        }
        self.defaults_deadband(device::written_deadband(&d.value));
        if let Some(r) = &d.value.registers {
            self.error(
                r.referenced,
                Ctx::TOP,
                "`defaults` cannot set `registers`; registers are per device",
            );
        }
        d.value
    }

    fn parsed<T: std::str::FromStr<Err = String>>(
        &mut self,
        v: &Spanned<String>,
        ctx: Ctx<'_>,
    ) -> Option<T> {
        match v.value.parse() {
            Ok(t) => Some(t),
            Err(m) => {
                self.error(v.referenced, ctx, m);
                None
            }
        }
    }

    fn int_in(
        &mut self,
        v: Option<&Spanned<i64>>,
        ctx: Ctx<'_>,
        field: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(v) if (min..=max).contains(&v.value) => v.value,
            Some(v) => {
                self.error(
                    v.referenced,
                    ctx,
                    format!("{field} {} is outside {min}..{max}", v.value),
                );
                default
            }
        }
    }

    /// Like `duration`, but `0`, `0ms` or `0s` mean "none".
    fn duration_or_zero(
        &mut self,
        v: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
        field: &str,
    ) -> Duration {
        match v {
            Some(s)
                if s.value
                    .trim()
                    .trim_start_matches(['0', '.'])
                    .chars()
                    .all(|c| c.is_ascii_alphabetic()) =>
            {
                Duration::ZERO
            }
            v => self.duration(v, ctx, field, Duration::ZERO),
        }
    }

    fn duration(
        &mut self,
        v: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(v) => parse_duration(&v.value).unwrap_or_else(|m| {
                self.error(v.referenced, ctx, format!("`{field}`: {m}"));
                default
            }),
        }
    }
}
