//! The registry's domain types: what a device is, which registers it has, and
//! when it is polled. Everything here is already validated: the YAML parser
//! (`config`) and the database loader (`registry::store`) are the only places
//! that build these types from untrusted input.

pub mod cache;
mod deadband;
pub mod rejections;
mod shape;
pub mod store;
mod tenant;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use deadband::{Band, Deadband, HEARTBEAT_MAX, PERCENT_MAX};
pub use tenant::{TENANT_MAX, TENANT_RULE, Tenant};
pub use transport::{
    BAUD_MAX, BAUD_MIN, DEFAULT_BAUD, DataBits, Parity, SerialLine, StopBits, Transport,
    TransportKind, check_rtu_unit, link_conflict,
};

/// Port used when neither the device nor `defaults` names one.
pub const DEFAULT_PORT: u16 = 502;
/// Unit id used when neither the device nor `defaults` names one.
pub const DEFAULT_UNIT_ID: u8 = 1;
/// Poll interval used when neither the device nor `defaults` names one (and
/// the interval a cron device's connection settings are stored with).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);
/// Connect and request timeout used when neither the device nor `defaults` names one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A hash of a name that is the same in every build and Rust version (FNV-1a;
/// `DefaultHasher` may change): what spreads the groups' phases and seeds the
/// simulator's values, both of which must stay put across restarts.
pub fn stable_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Modbus unit identifier (the "slave id" on serial lines, the gateway target on TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub u8);

/// A 0-based protocol address, exactly as it goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub u16);

/// The four Modbus data tables, each read with its own function code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegisterKind {
    /// Holding registers, read with function code 0x03.
    Holding,
    /// Input registers, read with function code 0x04.
    Input,
    /// Coils, read with function code 0x01.
    Coil,
    /// Discrete inputs, read with function code 0x02.
    Discrete,
}

/// How the words (or bits) of a register are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// IEEE 754 half precision (binary16): one word, about three significant
    /// digits, largest finite 65504.
    F16,
    /// Packed BCD, four decimal digits in one word (0x1234 is 1234).
    Bcd16,
    /// Packed BCD, eight decimal digits in two words.
    Bcd32,
    /// One byte of a word, unsigned; which one is `Register::byte`.
    U8,
    /// One byte of a word, two's complement; which one is `Register::byte`.
    I8,
    /// Text packed two bytes per register; its length (in registers) is
    /// `Register::length`.
    String,
}

/// Which byte of its register a `u8` or `i8` reads. Devices pack two small
/// values (a status and a mode, two percentages) into one register; the
/// high byte is the one sent first on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Byte {
    /// Bits 15..8, the first byte on the wire.
    High,
    /// Bits 7..0, the second byte on the wire.
    Low,
}

/// Byte order of values wider than one byte, named by where the bytes of the
/// big-endian value `ABCD` (or `ABCDEFGH`) land on the wire. It is two
/// independent swaps: of the words, and of the two bytes inside each word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// Big-endian words, big-endian bytes (the Modbus default); 64-bit: ABCDEFGH.
    Abcd,
    /// Words reversed ("word swap"); 64-bit: GHEFCDAB.
    Cdab,
    /// Bytes swapped inside each word; 64-bit: BADCFEHG.
    Badc,
    /// Fully little-endian; 64-bit: HGFEDCBA.
    Dcba,
}

/// When a device, or a group of its registers, is polled.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every `every`, on whole multiples of it on the wall clock.
    Every { every: Duration, align: Align },
    /// On the times a cron expression names, in a time zone.
    Cron(Box<CronSchedule>),
}

/// Where in its interval a device polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Align {
    /// At a stable offset derived from the device name, so devices that share
    /// an interval are spread across it (the default).
    Spread,
    /// Exactly on the interval's boundaries.
    Strict,
}

impl Schedule {
    /// An interval schedule, spread across its interval.
    pub fn every(every: Duration) -> Schedule {
        Schedule::Every {
            every,
            align: Align::Spread,
        }
    }

