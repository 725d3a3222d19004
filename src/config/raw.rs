//! The devices.yaml shape, read from `Node`s field by field. Every field is
//! optional here so that validation (in `config`) can say precisely what is
//! missing and where; a value of the wrong type, an unknown key (a typo) or a
//! key written twice is recorded in `problems` instead of stopping the read.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::node::{Node, Problems, entries, field};
use crate::registry::{Byte, DataType, RegisterKind, WordOrder};

/// The file's first pass: `defaults` in full, `devices` only checked to be
/// there and skipped over (see `config::parse`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub defaults: Option<Spanned<Node>>,
    #[allow(dead_code)] // read only to require the key; the second pass takes the entries
    pub devices: IgnoredAny,
}

/// The file's second pass: hands each entry of `devices` to `each` as soon as
/// it is read, so only one raw device is alive at a time, and collects what
/// `each` makes of it. `each` also gets the names seen so far, to report
/// duplicates.
pub(super) struct DevicesOf<F> {
    pub each: F,
}

impl<'de, F, T> DeserializeSeed<'de> for DevicesOf<F>
where
    F: FnMut(Spanned<Node>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Vec<T>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, F, T> Visitor<'de> for DevicesOf<F>
where
    F: FnMut(Spanned<Node>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map with `devices` and optionally `defaults`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
        let mut each = self.each;
        let mut out = Vec::new();
        // The first pass has already refused unknown and missing keys.
        while let Some(key) = map.next_key::<String>()? {
            if key == "devices" {
                out = map.next_value_seed(EachDevice {
                    each: &mut each,
                    _out: std::marker::PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct EachDevice<'f, F, T> {
    each: &'f mut F,
    _out: std::marker::PhantomData<T>,
}

impl<'de, F, T> DeserializeSeed<'de> for EachDevice<'_, F, T>
where
    F: FnMut(Spanned<Node>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Vec<T>, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de, F, T> Visitor<'de> for EachDevice<'_, F, T>
where
    F: FnMut(Spanned<Node>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of devices")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<T>, S::Error> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(dev) = seq.next_element::<Spanned<Node>>()? {
            if let Some(d) = (self.each)(dev, &mut seen) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// A device entry, and also the `defaults` block (which may set every field but
/// `name` and `registers`). `problems` holds what was wrong with the fields'
/// values (type, duplicate, unknown key); validation reports them in the
/// device's context and goes on checking the rest.
#[derive(Debug, Default, Clone)]
pub(super) struct RawDevice {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub unit_id: Option<Spanned<i64>>,
    pub transport: Option<Spanned<String>>,
    pub serial: Option<Spanned<RawSerial>>,
    pub active: Option<Spanned<bool>>,
    pub every: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub align: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub pause_between_requests: Option<Spanned<String>>,
    pub delay_after_connect: Option<Spanned<String>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub demote_after: Option<Spanned<i64>>,
    pub demote_max: Option<Spanned<String>>,
    pub max_registers_per_request: Option<Spanned<i64>>,
    pub max_bits_per_request: Option<Spanned<i64>>,
    pub max_gap: Option<Spanned<i64>>,
    pub log_frames: Option<Spanned<String>>,
    pub deadband: Option<Spanned<f64>>,
    pub deadband_percent: Option<Spanned<f64>>,
    pub heartbeat: Option<Spanned<String>>,
    pub tags: Option<Spanned<BTreeMap<String, String>>>,
    pub tenant: Option<Spanned<String>>,
    pub registers: Option<Spanned<Vec<Spanned<RawRegister>>>>,
    pub problems: Problems,
}

#[derive(Debug, Clone)]
pub(super) struct RawRegister {
    pub name: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub address: Option<Spanned<i64>>,
    pub r#type: Option<Spanned<String>>,
    pub order: Option<Spanned<String>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    pub unit: Option<Spanned<String>>,
    pub valid: Option<Spanned<RawValid>>,
    pub every: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub bit: Option<Spanned<i64>>,
    pub byte: Option<Spanned<String>>,
    pub length: Option<Spanned<i64>>,
    pub deadband: Option<Spanned<f64>>,
    pub deadband_percent: Option<Spanned<f64>>,
    pub heartbeat: Option<Spanned<String>>,
    pub problems: Problems,
}

/// `serial: {path, baud, parity, data_bits, stop_bits}`, each optional here
/// (a device's fields over those of `defaults`).
#[derive(Debug, Clone, Default)]
pub(super) struct RawSerial {
    pub path: Option<Spanned<String>>,
    pub baud: Option<Spanned<i64>>,
    pub parity: Option<Spanned<String>>,
    pub data_bits: Option<Spanned<i64>>,
    pub stop_bits: Option<Spanned<i64>>,
    /// `serial` was not a map (already reported).
    pub malformed: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RawValid {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

const DEVICE_FIELDS: &[&str] = &[
    "name",
    "host",
    "port",
    "unit_id",
    "transport",
    "serial",
    "active",
    "every",
    "cron",
    "timezone",
    "align",
    "timeout",
    "connect_timeout",
    "retries",
    "pause_between_requests",
    "delay_after_connect",
    "max_in_flight",
    "demote_after",
    "demote_max",
    "max_registers_per_request",
    "max_bits_per_request",
    "max_gap",
    "log_frames",
    "deadband",
    "deadband_percent",
    "heartbeat",
    "tags",
    "tenant",
    "registers",
];

const REGISTER_FIELDS: &[&str] = &[
    "name",
    "kind",
    "address",
    "type",
    "order",
    "scale",
    "offset",
    "unit",
    "valid",
    "every",
    "cron",
    "timezone",
    "bit",
    "byte",
    "length",
    "deadband",
    "deadband_percent",
    "heartbeat",
];

const DURATION: &str =
    "a duration: a number followed by ms, s, m (or min), h, d or w, e.g. 500ms, 5s, 1m";
const CRON: &str = "a cron expression in quotes, e.g. \"0 */5 * * * *\"";
const TIMEZONE: &str = "an IANA time zone name, e.g. Europe/Paris";
const NUMBER: &str = "a number, e.g. 0.1";
const DEADBAND: &str =
    "a number in the register's unit, 0 or more, e.g. 0.5 (0 stores every change)";
const DEADBAND_PERCENT: &str =
    "a percentage of the last stored value, 0..100, e.g. 1 (0 stores every change)";

fn text(n: &Node) -> Option<String> {
    n.text()
}

impl RawDevice {
    /// Reads a device (or `defaults`) node field by field; what cannot be read
    /// is left out and described in `problems`.
    pub(super) fn read(node: &Spanned<Node>, what: &str) -> RawDevice {
        let mut d = RawDevice::default();
        let p = &mut d.problems;
        let Node::Map(map) = &node.value else {
            p.push((
                node.referenced,
                format!(
                    "this {what} is {}; valid: a map of fields (name, host, registers, ...)",
                    node.value.describe()
                ),
            ));
            return d;
        };
        for (key, v) in entries(map, DEVICE_FIELDS, what, p) {
            match key {
                "name" => {
                    d.name = field(
                        key,
                        v,
                        "a name of letters, digits, `-`, `_` and `.`",
                        text,
                        p,
                    )
                }
                "host" => {
                    d.host = field(
                        key,
                        v,
                        "a host name or IP address, e.g. 192.0.2.10",
                        text,
                        p,
                    )
                }
                "port" => d.port = field(key, v, "an integer 1..65535 (default 502)", Node::int, p),
                "unit_id" => {
                    d.unit_id = field(
                        key,
                        v,
                        "an integer 0..255 (1..247 on rtu and rtu-over-tcp; default 1)",
                        Node::int,
                        p,
                    )
                }
                "transport" => {
                    d.transport = field(key, v, "tcp (default), rtu-over-tcp or rtu", text, p)
                }
                "serial" => d.serial = serial(v, p),
                "active" => d.active = field(key, v, "true or false", bool_of, p),
                "every" => d.every = field(key, v, DURATION, text, p),
                "cron" => d.cron = field(key, v, CRON, text, p),
                "timezone" => d.timezone = field(key, v, TIMEZONE, text, p),
                "align" => d.align = field(key, v, "spread (default) or strict", text, p),
                "timeout" => d.timeout = field(key, v, DURATION, text, p),
                "connect_timeout" => d.connect_timeout = field(key, v, DURATION, text, p),
                "retries" => d.retries = field(key, v, "an integer 0..10", Node::int, p),
                "pause_between_requests" => {
                    d.pause_between_requests = field(key, v, DURATION, text, p)
                }
                "delay_after_connect" => d.delay_after_connect = field(key, v, DURATION, text, p),
                "max_in_flight" => {
                    d.max_in_flight = field(key, v, "an integer 1..16 (default 1)", Node::int, p)
                }
                "demote_after" => {
                    d.demote_after = field(key, v, "an integer 1..100 (default 3)", Node::int, p)
                }
                "demote_max" => d.demote_max = field(key, v, DURATION, text, p),
                "max_registers_per_request" => {
                    d.max_registers_per_request = field(key, v, "an integer 1..125", Node::int, p)
                }
                "max_bits_per_request" => {
                    d.max_bits_per_request = field(key, v, "an integer 1..2000", Node::int, p)
                }
                "max_gap" => d.max_gap = field(key, v, "an integer 0..2000", Node::int, p),
                "log_frames" => {
                    d.log_frames = field(key, v, "off (default), header or payload", text, p)
                }
                "deadband" => d.deadband = field(key, v, DEADBAND, Node::float, p),
                "deadband_percent" => {
                    d.deadband_percent = field(key, v, DEADBAND_PERCENT, Node::float, p)
                }
                "heartbeat" => d.heartbeat = field(key, v, DURATION, text, p),
                "tags" => d.tags = tags(v, p),
                "tenant" => d.tenant = field(key, v, crate::registry::TENANT_RULE, text, p),
                "registers" => d.registers = registers(v, p),
                _ => unreachable!("`entries` passes only the keys listed in DEVICE_FIELDS"),
            }
        }
        d
    }
}

fn bool_of(n: &Node) -> Option<bool> {
    n.boolean()
}

/// `tags: {site: north}`: names to text; a tag whose value is not a scalar is
/// reported and left out.
fn tags(v: &Spanned<Node>, p: &mut Problems) -> Option<Spanned<BTreeMap<String, String>>> {
    const VALID: &str = "a map of tag names to text, e.g. {site: north}";
    let Node::Map(map) = &v.value else {
        return field("tags", v, VALID, |_| None::<BTreeMap<String, String>>, p);
    };
    let mut out = BTreeMap::new();
    for (k, t) in map {
        match t.value.text() {
            Some(s) => {
                out.insert(k.value.clone(), s);
            }
            None => p.push((
                t.referenced,
                format!(
                    "tag `{}` is {}; valid: text, e.g. north",
                    k.value,
                    t.value.describe()
                ),
            )),
        }
    }
    Some(Spanned::new(out, v.referenced, v.defined))
}

fn registers(v: &Spanned<Node>, p: &mut Problems) -> Option<Spanned<Vec<Spanned<RawRegister>>>> {
    const VALID: &str = "a list of registers, each a map with name, kind, address, ...";
    let Node::Seq(items) = &v.value else {
        return field("registers", v, VALID, |_| None::<Vec<_>>, p);
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match &item.value {
            Node::Map(map) => out.push(Spanned::new(
                RawRegister::read(map),
                item.referenced,
                item.defined,
            )),
            other => p.push((
                item.referenced,
                format!(
                    "a register must be a map of fields (name, kind, address, ...), not {}",
                    other.describe()
                ),
            )),
        }
    }
    Some(Spanned::new(out, v.referenced, v.defined))
}

impl RawRegister {
    fn read(map: &[(Spanned<String>, Spanned<Node>)]) -> RawRegister {
        let mut r = RawRegister {
            name: None,
            kind: None,
            address: None,
            r#type: None,
            order: None,
            scale: None,
            offset: None,
            unit: None,
            valid: None,
            every: None,
            cron: None,
            timezone: None,
            bit: None,
            byte: None,
            length: None,
            deadband: None,
            deadband_percent: None,
            heartbeat: None,
            problems: Vec::new(),
        };
        let p = &mut r.problems;
        for (key, v) in entries(map, REGISTER_FIELDS, "register", p) {
            match key {
                "name" => {
                    r.name = field(
                        key,
                        v,
                        "a name of letters, digits, `-`, `_` and `.`",
                        text,
                        p,
                    )
                }
                "kind" => r.kind = field(key, v, RegisterKind::VALID, text, p),
                "address" => {
                    r.address = field(
                        key,
                        v,
                        "an integer 0..65535 (the protocol address)",
                        Node::int,
                        p,
                    )
                }
                "type" => r.r#type = field(key, v, DataType::VALID, text, p),
                "order" => r.order = field(key, v, WordOrder::VALID, text, p),
                "scale" => r.scale = field(key, v, NUMBER, Node::float, p),
                "offset" => r.offset = field(key, v, NUMBER, Node::float, p),
                "unit" => r.unit = field(key, v, "text, e.g. kWh", text, p),
                "valid" => r.valid = valid(v, p),
                "every" => r.every = field(key, v, DURATION, text, p),
                "cron" => r.cron = field(key, v, CRON, text, p),
                "timezone" => r.timezone = field(key, v, TIMEZONE, text, p),
                "bit" => r.bit = field(key, v, "an integer 0..15", Node::int, p),
                "byte" => r.byte = field(key, v, Byte::VALID, text, p),
                "length" => {
                    r.length = field(
                        key,
                        v,
                        "an integer number of registers, e.g. 8",
                        Node::int,
                        p,
                    )
                }
                "deadband" => r.deadband = field(key, v, DEADBAND, Node::float, p),
                "deadband_percent" => {
                    r.deadband_percent = field(key, v, DEADBAND_PERCENT, Node::float, p)
                }
                "heartbeat" => r.heartbeat = field(key, v, DURATION, text, p),
                _ => unreachable!("`entries` passes only the keys listed in REGISTER_FIELDS"),
            }
        }
        r
    }
}

/// `serial: {path: /dev/ttyUSB0, baud: 9600, ...}`, every key optional here.
fn serial(v: &Spanned<Node>, p: &mut Problems) -> Option<Spanned<RawSerial>> {
    const VALID: &str = "a map with path, baud, parity, data_bits, stop_bits, e.g. {path: /dev/ttyUSB0, baud: 9600}";
    let Node::Map(map) = &v.value else {
        field("serial", v, VALID, |_| None::<RawSerial>, p);
        // Reported here; validation must not also say the path is missing.
        let out = RawSerial {
            malformed: true,
            ..RawSerial::default()
        };
        return Some(Spanned::new(out, v.referenced, v.defined));
    };
    let mut out = RawSerial::default();
    let keys = ["path", "baud", "parity", "data_bits", "stop_bits"];
    for (key, n) in entries(map, &keys, "`serial` line", p) {
        match key {
            "path" => {
                out.path = field(
                    key,
                    n,
                    "the serial device's path, e.g. /dev/ttyUSB0",
                    text,
                    p,
                )
            }
            "baud" => {
                out.baud = field(
                    key,
                    n,
                    "an integer baud rate, e.g. 9600 (default)",
                    Node::int,
                    p,
                )
            }
            "parity" => out.parity = field(key, n, "none (default), even or odd", text, p),
            "data_bits" => out.data_bits = field(key, n, "7 or 8 (default)", Node::int, p),
            "stop_bits" => out.stop_bits = field(key, n, "1 (default) or 2", Node::int, p),
            _ => unreachable!("`entries` passes only the keys listed"),
        }
    }
    Some(Spanned::new(out, v.referenced, v.defined))
}

/// `valid: {min: 0, max: 100}`, either bound optional.
fn valid(v: &Spanned<Node>, p: &mut Problems) -> Option<Spanned<RawValid>> {
    const VALID: &str = "a map with `min` and/or `max`, e.g. {min: 0, max: 100}";
    let Node::Map(map) = &v.value else {
        return field("valid", v, VALID, |_| None::<RawValid>, p);
    };
    let mut out = RawValid {
        min: None,
        max: None,
    };
    for (key, b) in entries(map, &["min", "max"], "`valid` range", p) {
        let bound = field(key, b, NUMBER, Node::float, p).map(|b| b.value);
        if key == "min" {
            out.min = bound;
        } else {
            out.max = bound;
        }
    }
    Some(Spanned::new(out, v.referenced, v.defined))
}

/// serde-saphyr's message without its source snippet (we print our own
/// `file:line:column:` prefix).
pub(crate) fn describe_parse_error(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    // The message may still carry a trailing " at line X column Y"; our prefix says that.
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    text.trim().to_string()
}
