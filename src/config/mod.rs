//! devices.yaml: the schema users write, parsed with serde-saphyr so that every
//! problem can point at a file, line and column. Parsing produces the registry's
//! domain types (`registry::Device`); nothing downstream sees raw YAML.
//!
//! Validation collects every problem in the file instead of stopping at the
//! first, so a field engineer fixes a file in one pass.

pub mod lint;
mod raw;
pub(crate) use raw::describe_parse_error;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::registry::{
    Address, Align, CronSchedule, DataType, Device, Register, RegisterKind, RegisterMaps,
    RequestLimits, Schedule, UnitId, ValidRange, WordOrder, parse_duration,
};
use raw::{RawDevice, RawFile, RawRegister};

pub use crate::registry::{DEFAULT_EVERY, DEFAULT_PORT, DEFAULT_TIMEOUT, DEFAULT_UNIT_ID};

/// One problem in a devices.yaml, with where it is and what would be valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub device: Option<String>,
    pub register: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(d) = &self.device {
            write!(f, "device `{d}`: ")?;
        }
        if let Some(r) = &self.register {
            write!(f, "register `{r}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file. Displayed one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a devices.yaml file.
pub fn load(path: &Path) -> Result<Vec<Device>, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            device: None,
            register: None,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&text, &file)
}

/// serde-saphyr's default budget (250,000 nodes, 1,000,000 parser events) is
/// there against alias bombs, but it also refuses honest files: 10,000
/// devices × 10 registers is about 450,000 nodes, and a register map shared
/// through an anchor (`registers: *meter`) expands to far more nodes than
/// the text has bytes. The caps on nodes, events and replayed alias events
/// grow with the text instead, 64 nodes per byte, so the work stays linear
/// in the file's size. The alias-to-anchor ratio check is off: one map
/// shared by thousands of devices is the normal case here, and the linear
/// caps already bound what aliases can expand to.
fn yaml_options(text: &str) -> serde_saphyr::Options {
    let defaults = serde_saphyr::Budget::default();
    let nodes = defaults.max_nodes.max(text.len().saturating_mul(64));
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: nodes,
            max_events: defaults.max_events.max(nodes.saturating_mul(2)),
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: defaults.max_events.max(nodes.saturating_mul(2)),
        },
    }
}

/// Parses and validates devices.yaml text; `file` is only used in messages.
///
/// Two passes over the text keep memory proportional to the result, not to
/// the raw YAML: a raw register with the location of every field is about
/// 1 KB, so holding 10,000 raw devices × 10 registers took 180 MB at the
/// peak (and glibc kept it). The first pass reads only `defaults` (skipping
/// `devices` without building anything), because every device is checked
/// against them and the two keys may come in either order; the second
/// streams `devices`, turning each raw entry into a `Device` and dropping it.
pub fn parse(text: &str, file: &str) -> Result<Vec<Device>, ConfigErrors> {
    let parse_error = |e: serde_saphyr::Error| {
        let loc = e.location();
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line: loc.map_or(0, |l| l.line()),
            column: loc.map_or(0, |l| l.column()),
            device: None,
            register: None,
            message: raw::describe_parse_error(&e),
        }])
    };
    let head: RawFile =
        serde_saphyr::from_str_with_options(text, yaml_options(text)).map_err(parse_error)?;
    let mut v = Validator {
        file,
        errors: Vec::new(),
        maps: RegisterMaps::default(),
    };
    let defaults = v.defaults(head.defaults);
    let devices =
        serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(text), |de| {
            serde::de::DeserializeSeed::deserialize(
                raw::DevicesOf {
                    each: |dev: Spanned<RawDevice>, seen: &mut HashMap<String, u64>| {
                        v.device(dev.value, &defaults, dev.referenced, seen)
                    },
                },
                de,
            )
        })
        .map_err(parse_error)?;
    if v.errors.is_empty() {
        Ok(devices)
    } else {
        v.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(v.errors))
    }
}

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

struct Validator<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
    /// Devices with the same registers (an anchor, or the same model written
    /// out again) share one list.
    maps: RegisterMaps,
}

/// Where in the file, and in which device/register, a check is running.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    device: Option<&'a str>,
    register: Option<&'a str>,
}

impl<'a> Validator<'a> {
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
    fn defaults(&mut self, raw: Option<Spanned<RawDevice>>) -> RawDevice {
        let Some(d) = raw else {
            return RawDevice::default();
        };
        let none = Ctx {
            device: None,
            register: None,
        };
        if let Some(n) = &d.value.name {
            self.error(
                n.referenced,
                none,
                "`defaults` cannot set `name`; names are per device",
            );
        }
        if let Some(r) = &d.value.registers {
            self.error(
                r.referenced,
                none,
                "`defaults` cannot set `registers`; registers are per device",
            );
        }
        d.value
    }