    /// How devices.yaml would write it (`every 5s`, `every 1s strict`,
    /// `cron "0 */5 * * * *" Europe/Berlin`); also the key of a poll group.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every {
                every,
                align: Align::Spread,
            } => format!("every {}", format_duration(*every)),
            Schedule::Every {
                every,
                align: Align::Strict,
            } => format!("every {} strict", format_duration(*every)),
            Schedule::Cron(c) => format!("cron \"{}\" {}", c.pattern, c.timezone.name()),
        }
    }
}

/// A parsed cron expression (seconds field first) and its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    pub pattern: String,
    pub timezone: chrono_tz::Tz,
    cron: croner::Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.timezone == other.timezone
    }
}

impl CronSchedule {
    /// Parses `pattern` (six fields, seconds first) and an IANA time zone name.
    pub fn parse(pattern: &str, timezone: &str) -> Result<CronSchedule, String> {
        let tz: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| format!("unknown time zone `{timezone}`; use an IANA name such as UTC, Europe/Berlin or America/New_York"))?;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(pattern)
            .map_err(|e| format!("invalid cron expression `{pattern}`: {e}; write six fields, seconds first, e.g. \"*/10 * * * * *\""))?;
        Ok(CronSchedule {
            pattern: pattern.to_string(),
            timezone: tz,
            cron,
        })
    }

    /// The first firing strictly after `t`, evaluated on the local clock of
    /// the time zone (so "02:30 daily" follows the zone across DST changes).
    pub fn next_after(
        &self,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|n| n.with_timezone(&chrono::Utc))
    }
}

/// The accepted range of a value after scale and offset; outside it the
/// reading is `uncertain`. A missing bound is held as NaN, so the range is
/// 16 bytes, not the 32 of two `Option<f64>`: every register of a fleet is
/// held at once while the registry loads, before devices share maps. A NaN
/// given as a bound is therefore no bound (with `Option` it made every
/// value of the register `uncertain`, since nothing compares to NaN).
#[derive(Debug, Clone, Copy)]
pub struct ValidRange {
    min: f64,
    max: f64,
}

impl ValidRange {
    pub fn new(min: Option<f64>, max: Option<f64>) -> ValidRange {
        ValidRange {
            min: min.unwrap_or(f64::NAN),
            max: max.unwrap_or(f64::NAN),
        }
    }

    pub fn min(&self) -> Option<f64> {
        Some(self.min).filter(|m| !m.is_nan())
    }

    pub fn max(&self) -> Option<f64> {
        Some(self.max).filter(|m| !m.is_nan())
    }

    pub fn contains(&self, v: f64) -> bool {
        self.min().is_none_or(|m| v >= m) && self.max().is_none_or(|m| v <= m)
    }
}

impl Default for ValidRange {
    fn default() -> ValidRange {
        ValidRange::new(None, None)
    }
}

impl PartialEq for ValidRange {
    fn eq(&self, other: &ValidRange) -> bool {
        (self.min(), self.max()) == (other.min(), other.max())
    }
}

impl fmt::Display for ValidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| v.map_or_else(|| "unbounded".to_string(), |v| v.to_string());
        write!(f, "[{}, {}]", show(self.min()), show(self.max()))
    }
}

/// One configured register of a device. It carries no database id, so
/// devices with the same register map share one list of registers (see
/// [`RegisterMaps`]); the ids are [`Device::register_ids`].
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    pub name: Box<str>,
    pub kind: RegisterKind,
    pub address: Address,
    pub data_type: DataType,
    pub order: WordOrder,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<Box<str>>,
    pub valid: ValidRange,
    /// For `bool` on a holding or input register: which bit (0 = least significant).
    pub bit: Option<u8>,
    /// For `u8` and `i8`: which byte of the register.
    pub byte: Option<Byte>,
    /// For `string`: how many registers (two bytes each) the text spans.
    pub length: Option<u16>,
    /// Its own schedule, when it is polled apart from the device's (a poll group).
    /// Boxed, like the names: most registers have none, and a device holds
    /// its registers for as long as it is polled (136 bytes a register before,
    /// 104 after; 3 MB at 10,000 devices of 10 registers; 112 with the
    /// deadband's pointer below).
    pub schedule: Option<Box<Schedule>>,
    /// Which readings history may leave out (`deadband`, `deadband_percent`,
    /// `heartbeat`). Boxed like the schedule: most registers have none, and
    /// the filter asks only whether there is one.
    pub deadband: Option<Box<Deadband>>,
}

