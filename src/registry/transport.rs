//! How a device is reached: Modbus TCP, RTU frames over a TCP socket (the
//! serial gateways that only pass bytes through), or RTU on a serial line.
//! Devices that share a link (one host:port, one serial path) share one bus,
//! and the bus's settings must agree; `Device::endpoint` is that link's key.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Baud rate of a serial line when neither the device nor `defaults` names one.
pub const DEFAULT_BAUD: u32 = 9600;
/// The spec's default parity (Modbus over serial line, 2.5.1: even is the
/// default "in RTU mode"), but most field devices ship with none; regpoll
/// takes none, which is what a meter out of its box usually speaks.
pub const DEFAULT_PARITY: Parity = Parity::None;
pub const DEFAULT_DATA_BITS: DataBits = DataBits::Eight;
pub const DEFAULT_STOP_BITS: StopBits = StopBits::One;

/// The framing on a device's link.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Modbus TCP: MBAP header, no checksum (the default).
    #[default]
    Tcp,
    /// RTU frames (unit id, PDU, CRC-16) carried over a TCP socket.
    RtuOverTcp,
    /// RTU frames on a serial line. Boxed: most devices are on TCP, and a
    /// `Device` is kept for as long as it is polled.
    Rtu(Box<SerialLine>),
}

impl Transport {
    pub const VALID: &'static str = "tcp, rtu-over-tcp, rtu";

    /// The name devices.yaml and the database use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::RtuOverTcp => "rtu-over-tcp",
            Transport::Rtu(_) => "rtu",
        }
    }

    /// Whether frames are RTU's (unit ids 1..247 only, CRC-16).
    pub fn is_rtu(&self) -> bool {
        !matches!(self, Transport::Tcp)
    }

    pub fn serial(&self) -> Option<&SerialLine> {
        match self {
            Transport::Rtu(line) => Some(line),
            _ => None,
        }
    }
}

/// The three names, without the serial settings (which `serial:` gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    RtuOverTcp,
    Rtu,
}

impl FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(TransportKind::Tcp),
            "rtu-over-tcp" => Ok(TransportKind::RtuOverTcp),
            "rtu" => Ok(TransportKind::Rtu),
            other => Err(format!(
                "unknown transport `{other}`; valid transports: {} (tcp is the default)",
                Transport::VALID
            )),
        }
    }
}

/// A serial line's path and character format. Every device on one path must
/// name the same settings: they share the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialLine {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: DataBits,
    pub stop_bits: StopBits,
}

impl SerialLine {
    /// A line on `path` with the default settings (9600 8N1).
    pub fn new(path: impl Into<String>) -> SerialLine {
        SerialLine {
            path: path.into(),
            baud: DEFAULT_BAUD,
            parity: DEFAULT_PARITY,
            data_bits: DEFAULT_DATA_BITS,
            stop_bits: DEFAULT_STOP_BITS,
        }
    }

    /// Bits on the wire per character: start bit, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        let data = match self.data_bits {
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        };
        let stop = match self.stop_bits {
            StopBits::One => 1,
            StopBits::Two => 2,
        };
        1 + data + u32::from(self.parity != Parity::None) + stop
    }

    /// The silence that separates two frames: 3.5 character times, or a
    /// fixed 1.75 ms above 19,200 baud, where the spec stops scaling it
    /// (Modbus over serial line 2.5.1.1: a UART's timer would be too busy).
    pub fn frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            return Duration::from_micros(1750);
        }
        let micros = 3.5 * f64::from(self.bits_per_char()) * 1e6 / f64::from(self.baud.max(1));
        Duration::from_micros(micros.ceil() as u64)
    }

    /// `9600 8N1`, as the settings are usually written.
    pub fn settings(&self) -> String {
        format!(
            "{} {}{}{}",
            self.baud,
            self.data_bits.as_u8(),
            self.parity.letter(),
            self.stop_bits.as_u8()
        )
    }
}

impl fmt::Display for SerialLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path, self.settings())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub const VALID: &'static str = "none, even, odd";

    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }

    fn letter(self) -> char {
        match self {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        }
    }
}

