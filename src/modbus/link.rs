//! One open link of an endpoint, whichever its transport: Modbus TCP
//! ([`super::tcp`]), RTU frames over a TCP socket, or RTU on a serial line
//! ([`super::rtu`] for both). Opening one is the only place that knows
//! which; the endpoint reads through whichever it got.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::ExceptionCode;
use tokio_serial::{SerialPortBuilderExt as _, SerialStream};

use super::tcp::CallError;
use super::{ReadError, Words, rtu, tcp};
use crate::registry::{DataBits, Parity, RegisterKind, SerialLine, StopBits, Transport};

pub enum Link {
    Tcp(tcp::Connection),
    RtuOverTcp(rtu::Connection<TcpStream>),
    Rtu(rtu::Connection<SerialStream>),
}

impl Link {
    pub async fn read(
        &mut self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> Result<Result<Words, ExceptionCode>, CallError> {
        // The RTU reads are boxed: their state (frame gaps, waiting for a
        // quiet line) inline would enlarge every device's request future,
        // Modbus TCP's too, and a serial line's speed makes the allocation
        // nothing.
        match self {
            Link::Tcp(c) => c.read(unit, kind, start, count).await,
            Link::RtuOverTcp(c) => Box::pin(c.read(unit, kind, start, count)).await,
            Link::Rtu(c) => Box::pin(c.read(unit, kind, start, count)).await,
        }
    }

    /// Late replies dropped since the last call (Modbus TCP only: RTU has no
    /// transaction id to recognise one by).
    pub fn take_late_replies(&mut self) -> u32 {
        match self {
            Link::Tcp(c) => c.take_late_replies(),
            Link::RtuOverTcp(_) | Link::Rtu(_) => 0,
        }
    }

    /// Whether the link can carry the next request after `error`. An RTU
    /// link resynchronises itself (it waits for a quiet line; see `rtu`),
    /// so only a broken stream is reopened; a Modbus TCP connection stays in
    /// step after an exception or a timeout (the late reply is recognised by
    /// its transaction id, see `tcp`) and is out of step after anything else.
    pub fn survives(&self, error: &ReadError) -> bool {
        match self {
            Link::Tcp(_) => error.device_answered() || matches!(error, ReadError::Timeout(_)),
            Link::RtuOverTcp(_) | Link::Rtu(_) => !matches!(error, ReadError::Transport(_)),
        }
    }
}

/// Opens a link to `host:port` or the serial line, as `transport` says.
pub async fn connect(
    host: &str,
    port: u16,
    transport: &Transport,
    timeout: Duration,
) -> Result<Link, ReadError> {
    match transport {
        Transport::Tcp => Ok(Link::Tcp(tcp::Connection::new(
            tcp_connect(host, port, timeout).await?,
        ))),
        // The gateway keeps its serial line's timing: no gap on the socket.
        Transport::RtuOverTcp => Ok(Link::RtuOverTcp(rtu::Connection::new(
            tcp_connect(host, port, timeout).await?,
            Duration::ZERO,
        ))),
        Transport::Rtu(line) => {
            let stream = open_serial(line)?;
            Ok(Link::Rtu(rtu::Connection::new(stream, line.frame_gap())))
        }
    }
}

pub(super) async fn tcp_connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ReadError> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Err(_) => Err(ReadError::ConnectTimeout(timeout)),
        Ok(Err(e)) => Err(ReadError::Connect(io_reason(&e))),
        Ok(Ok(stream)) => {
            // Polls are small request/response exchanges: send them at once.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Opens the serial port with the line's settings, exclusively (a second
/// master on the same adapter would garble both). Opening does not block:
/// the port is opened non-blocking and has no handshake to wait for.
pub fn open_serial(line: &SerialLine) -> Result<SerialStream, ReadError> {
    tokio_serial::new(&line.path, line.baud)
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(match line.data_bits {
            DataBits::Seven => tokio_serial::DataBits::Seven,
            DataBits::Eight => tokio_serial::DataBits::Eight,
        })
        .stop_bits(match line.stop_bits {
            StopBits::One => tokio_serial::StopBits::One,
            StopBits::Two => tokio_serial::StopBits::Two,
        })
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| ReadError::Connect(serial_reason(&line.path, e)))
}

/// What went wrong opening a serial port, and what usually fixes it.
fn serial_reason(path: &str, e: tokio_serial::Error) -> String {
    let hint = match e.kind() {
        tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound) => {
            " (is the adapter plugged in, and is this its path?)"
        }
        // serialport reports a port another program holds exclusively
        // (EBUSY, or its lock) as "no device".
        tokio_serial::ErrorKind::NoDevice => {
            " (another program may have it open; or is the adapter unplugged?)"
        }
        tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied) => {
            " (regpoll's user may not open it: add the user to the group that owns the device, often dialout)"
        }
        tokio_serial::ErrorKind::Io(io::ErrorKind::WouldBlock | io::ErrorKind::ResourceBusy) => {
            " (another program has the port open)"
        }
        tokio_serial::ErrorKind::InvalidInput => " (the adapter refuses these settings)",
        _ => "",
    };
    let text = io_reason(&io::Error::from(e));
    format!("{path}: {text}{hint}")
}

/// The OS reason without the "(os error N)" suffix, lower-case, as in
/// `connect: connection refused`.
pub(super) fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut s = text.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_lowercase();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error opening `path` as a serial line gives.
    async fn open_fails(path: &str) -> String {
        let line = Transport::Rtu(Box::new(SerialLine::new(path)));
        match connect("", 0, &line, Duration::from_secs(1)).await {
            Ok(_) => panic!("opened {path} as a serial port"),
            Err(e) => {
                assert!(e.is_connect(), "{e}");
                e.to_string()
            }
        }
    }

    #[tokio::test]
    async fn a_missing_serial_port_is_a_connect_error_that_says_what_to_check() {
        let text = open_fails("/dev/regpoll-no-such-adapter").await;
        assert!(
            text.starts_with("connect: /dev/regpoll-no-such-adapter: ")
                && text.contains("is the adapter plugged in"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_port_another_program_holds_is_refused_saying_so() {
        use tokio_serial::SerialPort as _;
        let (_master, slave) = SerialStream::pair().unwrap();
        let path = slave.name().unwrap();
        let _held = open_serial(&SerialLine::new(path.clone())).unwrap();
        let text = open_fails(&path).await;
        assert!(
            text.starts_with(&format!("connect: {path}: "))
                && text.contains("another program may have it open"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_serial_port_is_refused_with_its_path() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().display().to_string();
        let text = open_fails(&path).await;
        assert!(text.starts_with(&format!("connect: {path}: ")), "{text}");
    }
}