impl Register {
    /// Number of 16-bit words (or bits, for coils and discrete inputs) the value spans.
    pub fn width(&self) -> u16 {
        match self.data_type {
            DataType::String => self.length.unwrap_or(1),
            t => t.width(),
        }
    }

    /// The last address the value occupies (may exceed 65535 only before validation).
    pub fn last_address(&self) -> u32 {
        u32::from(self.address.0) + u32::from(self.width()) - 1
    }

    /// The engineering value of a decoded number: `raw × scale + offset`.
    /// A decimal scale (0.1, 0.01, 0.001) divides by its reciprocal instead:
    /// 0.01 has no exact binary form, so 330 × 0.01 is 3.3000000000000003,
    /// while 330 / 100 is the double nearest 3.3, which is what analysts
    /// expect to find in the database.
    pub fn engineering(&self, raw: f64) -> f64 {
        let divisor = (1.0 / self.scale).round();
        let scaled = if divisor > 1.0 && (divisor * self.scale - 1.0).abs() < 1e-12 {
            raw / divisor
        } else {
            raw * self.scale
        };
        scaled + self.offset
    }
}

impl Register {
    /// A register with no scaling, unit, range or schedule of its own: what
    /// `regpoll read` asks for, and a starting point for tests.
    pub fn plain(
        name: impl Into<Box<str>>,
        kind: RegisterKind,
        address: u16,
        data_type: DataType,
        order: WordOrder,
    ) -> Register {
        Register {
            name: name.into(),
            kind,
            address: Address(address),
            data_type,
            order,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            valid: ValidRange::default(),
            bit: None,
            byte: None,
            length: None,
            schedule: None,
            deadband: None,
        }
    }

    /// A plain register named after its address, for unit tests.
    #[cfg(test)]
    pub(crate) fn test(kind: RegisterKind, address: u16, data_type: DataType) -> Register {
        Register::plain(
            format!("r{address}"),
            kind,
            address,
            data_type,
            WordOrder::Abcd,
        )
    }
}

/// Limits on the requests regpoll sends a device, how it retries, and
/// whether it logs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most registers per read (the protocol allows 125; some devices take fewer).
    pub max_registers: u16,
    /// Most coils or discrete inputs per read (the protocol allows 2000).
    pub max_bits: u16,
    /// Largest hole of unconfigured addresses read through to merge two reads.
    pub max_gap: u16,
    /// Attempts after the first when a request times out or fails in transport,
    /// or the device answers "server busy" (exception 6).
    pub retries: u8,
    /// Bound on opening the TCP connection.
    pub connect_timeout: Duration,
    /// Pause between two requests of one poll, for devices that need it.
    pub pause: Duration,
    /// Whether each request and its answer is logged (commissioning). It
    /// rides with the limits because every request already carries them to
    /// the endpoint, so the default costs one comparison per request.
    pub log_frames: LogFrames,
    /// Pause after opening a connection before its first request, for
    /// gateways that drop what arrives while they set up (`delay_after_connect`).
    /// An endpoint setting: every device on one host:port must agree.
    pub delay_after_connect: Duration,
    /// Requests to different units that may be outstanding at once on the
    /// endpoint's connection (`max_in_flight`, 1..=16), for gateways that
    /// take several transactions; also an endpoint setting.
    pub max_in_flight: u8,
    /// When the unit is demoted after timeouts, and how long it may wait.
    pub demotion: Demotion,
}

/// How much of each request and answer a device's log shows, so a field
/// engineer sees what went over the wire without a packet sniffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFrames {
    /// Nothing (the default: a poller at 10,000 devices would drown its log).
    #[default]
    Off,
    /// Unit, function, start, count, attempt, elapsed time and the outcome.
    Header,
    /// The header and the values: the words in hex, the bits, or the
    /// exception with its name.
    Payload,
}

impl LogFrames {
    pub const VALID: &'static str = "off, header, payload";

    pub fn as_str(self) -> &'static str {
        match self {
            LogFrames::Off => "off",
            LogFrames::Header => "header",
            LogFrames::Payload => "payload",
        }
    }
}

