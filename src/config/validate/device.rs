//! A device: its name, endpoint, timing limits, tags and register list.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::super::raw::{RawDevice, RawRegister};
use super::super::{DEFAULT_PORT, DEFAULT_TIMEOUT, DEFAULT_UNIT_ID};
use super::deadband::{Inherited, Written};
use super::{Ctx, Validator, check_name};
use crate::registry::{
    Demotion, Device, Register, RequestLimits, Tenant, Transport, UnitId, check_rtu_unit,
};

/// Bounds of the database's CHECKs (migration 0012).
const MAX_DELAY_AFTER_CONNECT: Duration = Duration::from_secs(60);
const MAX_DEMOTE_MAX: Duration = Duration::from_secs(86_400);

impl Validator<'_> {
    pub(in crate::config) fn device(
        &mut self,
        raw: RawDevice,
        defaults: &RawDevice,
        at: Location,
        seen: &mut HashMap<String, u64>,
    ) -> Option<Device> {
        let mut raw = raw;
        let problems = std::mem::take(&mut raw.problems);
        let Some(name) = raw.name.clone() else {
            // A device that is not a map, or whose `name` is not text, has
            // its problem reported already; "no name" would only repeat it.
            if !problems.is_empty() {
                self.problems(problems, Ctx::TOP);
                return None;
            }
            self.error(
                at,
                Ctx::TOP,
                "device has no `name`; every device needs a unique name",
            );
            return None;
        };
        let ctx = Ctx {
            device: Some(name.value.as_str()),
            register: None,
        };
        self.device_name(&name, ctx, seen);
        let errors_before = self.errors.len();
        self.problems(problems, ctx);

        let transport = self.transport(&raw, defaults, at, ctx);
        let (host, port, unit_id) = self.endpoint(&raw, defaults, at, ctx, &transport);
        let schedule = self.device_schedule(&raw, defaults, ctx);
        let timeout = self.duration(
            raw.timeout.as_ref().or(defaults.timeout.as_ref()),
            ctx,
            "timeout",
            DEFAULT_TIMEOUT,
        );
        let limits = self.limits(&raw, defaults, ctx);
        if let Some(host) = &host {
            let set = given_at(&raw.delay_after_connect, &defaults.delay_after_connect)
                .or(given_at(&raw.max_in_flight, &defaults.max_in_flight))
                .unwrap_or(at);
            // The link devices share: the serial path, or host:port.
            let link = match transport.serial() {
                Some(line) => line.path.clone(),
                None => format!("{}:{port}", host.as_str()),
            };
            self.endpoint_agrees(&link, &name.value, set, &limits, ctx);
        }
        if limits.max_in_flight > 1 && transport != Transport::Tcp {
            let at = given_at(&raw.max_in_flight, &defaults.max_in_flight).unwrap_or(at);
            self.error(
                at,
                ctx,
                format!(
                    "`max_in_flight` {} needs transport tcp: RTU frames carry no transaction id to match answers to requests, so a bus takes one request at a time; remove it (or set 1)",
                    limits.max_in_flight
                ),
            );
        }
        let inherited =
            self.device_deadband(written_deadband(&raw), written_deadband(defaults), ctx);
        let active = raw
            .active
            .or(defaults.active.clone())
            .is_none_or(|a| a.value);
        let tags = tags(raw.tags, defaults);
        let tenant = self.tenant(raw.tenant.as_ref().or(defaults.tenant.as_ref()), ctx);
        let registers = self.device_registers(raw.registers, at, ctx, &limits, inherited);
        if !registers.is_empty() {
            let any_band = registers.iter().any(|r| r.deadband.is_some());
            self.device_heartbeat_used(raw.heartbeat.as_ref(), any_band, ctx);
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let transport_at = (raw.serial.as_ref().map(|s| s.referenced))
            .or(raw.transport.as_ref().map(|t| t.referenced))
            .unwrap_or(at);
        let device = Device {
            id: 0,
            name: name.value.clone(),
            host: host?,
            port,
            unit_id,
            transport,
            active,
            schedule,
            timeout,
            limits,
            tags,
            tenant,
            registers: self.maps.share(registers),
            register_ids: Box::default(),
        };
        self.same_bus(&device, transport_at, ctx).then_some(device)
    }

    /// The device's tenant (its own or the defaults'), checked where it is
    /// written.
    fn tenant(&mut self, given: Option<&Spanned<String>>, ctx: Ctx<'_>) -> Option<Tenant> {
        let given = given?;
        Tenant::parse(&given.value)
            .map_err(|m| self.error(given.referenced, ctx, m))
            .ok()
    }

    /// A safe name, not used by an earlier device.
    fn device_name(
        &mut self,
        name: &Spanned<String>,
        ctx: Ctx<'_>,
        seen: &mut HashMap<String, u64>,
    ) {
        let dname = name.value.as_str();
        if let Err(m) = check_name(dname) {
            self.error(name.referenced, ctx, m);
        }
        if let Some(first) = seen.insert(dname.to_string(), name.referenced.line()) {
            self.error(
                name.referenced,
                ctx,
                format!("duplicate device name; `{dname}` is already used on line {first}"),
            );
        }
    }

    /// Host (required but on a serial line), port and unit id, each from the
    /// device or `defaults`. A serial device has neither host nor port:
    /// naming them on the device is an error (they would be silently
    /// unused); the ones `defaults` gives are for the file's TCP devices.
    fn endpoint(
        &mut self,
        raw: &RawDevice,
        defaults: &RawDevice,
        at: Location,
        ctx: Ctx<'_>,
        transport: &Transport,
    ) -> (Option<String>, u16, UnitId) {
        let unit = self.unit_id(raw, defaults, ctx, transport);
        if let Transport::Rtu(_) = transport {
            let set = [
                ("host", raw.host.as_ref().map(|h| h.referenced)),
                ("port", raw.port.as_ref().map(|p| p.referenced)),
            ];
            for (key, place) in set {
                if let Some(place) = place {
                    self.error(
                        place,
                        ctx,
                        format!("`{key}` does not apply to transport rtu (a serial line); remove it, the line is `serial.path`"),
                    );
                }
            }
            return (Some(String::new()), DEFAULT_PORT, unit);
        }
        let host = raw.host.as_ref().or(defaults.host.as_ref());
        if host.is_none() {
            self.error(
                at,
                ctx,
                "device has no `host`; set it here or in `defaults`",
            );
        }
        let port = self.int_in(
            raw.port.as_ref().or(defaults.port.as_ref()),
            ctx,
            "port",
            1,
            65535,
            DEFAULT_PORT.into(),
        );
        (host.map(|h| h.value.clone()), port as u16, unit)
    }

    /// 0..255 on Modbus TCP (gateways route by it, 0 and 255 included);
    /// 1..247 on the RTU transports, where 0 is broadcast.
    fn unit_id(
        &mut self,
        raw: &RawDevice,
        defaults: &RawDevice,
        ctx: Ctx<'_>,
        transport: &Transport,
    ) -> UnitId {
        let given = raw.unit_id.as_ref().or(defaults.unit_id.as_ref());
        let unit = self.int_in(given, ctx, "unit_id", 0, 255, DEFAULT_UNIT_ID.into()) as u8;
        if let Some(given) = given
            && transport.is_rtu()
            && (0..=255).contains(&given.value)
            && let Err(m) = check_rtu_unit(unit)
        {
            self.error(
                given.referenced,
                ctx,
                format!("{m} (transport {})", transport.as_str()),
            );
        }
        UnitId(unit)
    }

    fn limits(&mut self, raw: &RawDevice, defaults: &RawDevice, ctx: Ctx<'_>) -> RequestLimits {
        let d = RequestLimits::DEFAULT;
        RequestLimits {
            max_registers: self.int_in(
                raw.max_registers_per_request
                    .as_ref()
                    .or(defaults.max_registers_per_request.as_ref()),
                ctx,
                "max_registers_per_request",
                1,
                125,
                d.max_registers.into(),
            ) as u16,
            max_bits: self.int_in(
                raw.max_bits_per_request
                    .as_ref()
                    .or(defaults.max_bits_per_request.as_ref()),
                ctx,
                "max_bits_per_request",
                1,
                2000,
                d.max_bits.into(),
            ) as u16,
            max_gap: self.int_in(
                raw.max_gap.as_ref().or(defaults.max_gap.as_ref()),
                ctx,
                "max_gap",
                0,
                2000,
                d.max_gap.into(),
            ) as u16,
            retries: self.int_in(
                raw.retries.as_ref().or(defaults.retries.as_ref()),
                ctx,
                "retries",
                0,
                10,
                d.retries.into(),
            ) as u8,
            connect_timeout: self.duration(
                raw.connect_timeout
                    .as_ref()
                    .or(defaults.connect_timeout.as_ref()),
                ctx,
                "connect_timeout",
                d.connect_timeout,
            ),
            pause: self.duration_or_zero(
                raw.pause_between_requests
                    .as_ref()
                    .or(defaults.pause_between_requests.as_ref()),
                ctx,
                "pause_between_requests",
            ),
            log_frames: raw
                .log_frames
                .as_ref()
                .or(defaults.log_frames.as_ref())
                .and_then(|v| self.parsed(v, ctx))
                .unwrap_or_default(),
            delay_after_connect: {
                let v = raw
                    .delay_after_connect
                    .as_ref()
                    .or(defaults.delay_after_connect.as_ref());
                let delay = self.duration_or_zero(v, ctx, "delay_after_connect");
                self.within(
                    v,
                    ctx,
                    "delay_after_connect",
                    delay,
                    Duration::ZERO..=MAX_DELAY_AFTER_CONNECT,
                    "0s..60s: it delays every reconnect, so longer is a mistake",
                )
            },
            max_in_flight: self.int_in(
                raw.max_in_flight
                    .as_ref()
                    .or(defaults.max_in_flight.as_ref()),
                ctx,
                "max_in_flight",
                1,
                16,
                d.max_in_flight.into(),
            ) as u8,
            demotion: Demotion {
                after: self.int_in(
                    raw.demote_after.as_ref().or(defaults.demote_after.as_ref()),
                    ctx,
                    "demote_after",
                    1,
                    100,
                    d.demotion.after.into(),
                ) as u8,
                max: {
                    let v = raw.demote_max.as_ref().or(defaults.demote_max.as_ref());
                    let max = self.duration(v, ctx, "demote_max", d.demotion.max);
                    self.within(v, ctx, "demote_max", max, Demotion::MIN..=MAX_DEMOTE_MAX, "1s..1d: a demoted unit's backoff starts at 1 s and doubles up to it, and it is probed at least daily")
                },
            },
        }
    }

    /// Settings of the connection (`delay_after_connect`, `max_in_flight`) hold for every
    /// device on one host:port, so devices there must not disagree: the
    /// error names both places.
    fn endpoint_agrees(
        &mut self,
        endpoint: &str,
        device: &str,
        at: Location,
        limits: &RequestLimits,
        ctx: Ctx<'_>,
    ) {
        let first = self
            .endpoints
            .entry(endpoint.to_string())
            .or_insert_with(|| super::EndpointSeen {
                device: device.to_string(),
                at,
                delay_after_connect: limits.delay_after_connect,
                max_in_flight: limits.max_in_flight,
            });
        let differs = if first.delay_after_connect != limits.delay_after_connect {
            Some((
                "delay_after_connect",
                format!("{} ms", limits.delay_after_connect.as_millis()),
                format!("{} ms", first.delay_after_connect.as_millis()),
            ))
        } else if first.max_in_flight != limits.max_in_flight {
            Some((
                "max_in_flight",
                limits.max_in_flight.to_string(),
                first.max_in_flight.to_string(),
            ))
        } else {
            None
        };
        if let Some((field, here, there)) = differs {
            let message = format!(
                "`{field}` {here} differs from {there} of device `{}` ({}:{}:{}) on the same endpoint {endpoint}; one connection serves both, so set the same value on both (or once in `defaults`)",
                first.device,
                self.file,
                first.at.line(),
                first.at.column(),
            );
            self.error(at, ctx, message);
        }
    }

    /// `value` (read from `v`) if it lies in `range`; otherwise an error
    /// saying the range and why (and the nearest bound, which is never used:
    /// a device with an error is dropped).
    fn within(
        &mut self,
        v: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
        field: &str,
        value: Duration,
        range: std::ops::RangeInclusive<Duration>,
        why: &str,
    ) -> Duration {
        match v {
            Some(v) if !range.contains(&value) => {
                self.error(
                    v.referenced,
                    ctx,
                    format!("`{field}` {} is outside {why}", v.value),
                );
                value.clamp(*range.start(), *range.end())
            }
            _ => value,
        }
    }

    /// A device needs at least one register.
    fn device_registers(
        &mut self,
        raws: Option<Spanned<Vec<Spanned<RawRegister>>>>,
        at: Location,
        ctx: Ctx<'_>,
        limits: &RequestLimits,
        inherited: Inherited,
    ) -> Vec<Register> {
        match raws {
            Some(regs) if !regs.value.is_empty() => {
                self.registers(regs.value, ctx, limits, inherited)
            }
            Some(regs) => {
                self.error(
                    regs.referenced,
                    ctx,
                    "device has an empty `registers` list; add at least one register",
                );
                Vec::new()
            }
            None => {
                self.error(
                    at,
                    ctx,
                    "device has no `registers`; add at least one register",
                );
                Vec::new()
            }
        }
    }

    fn registers(
        &mut self,
        raws: Vec<Spanned<RawRegister>>,
        ctx: Ctx<'_>,
        limits: &RequestLimits,
        inherited: Inherited,
    ) -> Vec<Register> {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::new();
        for r in raws {
            let at = r.referenced;
            if let Some(reg) = self.register(r.value, at, ctx, limits, inherited, &mut seen) {
                out.push(reg);
            }
        }
        out
    }
}

/// The device's tags over those of `defaults`.
fn tags(
    own: Option<Spanned<BTreeMap<String, String>>>,
    defaults: &RawDevice,
) -> BTreeMap<String, String> {
    let mut tags = defaults.tags.clone().map(|t| t.value).unwrap_or_default();
    tags.extend(own.map(|t| t.value).unwrap_or_default());
    tags
}

/// Where a device setting was written: on the device, else in `defaults`.
fn given_at<T>(device: &Option<Spanned<T>>, defaults: &Option<Spanned<T>>) -> Option<Location> {
    device.as_ref().or(defaults.as_ref()).map(|v| v.referenced)
}

/// The deadband keys of a device or of `defaults`.
pub(super) fn written_deadband(raw: &RawDevice) -> Written<'_> {
    Written {
        deadband: raw.deadband.as_ref(),
        percent: raw.deadband_percent.as_ref(),
        heartbeat: raw.heartbeat.as_ref(),
    }
}
