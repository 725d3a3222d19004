//! Modbus RTU at the frame level, for the simulator: requests and answers
//! are unit id, PDU and CRC-16 (low byte first), on a TCP socket (as a
//! serial gateway that passes frames through) or on a pseudo-terminal that
//! stands in for a serial line. What to answer is `answer`'s, faults
//! included; only the framing is here.
//!
//! As a slave on a serial line must, it ignores a frame whose CRC is wrong
//! (it looks for a request further on), does not answer broadcasts (unit 0), and on
//! a serial line stays silent for a unit it does not have, where a TCP
//! gateway answers exception 0x0B (gateway target failed to respond).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_serial::{SerialPort as _, SerialStream};

use super::answer::{Reply, Units, respond, stray_body};
use super::fault::Scoped;
use super::log;
use crate::modbus::rtu::crc16;

/// A read request's frame: unit, function, start, count, CRC.
const REQUEST: usize = 8;

/// Serves RTU over each connection `listener` accepts.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    units: Arc<dyn Units>,
    faults: Arc<Vec<Scoped>>,
) {
    super::wire::accept_each(listener, |stream, peer| {
        serve_link(
            stream,
            Some(peer),
            Arc::clone(&units),
            Arc::clone(&faults),
            Line::Gateway,
        )
    })
    .await
}

/// A pseudo-terminal pair: the simulator answers on one end; a client opens
/// the other by its path, as it would open /dev/ttyUSB0.
pub(crate) struct Pty {
    pub path: PathBuf,
    master: SerialStream,
    /// Held open so the master never sees the line hang up between two
    /// clients (reads on a master whose slave nobody holds fail on Linux).
    slave: SerialStream,
}

impl Pty {
    pub fn open() -> io::Result<Pty> {
        let (master, slave) = SerialStream::pair().map_err(|e| {
            io::Error::other(format!(
                "cannot create a pseudo-terminal for a serial device: {e}"
            ))
        })?;
        let path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no path"))?;
        Ok(Pty {
            path,
            master,
            slave,
        })
    }

    pub(crate) async fn serve(self, units: Arc<dyn Units>, faults: Arc<Vec<Scoped>>) {
        let _slave = self.slave;
        serve_link(self.master, None, units, faults, Line::Serial).await
    }
}

/// Which kind of link a simulated RTU bus is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A TCP socket to a gateway: closing is possible, unknown units get 0x0B.
    Gateway,
    /// A serial line: nothing to close, unknown units are silent.
    Serial,
}

/// Answers the requests on one link (from `peer`, on TCP) until it closes
/// or a fault drops it.
async fn serve_link<S>(
    mut link: S,
    peer: Option<SocketAddr>,
    units: Arc<dyn Units>,
    faults: Arc<Vec<Scoped>>,
    line: Line,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut seen: HashMap<usize, u32> = HashMap::new();
    let tap = units.request_log().map(|l| l.connection(peer));
    let mut got = [0u8; 256];
    let mut filled = 0;
    loop {
        while filled < REQUEST {
            match link.read(&mut got[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        }
        let request: [u8; REQUEST] = got[..REQUEST].try_into().expect("8 bytes");
        if crc16(&request[..6]).to_le_bytes() != request[6..] {
            // Line noise, or a request this simulator does not frame: look
            // for a request one byte further on.
            got.copy_within(1..filled, 0);
            filled -= 1;
            continue;
        }
        got.copy_within(REQUEST..filled, 0);
        filled -= REQUEST;
        let unit = request[0];
        if unit == 0 || (line == Line::Serial && !units.has_unit(unit)) {
            continue;
        }
        let pdu = &request[1..6];
        log::record(tap.as_ref(), unit);
        match respond(&*units, &faults, &mut seen, unit, pdu).await {
            Reply::Close if line == Line::Gateway => return,
            Reply::Close | Reply::Silent => continue,
            Reply::Pdu { body, stray } => {
                if link.write_all(&frame(unit, &body)).await.is_err() {
                    return;
                }
                if stray {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if link
                        .write_all(&frame(unit, &stray_body(pdu)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// An RTU frame: unit, `body`, CRC low byte first.
fn frame(unit: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(unit);
    out.extend_from_slice(body);
    let crc = crc16(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegisterKind;
    use crate::sim::answer::Answer;
    use tokio::io::duplex;

    struct Counting;
    impl Units for Counting {
        fn answer(&self, unit: u8, _kind: RegisterKind, start: u16, count: u16) -> Answer {
            if !self.has_unit(unit) {
                return Answer::Exception(0x0B);
            }
            Answer::Registers((start..start + count).collect())
        }
        fn has_unit(&self, unit: u8) -> bool {
            unit == 1
        }
    }

    async fn exchange(line: Line, requests: &[&[u8]]) -> Vec<u8> {
        let (mut client, server) = duplex(1024);
        let task = tokio::spawn(serve_link(
            server,
            None,
            Arc::new(Counting),
            Arc::new(Vec::new()),
            line,
        ));
        for r in requests {
            client.write_all(r).await.unwrap();
        }
        let mut out = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        task.abort();
        out.truncate(n);
        out
    }

    #[tokio::test]
    async fn a_read_is_answered_with_a_crc_low_byte_first() {
        // unit 1, holding 0x0100, 2 registers
        let request = [0x01, 0x03, 0x01, 0x00, 0x00, 0x02, 0xC5, 0xF7];
        let answer = exchange(Line::Serial, &[&request]).await;
        assert_eq!(
            answer,
            [0x01, 0x03, 0x04, 0x01, 0x00, 0x01, 0x01, 0x3B, 0x9F]
        );
    }

    #[tokio::test]
    async fn bad_crcs_broadcasts_and_absent_units_get_no_answer_on_a_serial_line() {
        let bad_crc = [0x01, 0x03, 0x01, 0x00, 0x00, 0x02, 0xC5, 0xF8];
        let broadcast = [0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x85, 0xDB];
        let absent = [0x02, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x39];
        let good = [0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A];
        // Only the last request is answered: the first answer read is its.
        let answer = exchange(Line::Serial, &[&bad_crc, &broadcast, &absent, &good]).await;
        assert_eq!(answer, [0x01, 0x03, 0x02, 0x00, 0x00, 0xB8, 0x44]);
        // Behind a gateway, an absent unit is an exception 0x0B.
        let answer = exchange(Line::Gateway, &[&absent]).await;
        assert_eq!(answer, [0x02, 0x83, 0x0B, 0xF0, 0xF7]);
    }
}