impl FromStr for LogFrames {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(LogFrames::Off),
            "header" => Ok(LogFrames::Header),
            "payload" => Ok(LogFrames::Payload),
            other => Err(format!(
                "unknown log_frames `{other}`; valid: {} (header: unit, function, addresses and outcome of each request; payload: also the words or bits)",
                LogFrames::VALID
            )),
        }
    }
}

/// When a unit that stops answering is demoted (see `modbus::demotion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demotion {
    /// Timeouts in a row that demote the unit (`demote_after`, 1..=100).
    pub after: u8,
    /// Longest backoff between two probes of a demoted unit (`demote_max`).
    pub max: Duration,
}

impl Demotion {
    /// First backoff of a demoted unit; it doubles with every failed probe.
    pub const MIN: Duration = Duration::from_secs(1);
    pub const DEFAULT: Demotion = Demotion {
        after: 3,
        max: Duration::from_secs(60),
    };
}

impl RequestLimits {
    pub const DEFAULT: RequestLimits = RequestLimits {
        max_registers: 125,
        max_bits: 2000,
        max_gap: 10,
        retries: 1,
        connect_timeout: Duration::from_secs(1),
        pause: Duration::ZERO,
        log_frames: LogFrames::Off,
        delay_after_connect: Duration::ZERO,
        max_in_flight: 1,
        demotion: Demotion::DEFAULT,
    };
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One configured device: a unit id behind a Modbus TCP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// `devices.id`; 0 until the device has been stored.
    pub id: i32,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub unit_id: UnitId,
    /// The framing on the link: TCP (host and port), RTU over TCP (host and
    /// port), or RTU on a serial line (host and port unused).
    pub transport: Transport,
    pub active: bool,
    pub schedule: Schedule,
    /// Timeout for connecting and for each request.
    pub timeout: Duration,
    pub limits: RequestLimits,
    pub tags: BTreeMap<String, String>,
    /// The tenant the device belongs to; `None` (the default) for a
    /// single-tenant installation, whose keys and rows are as before tenants.
    pub tenant: Option<Tenant>,
    /// Shared with every device of the same register map: a fleet is mostly
    /// a few models of meter, and at 10,000 devices of 10 registers a list
    /// of its own per device was 10 MB, the largest thing regpoll held.
    pub registers: Arc<[Register]>,
    /// `device_register_map.id` of each register, by index; empty until the
    /// device has been stored.
    pub register_ids: Box<[i32]>,
}

impl Device {
    /// The device's poll groups: registers with the same effective schedule
    /// (their own, or the device's), each with the indices of its registers.
    /// The device's own schedule comes first.
    pub fn poll_groups(&self) -> Vec<(Schedule, Vec<usize>)> {
        let mut groups: Vec<(Schedule, Vec<usize>)> = Vec::new();
        for (i, r) in self.registers.iter().enumerate() {
            let s = r.schedule.as_deref().unwrap_or(&self.schedule);
            match groups.iter_mut().find(|(g, _)| g == s) {
                Some((_, members)) => members.push(i),
                None => groups.push((s.clone(), vec![i])),
            }
        }
        groups.sort_by_key(|(s, _)| *s != self.schedule);
        groups
    }

    /// The name of the device's tenant, if it has one.
    pub fn tenant_name(&self) -> Option<&str> {
        self.tenant.as_ref().map(Tenant::as_str)
    }

    /// The `device_register_map.id` of register `index`; 0 until stored.
    pub fn register_id(&self, index: usize) -> i32 {
        self.register_ids.get(index).copied().unwrap_or(0)
    }

    /// The link this device is reached through: `host:port`, or the serial
    /// path for `rtu`. Devices behind one gateway or on one serial bus
    /// share it, and with it one connection; validation makes sure they
    /// agree on its transport and line settings.
    pub fn endpoint(&self) -> String {
        endpoint_of(
            &self.host,
            self.port,
            self.transport.serial().map(|l| l.path.as_str()),
        )
    }
}

/// The link of a device at `host:port`, or on the serial line at
/// `serial_path` (set only for `rtu`): [`Device::endpoint`] without a whole
/// device, for callers that read only these columns of the registry.
pub fn endpoint_of(host: &str, port: u16, serial_path: Option<&str>) -> String {
    match serial_path {
        Some(path) => path.to_string(),
        None => format!("{host}:{port}"),
    }
}