impl FromStr for Parity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Parity::None),
            "even" => Ok(Parity::Even),
            "odd" => Ok(Parity::Odd),
            other => Err(format!(
                "unknown parity `{other}`; valid: {} (default none)",
                Parity::VALID
            )),
        }
    }
}

/// Data bits per character. RTU needs eight (every byte is binary); seven
/// is accepted for the odd device that is set so and answers anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataBits {
    Seven,
    Eight,
}

impl DataBits {
    pub fn as_u8(self) -> u8 {
        match self {
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        }
    }

    pub fn of(n: i64) -> Result<DataBits, String> {
        match n {
            7 => Ok(DataBits::Seven),
            8 => Ok(DataBits::Eight),
            other => Err(format!("data_bits {other} is neither 7 nor 8 (default 8)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopBits {
    One,
    Two,
}

impl StopBits {
    pub fn as_u8(self) -> u8 {
        match self {
            StopBits::One => 1,
            StopBits::Two => 2,
        }
    }

    pub fn of(n: i64) -> Result<StopBits, String> {
        match n {
            1 => Ok(StopBits::One),
            2 => Ok(StopBits::Two),
            other => Err(format!("stop_bits {other} is neither 1 nor 2 (default 1)")),
        }
    }
}

/// Why a device with `mine` cannot share the link `key` with `other` (a
/// device, named with where it is written), which has `theirs`; `None` when
/// they agree. Devices.yaml's validation and the registry loader both say it.
pub fn link_conflict(
    key: &str,
    mine: &Transport,
    theirs: &Transport,
    other: &str,
) -> Option<String> {
    if mine == theirs {
        return None;
    }
    Some(match (mine, theirs) {
        (Transport::Rtu(mine), Transport::Rtu(theirs)) => format!(
            "serial line {key} is {} here but {} for {other}; devices on one serial path share the wire, so give them the same baud, parity, data_bits and stop_bits",
            mine.settings(),
            theirs.settings()
        ),
        (mine, theirs) => format!(
            "{key} is {} here but {} for {other}; the devices behind one gateway share its link and its framing, so give them the same transport",
            mine.as_str(),
            theirs.as_str()
        ),
    })
}

/// Baud rates a serial line may name: a range rather than a list, because
/// adapters take odd rates (250,000 for some drives) and refuse the ones
/// they cannot make when the port is opened.
pub const BAUD_MIN: u32 = 300;
pub const BAUD_MAX: u32 = 4_000_000;

/// RTU unit ids: 0 is broadcast (no device answers it, so it cannot be
/// read) and 248..255 are reserved (Modbus over serial line, 2.2).
pub fn check_rtu_unit(unit: u8) -> Result<(), String> {
    match unit {
        0 => Err("unit_id 0 is the broadcast address: no device answers it, so it cannot be read; use the device's own address, 1..247".into()),
        1..=247 => Ok(()),
        _ => Err(format!("unit_id {unit} is reserved on RTU links (valid: 1..247)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_gap_is_three_and_a_half_characters_up_to_19200_baud() {
        let mut line = SerialLine::new("/dev/ttyUSB0");
        // 9600 8N1: 10 bits a character, 3.5 × 10 / 9600 s = 3.646 ms.
        assert_eq!(line.frame_gap(), Duration::from_micros(3646));
        line.parity = Parity::Even;
        line.baud = 19_200;
        // 11 bits: 3.5 × 11 / 19200 s = 2.005 ms.
        assert_eq!(line.frame_gap(), Duration::from_micros(2006));
        line.baud = 115_200;
        assert_eq!(line.frame_gap(), Duration::from_micros(1750));
        assert_eq!(line.settings(), "115200 8E1");
    }

    #[test]
    fn rtu_unit_ids_refuse_broadcast_and_the_reserved_range() {
        assert!(check_rtu_unit(0).unwrap_err().contains("broadcast"));
        assert!(check_rtu_unit(248).unwrap_err().contains("reserved"));
        assert!(check_rtu_unit(1).is_ok() && check_rtu_unit(247).is_ok());
        assert!(
            "rs485"
                .parse::<TransportKind>()
                .unwrap_err()
                .contains("tcp, rtu-over-tcp, rtu")
        );
    }
}
