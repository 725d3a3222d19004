//! The registry's domain types: what a device is, which registers it has, and
//! when it is polled. Everything here is already validated: the YAML parser
//! (`config`) and the database loader (`registry::store`) are the only places
//! that build these types from untrusted input.

pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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
    F32,
}

/// Byte order of multi-word values, named by where the bytes of the big-endian
/// value `ABCD` land on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// Big-endian words, big-endian bytes (the Modbus default).
    Abcd,
    /// Low word first, each word big-endian ("word swap").
    Cdab,
}

/// When a device (or, later, a register group) is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// Every `Duration`, aligned to whole multiples on the wall clock.
    Every(Duration),
}

/// The accepted range of a value after scale and offset; outside it the
/// reading is `uncertain`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ValidRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ValidRange {
    pub fn contains(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

impl fmt::Display for ValidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>| v.map_or_else(|| "unbounded".to_string(), |v| v.to_string());
        write!(f, "[{}, {}]", show(self.min), show(self.max))
    }
}

/// One configured register of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// `device_register_map.id`; 0 until the register has been stored.
    pub id: i32,
    pub name: String,
    pub kind: RegisterKind,
    pub address: Address,
    pub data_type: DataType,
    pub order: WordOrder,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
    pub valid: ValidRange,
}

impl Register {
    /// Number of 16-bit words (or bits, for coils and discrete inputs) the value spans.
    pub fn width(&self) -> u16 {
        self.data_type.width()
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
    pub active: bool,
    pub schedule: Schedule,
    /// Timeout for connecting and for each request.
    pub timeout: Duration,
    pub tags: BTreeMap<String, String>,
    pub registers: Vec<Register>,
}

impl Device {
    /// The `host:port` this device is reached through; devices behind one
    /// gateway share it (and its connection).
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl DataType {
    pub const SUPPORTED: &'static str = "bool, u16, i16, u32, i32, f32";
    /// Types the devices.yaml contract names that this version cannot decode yet.
    pub const NOT_YET: &'static [&'static str] = &["u64", "i64", "f64", "string"];

    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
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
            "f32" => DataType::F32,
            other if DataType::NOT_YET.contains(&other) => {
                return Err(format!(
                    "type `{other}` is not supported yet; supported types: {}",
                    DataType::SUPPORTED
                ));
            }
            other => {
                return Err(format!(
                    "unknown type `{other}`; valid types: {}",
                    DataType::SUPPORTED
                ));
            }
        })
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
    pub const SUPPORTED: &'static str = "ABCD, CDAB";
    const NOT_YET: &'static [&'static str] = &[
        "BADC", "DCBA", "ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
        }
    }
}

impl FromStr for WordOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ABCD" => WordOrder::Abcd,
            "CDAB" => WordOrder::Cdab,
            other if WordOrder::NOT_YET.contains(&other) => {
                return Err(format!(
                    "order `{other}` is not supported yet; supported orders: {}",
                    WordOrder::SUPPORTED
                ));
            }
            other => {
                return Err(format!(
                    "unknown order `{other}`; valid orders: {}",
                    WordOrder::SUPPORTED
                ));
            }
        })
    }
}

/// Parses durations as written in devices.yaml: `500ms`, `5s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let hint = "write a number followed by ms, s, m or h, e.g. 500ms, 5s, 1m";
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
        _ => return Err(format!("`{s}` has an unknown unit; {hint}")),
    };
    let ms = n * factor_ms;
    if ms < 1.0 {
        return Err(format!("`{s}` must be at least 1ms"));
    }
    if ms > 7.0 * 24.0 * 3_600_000.0 {
        return Err(format!("`{s}` is longer than 7 days"));
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
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_zero_or_garbage() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").unwrap_err().contains("at least 1ms"));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn durations_format_back_to_yaml_form() {
        for s in ["500ms", "5s", "2m", "1h", "1500ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn types_not_yet_supported_say_so() {
        assert!(
            "f64"
                .parse::<DataType>()
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(
            "f16"
                .parse::<DataType>()
                .unwrap_err()
                .contains("unknown type")
        );
    }
}