/// Hands out one shared list per distinct register map, so devices of the
/// same model hold a pointer rather than a copy. One is used per load (of a
/// devices.yaml or of the registry); equal maps from two loads stay
/// separate, which only costs memory until the older devices are gone.
#[derive(Default)]
pub struct RegisterMaps {
    /// By a hash of each map's names and addresses; equal hashes are
    /// compared whole, so a collision only costs a comparison.
    maps: HashMap<u64, Vec<Arc<[Register]>>>,
}

impl RegisterMaps {
    pub fn share(&mut self, registers: Vec<Register>) -> Arc<[Register]> {
        let mut h = std::hash::DefaultHasher::new();
        for r in &registers {
            (&r.name, r.address, r.kind, r.data_type).hash(&mut h);
            (r.scale.to_bits(), r.offset.to_bits()).hash(&mut h);
        }
        let same = self.maps.entry(h.finish()).or_default();
        if let Some(shared) = same.iter().find(|m| ***m == *registers) {
            return Arc::clone(shared);
        }
        let shared: Arc<[Register]> = registers.into();
        same.push(Arc::clone(&shared));
        shared
    }
}

impl DataType {
    pub const VALID: &'static str =
        "bool, u8, i8, u16, i16, u32, i32, u64, i64, f16, f32, f64, bcd16, bcd32, string";

    /// Registers a value of this type spans (strings: see `Register::width`).
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool
            | DataType::U8
            | DataType::I8
            | DataType::U16
            | DataType::I16
            | DataType::F16
            | DataType::Bcd16
            | DataType::String => 1,
            DataType::U32 | DataType::I32 | DataType::F32 | DataType::Bcd32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// Whether `order` (named in the 64-bit form when `named_64`) can be
    /// used with this type; if not, why and what to use instead. One word
    /// has no words to swap; a byte's place is `byte:`, not an order; a
    /// string swaps the words of each pair of registers (see `decode_text`),
    /// so the 64-bit names, which swap across four, do not apply to it.
    pub fn check_order(self, order: WordOrder, named_64: bool) -> Result<(), String> {
        let name = if named_64 {
            order.name_for(DataType::F64)
        } else {
            order.as_str()
        };
        match self {
            DataType::U64 | DataType::I64 | DataType::F64 => Ok(()),
            _ if named_64 => Err(format!(
                "{name} is a 64-bit order; for {} use {}",
                self.as_str(),
                order.as_str()
            )),
            DataType::U8 | DataType::I8 if order != WordOrder::Abcd => Err(format!(
                "{name} does not apply to {}: a byte has no byte order; say which byte of the register with `byte: high` or `byte: low`",
                self.as_str()
            )),
            _ if order.swaps_words() && self.width() == 1 && self != DataType::String => {
                Err(format!(
                    "{name} swaps words, but {} has one word; use ABCD or BADC (byte swap)",
                    self.as_str()
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::F16 => "f16",
            DataType::Bcd16 => "bcd16",
            DataType::Bcd32 => "bcd32",
            DataType::U8 => "u8",
            DataType::I8 => "i8",
            DataType::String => "string",
        }
    }
}

impl FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "f16" => DataType::F16,
            "bcd16" => DataType::Bcd16,
            "bcd32" => DataType::Bcd32,
            "u8" => DataType::U8,
            "i8" => DataType::I8,
            "string" => DataType::String,
            other => {
                return Err(format!(
                    "unknown type `{other}`; valid types: {}",
                    DataType::VALID
                ));
            }
        })
    }
}

impl Byte {
    pub const VALID: &'static str = "high, low";

    pub fn as_str(self) -> &'static str {
        match self {
            Byte::High => "high",
            Byte::Low => "low",
        }
    }
}

impl FromStr for Byte {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Byte::High),
            "low" => Ok(Byte::Low),
            other => Err(format!(
                "unknown byte `{other}`; valid bytes: {} (high is bits 15..8, the first on the wire)",
                Byte::VALID
            )),
        }
    }
}