    fn device(
        &mut self,
        raw: RawDevice,
        defaults: &RawDevice,
        at: Location,
        seen: &mut HashMap<String, u64>,
    ) -> Option<Device> {
        let top = Ctx {
            device: None,
            register: None,
        };
        let Some(name) = raw.name.clone() else {
            self.error(
                at,
                top,
                "device has no `name`; every device needs a unique name",
            );
            return None;
        };
        let dname = name.value.as_str();
        let ctx = Ctx {
            device: Some(dname),
            register: None,
        };
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
        let errors_before = self.errors.len();

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
        let unit = self.int_in(
            raw.unit_id.as_ref().or(defaults.unit_id.as_ref()),
            ctx,
            "unit_id",
            0,
            255,
            DEFAULT_UNIT_ID.into(),
        );
        let schedule = self.device_schedule(&raw, defaults, ctx);
        let timeout = self.duration(
            raw.timeout.as_ref().or(defaults.timeout.as_ref()),
            ctx,
            "timeout",
            DEFAULT_TIMEOUT,
        );
        let limits = self.limits(&raw, defaults, ctx);
        let active = raw
            .active
            .or(defaults.active.clone())
            .is_none_or(|a| a.value);
        let mut tags = defaults.tags.clone().map(|t| t.value).unwrap_or_default();
        tags.extend(raw.tags.map(|t| t.value).unwrap_or_default());

        let registers = match raw.registers {
            Some(regs) if !regs.value.is_empty() => self.registers(regs.value, ctx, &limits),
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
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Device {
            id: 0,
            name: name.value,
            host: host?.value.clone(),
            port: port as u16,
            unit_id: UnitId(unit as u8),
            active,
            schedule,
            timeout,
            limits,
            tags: tags.into_iter().collect::<BTreeMap<_, _>>(),
            registers: self.maps.share(registers),
            register_ids: Box::default(),
        })
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
        }
    }

    fn registers(
        &mut self,
        raws: Vec<Spanned<RawRegister>>,
        ctx: Ctx<'_>,
        limits: &RequestLimits,
    ) -> Vec<Register> {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::new();
        for r in raws {
            let at = r.referenced;
            if let Some(reg) = self.register(r.value, at, ctx, limits, &mut seen) {
                out.push(reg);
            }
        }
        out
    }

    fn register(
        &mut self,
        raw: RawRegister,
        at: Location,
        dctx: Ctx<'_>,
        limits: &RequestLimits,
        seen: &mut HashMap<String, u64>,
    ) -> Option<Register> {
        let Some(name) = raw.name.clone() else {
            self.error(
                at,
                dctx,
                "register has no `name`; every register needs a name unique within its device",
            );
            return None;
        };
        let ctx = Ctx {
            device: dctx.device,
            register: Some(&name.value),
        };
        let before = self.errors.len();
        if let Err(m) = check_name(&name.value) {
            self.error(name.referenced, ctx, m);
        }
        if let Some(first) = seen.insert(name.value.clone(), name.referenced.line()) {
            self.error(
                name.referenced,
                ctx,
                format!(
                    "duplicate register name in this device; `{}` is already used on line {first}",
                    name.value
                ),
            );
        }
        let kind = match &raw.kind {
            None => {
                self.error(
                    at,
                    ctx,
                    format!(
                        "register has no `kind`; valid kinds: {}",
                        RegisterKind::VALID
                    ),
                );
                None
            }
            Some(k) => self.parsed::<RegisterKind>(k, ctx),
        };
        let data_type = match (&raw.r#type, kind, &raw.bit) {
            (Some(t), _, _) => self.parsed::<DataType>(t, ctx),
            (None, Some(k), _) if k.is_bit() => Some(DataType::Bool),
            (None, _, Some(_)) => Some(DataType::Bool),
            (None, _, None) => Some(DataType::U16),
        };
        let at_type = raw.r#type.as_ref().map_or(at, |t| t.referenced);
        if let (Some(k), Some(t)) = (kind, data_type)
            && k.is_bit()
            && t != DataType::Bool
        {
            self.error(
                at_type,
                ctx,
                format!(
                    "{} registers hold single bits; use `type: bool`",
                    k.as_str()
                ),
            );
        }
        let bit = self.bit(&raw, kind, data_type, ctx, at_type);
        let length = self.length(&raw, data_type, limits, ctx, at_type);
        let order = match (&raw.order, data_type) {
            (None, _) => Some(WordOrder::Abcd),
            (Some(o), Some(t)) => self.order(o, t, ctx),
            (Some(_), None) => None,
        };
        let address = match &raw.address {
            None => {
                self.error(
                    at,
                    ctx,
                    "register has no `address`; give the 0-based protocol address (0..65535)",
                );
                None
            }
            Some(a) if !(0..=65535).contains(&a.value) => {
                self.error(
                    a.referenced,
                    ctx,
                    format!(
                        "address {} is outside 0..65535 (0-based protocol addresses)",
                        a.value
                    ),
                );
                None
            }
            Some(a) => Some(a),
        };
        if let (Some(a), Some(t)) = (address, data_type) {
            let width = if t == DataType::String {
                length.unwrap_or(1)
            } else {
                t.width()
            };
            let last = a.value + i64::from(width) - 1;
            if last > 65535 {
                self.error(
                    a.referenced,
                    ctx,
                    format!(
                        "address {} + {} registers of {} runs past 65535 (last address would be {last}); move the register down",
                        a.value,
                        width,
                        t.as_str()
                    ),
                );
            }
        }
        let scale = raw.scale.as_ref().map_or(1.0, |s| s.value);
        if let Some(s) = &raw.scale
            && (!s.value.is_finite() || s.value == 0.0)
        {
            self.error(
                s.referenced,
                ctx,
                format!(
                    "scale {} would hide the value; use a finite, non-zero number (1 for none)",
                    s.value
                ),
            );
        }
        let offset = raw.offset.as_ref().map_or(0.0, |o| o.value);
        if let Some(o) = &raw.offset
            && !o.value.is_finite()
        {
            self.error(
                o.referenced,
                ctx,
                "offset must be a finite number (0 for none)",
            );
        }
        let valid = raw
            .valid
            .as_ref()
            .map_or(ValidRange::default(), |v| ValidRange {
                min: v.value.min,
                max: v.value.max,
            });
        if let (Some(v), Some(min), Some(max)) = (&raw.valid, valid.min, valid.max)
            && min > max
        {
            self.error(
                v.referenced,
                ctx,
                format!("valid range has min {min} above max {max}"),
            );
        }
        let schedule = self.schedule(
            raw.every.as_ref(),
            raw.cron.as_ref(),
            raw.timezone.as_ref(),
            None,
            ctx,
        );
        if self.errors.len() > before {
            return None;
        }
        Some(Register {
            name: name.value.as_str().into(),
            kind: kind?,
            address: Address(address?.value as u16),
            data_type: data_type?,
            order: order?,
            scale,
            offset,
            unit: raw.unit.map(|u| u.value.into()),
            valid,
            bit,
            length,
            schedule: schedule.map(Box::new),
        })
    }

    /// A device's schedule: its own `every` or `cron` if it has one, else the
    /// one in `defaults`; `timezone` and `align` likewise.
    fn device_schedule(&mut self, raw: &RawDevice, defaults: &RawDevice, ctx: Ctx<'_>) -> Schedule {
        let own = raw.every.is_some() || raw.cron.is_some();
        let src = if own { raw } else { defaults };
        let tz = raw.timezone.as_ref().or(defaults.timezone.as_ref());
        let align = raw.align.as_ref().or(defaults.align.as_ref());
        self.schedule(src.every.as_ref(), src.cron.as_ref(), tz, align, ctx)
            .unwrap_or(Schedule::every(DEFAULT_EVERY))
    }

    /// `every` (with `align`) or `cron` (with `timezone`), never both.
    fn schedule(
        &mut self,
        every: Option<&Spanned<String>>,
        cron: Option<&Spanned<String>>,
        timezone: Option<&Spanned<String>>,
        align: Option<&Spanned<String>>,
        ctx: Ctx<'_>,
    ) -> Option<Schedule> {
        match (every, cron) {
            (Some(_), Some(c)) => {
                self.error(c.referenced, ctx, "use either `every` or `cron`, not both");
                None
            }
            (None, Some(c)) => {
                if let Some(a) = align {
                    self.error(a.referenced, ctx, "`align` applies to `every` schedules; a cron expression says exactly when to poll");
                }
                let tz = timezone.map_or("UTC", |t| t.value.as_str());
                match CronSchedule::parse(&c.value, tz) {
                    Ok(s) => Some(Schedule::Cron(Box::new(s))),
                    Err(m) => {
                        let at = if m.starts_with("unknown time zone") {
                            timezone.map_or(c.referenced, |t| t.referenced)
                        } else {
                            c.referenced
                        };
                        self.error(at, ctx, m);
                        None
                    }
                }
            }
            (Some(e), None) => {
                let every = self.duration(Some(e), ctx, "every", DEFAULT_EVERY);
                let align = match align.map(|a| (a, a.value.as_str())) {
                    None | Some((_, "spread")) => Align::Spread,
                    Some((_, "strict")) => Align::Strict,
                    Some((a, other)) => {
                        self.error(
                            a.referenced,
                            ctx,
                            format!("unknown align `{other}`; valid: spread (default), strict"),
                        );
                        Align::Spread
                    }
                };
                Some(Schedule::Every { every, align })
            }
            (None, None) => None,
        }
    }

    /// `bit: 0..15` picks one bit of a holding or input register (type bool).
    fn bit(
        &mut self,
        raw: &RawRegister,
        kind: Option<RegisterKind>,
        t: Option<DataType>,
        ctx: Ctx<'_>,
        at_type: Location,
    ) -> Option<u8> {
        match (&raw.bit, kind, t) {
            (Some(b), _, _) if !(0..=15).contains(&b.value) => {
                self.error(
                    b.referenced,
                    ctx,
                    format!(
                        "bit {} is outside 0..15 (0 is the least significant bit)",
                        b.value
                    ),
                );
                None
            }
            (Some(b), Some(k), _) if k.is_bit() => {
                self.error(b.referenced, ctx, format!("`bit` selects a bit of a 16-bit register; {} registers are single bits already", k.as_str()));
                None
            }
            (Some(b), _, Some(t)) if t != DataType::Bool => {
                self.error(
                    b.referenced,
                    ctx,
                    format!("`bit` needs `type: bool`, not {}", t.as_str()),
                );
                None
            }
            (Some(b), _, _) => Some(b.value as u8),
            (None, Some(k), Some(DataType::Bool)) if !k.is_bit() => {
                self.error(
                    at_type,
                    ctx,
                    "`type: bool` on a 16-bit register needs `bit: 0..15` to say which bit",
                );
                None
            }
            (None, _, _) => None,
        }
    }

    /// `length` (in registers) is required for strings and meaningless otherwise.
    fn length(
        &mut self,
        raw: &RawRegister,
        t: Option<DataType>,
        limits: &RequestLimits,
        ctx: Ctx<'_>,
        at_type: Location,
    ) -> Option<u16> {
        let max = i64::from(limits.max_registers);
        match (&raw.length, t) {
            (None, Some(DataType::String)) => {
                self.error(at_type, ctx, "`type: string` needs `length`: how many registers (two bytes each) the text spans");
                None
            }
            (Some(l), Some(DataType::String)) if !(1..=max).contains(&l.value) => {
                self.error(
                    l.referenced,
                    ctx,
                    format!(
                        "length {} is outside 1..{max} (a string is read in one request)",
                        l.value
                    ),
                );
                None
            }
            (Some(l), Some(DataType::String)) => Some(l.value as u16),
            (Some(l), Some(t)) => {
                self.error(
                    l.referenced,
                    ctx,
                    format!(
                        "`length` is only for `type: string`; {} has a fixed width",
                        t.as_str()
                    ),
                );
                None
            }
            _ => None,
        }
    }

    /// Orders must fit the type: word swaps need several words, 64-bit names
    /// need 64-bit types, and strings only know the byte swap.
    fn order(&mut self, o: &Spanned<String>, t: DataType, ctx: Ctx<'_>) -> Option<WordOrder> {
        let (order, named_64) = match WordOrder::parse(&o.value) {
            Ok(v) => v,
            Err(m) => {
                self.error(o.referenced, ctx, m);
                return None;
            }
        };
        let problem = match t {
            DataType::U64 | DataType::I64 | DataType::F64 => None,
            _ if named_64 => Some(format!(
                "{} is a 64-bit order; for {} use {}",
                o.value,
                t.as_str(),
                order.as_str()
            )),
            DataType::U32 | DataType::I32 | DataType::F32 => None,
            _ if order.swaps_words() => Some(format!(
                "{} swaps words, but {} has {}; use ABCD or BADC (byte swap)",
                o.value,
                t.as_str(),
                if t == DataType::String {
                    "no word order"
                } else {
                    "one word"
                }
            )),
            _ => None,
        };
        match problem {
            Some(m) => {
                self.error(o.referenced, ctx, m);
                None
            }
            None => Some(order),
        }
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

#[cfg(test)]
mod tests;