impl RegisterKind {
    pub const VALID: &'static str = "holding, input, coil, discrete";

    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
        }
    }
    /// Coils and discrete inputs are single bits; the others are 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// The Modbus function code that reads this table.
    pub fn read_function(self) -> u8 {
        match self {
            RegisterKind::Coil => 0x01,
            RegisterKind::Discrete => 0x02,
            RegisterKind::Holding => 0x03,
            RegisterKind::Input => 0x04,
        }
    }

    /// The table a read function code reads, if it is one of the four.
    pub fn of_read_function(code: u8) -> Option<RegisterKind> {
        [
            RegisterKind::Coil,
            RegisterKind::Discrete,
            RegisterKind::Holding,
            RegisterKind::Input,
        ]
        .into_iter()
        .find(|k| k.read_function() == code)
    }
}

impl FromStr for RegisterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "holding" => RegisterKind::Holding,
            "input" => RegisterKind::Input,
            "coil" => RegisterKind::Coil,
            "discrete" => RegisterKind::Discrete,
            other => {
                return Err(format!(
                    "unknown kind `{other}`; valid kinds: {}",
                    RegisterKind::VALID
                ));
            }
        })
    }
}

impl WordOrder {
    pub const VALID: &'static str =
        "ABCD, CDAB, BADC, DCBA (64-bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA)";

    /// The name stored in the database (the 32-bit form; the 64-bit forms are
    /// the same two swaps).
    pub fn as_str(self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        }
    }

    /// The name as written for a value of `data_type`.
    pub fn name_for(self, data_type: DataType) -> &'static str {
        match (data_type.width(), self) {
            (4, WordOrder::Abcd) => "ABCDEFGH",
            (4, WordOrder::Cdab) => "GHEFCDAB",
            (4, WordOrder::Badc) => "BADCFEHG",
            (4, WordOrder::Dcba) => "HGFEDCBA",
            _ => self.as_str(),
        }
    }

    pub fn swaps_words(self) -> bool {
        matches!(self, WordOrder::Cdab | WordOrder::Dcba)
    }

    pub fn swaps_bytes(self) -> bool {
        matches!(self, WordOrder::Badc | WordOrder::Dcba)
    }

    /// Parses an order name; `Ok((order, is_64_bit_name))`.
    pub fn parse(s: &str) -> Result<(WordOrder, bool), String> {
        Ok(match s {
            "ABCD" => (WordOrder::Abcd, false),
            "CDAB" => (WordOrder::Cdab, false),
            "BADC" => (WordOrder::Badc, false),
            "DCBA" => (WordOrder::Dcba, false),
            "ABCDEFGH" => (WordOrder::Abcd, true),
            "GHEFCDAB" => (WordOrder::Cdab, true),
            "BADCFEHG" => (WordOrder::Badc, true),
            "HGFEDCBA" => (WordOrder::Dcba, true),
            other => {
                return Err(format!(
                    "unknown order `{other}`; valid orders: {}",
                    WordOrder::VALID
                ));
            }
        })
    }
}

impl FromStr for WordOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WordOrder::parse(s).map(|(o, _)| o)
    }
}

/// Parses durations as written in devices.yaml: `500ms`, `5s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_span(s, 7 * 24 * 3_600_000, "7 days")
}

/// A span of any length up to `max_ms` (named `max_text` in errors):
/// a number followed by ms, s, m (or min), h, d or w.
pub fn parse_span(s: &str, max_ms: u64, max_text: &str) -> Result<Duration, String> {
    let hint = "write a number followed by ms, s, m (or min), h, d or w, e.g. 500ms, 5s, 1m, 1d";
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit; {hint}"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; {hint}"))?;
    let factor_ms = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        "w" => 7.0 * 86_400_000.0,
        _ => return Err(format!("`{s}` has an unknown unit; {hint}")),
    };
    let ms = n * factor_ms;
    if ms < 1.0 {
        return Err(format!("`{s}` must be at least 1ms"));
    }
    if ms > max_ms as f64 {
        return Err(format!("`{s}` is longer than {max_text}"));
    }
    Ok(Duration::from_millis(ms.round() as u64))
}

/// Formats a duration the way devices.yaml writes it (`500ms`, `5s`, `2m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests;
