//! Modbus TCP at the frame level, for the simulator. A library server cannot
//! misbehave on purpose, and the simulator must (see `fault`), so it speaks
//! the protocol itself. Frames (Modbus messaging on TCP/IP, section 3): a
//! 7-byte MBAP header (transaction id, protocol id 0, length of what follows,
//! unit id) and a PDU (function code and data). What to answer, faults
//! included, is `answer`'s; this is only the framing. Only the four read
//! functions are served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub(crate) use super::answer::Units;
use super::answer::{Reply, respond, stray_body};
use super::fault::Scoped;
use super::log;

pub(crate) async fn serve(listener: TcpListener, units: Arc<dyn Units>, faults: Arc<Vec<Scoped>>) {
    accept_each(listener, |stream, peer| {
        connection(stream, peer, Arc::clone(&units), Arc::clone(&faults))
    })
    .await
}

/// Runs `serve` on every connection `listener` accepts. Connections belong
/// to this future: when the simulator stops (aborts it), the JoinSet is
/// dropped and every open connection closes with it.
pub(crate) async fn accept_each<F, S>(listener: TcpListener, serve: S)
where
    S: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve(stream, peer));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers one connection's requests in order until it closes, breaks the
/// protocol, or a fault drops it.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    units: Arc<dyn Units>,
    faults: Arc<Vec<Scoped>>,
) {
    // Requests in scope of each DropEvery fault, on this connection.
    let mut seen: HashMap<usize, u32> = HashMap::new();
    let tap = units.request_log().map(|l| l.connection(Some(peer)));
    loop {
        let mut header = [0u8; 7];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if header[2..4] != [0, 0] || !(2..=254).contains(&length) {
            return; // not Modbus TCP: a real server closes too
        }
        let mut pdu = vec![0u8; length - 1];
        if stream.read_exact(&mut pdu).await.is_err() {
            return;
        }
        let (transaction, unit) = ([header[0], header[1]], header[6]);
        log::record(tap.as_ref(), unit);
        let (body, stray) = match respond(&*units, &faults, &mut seen, unit, &pdu).await {
            Reply::Close => return,
            Reply::Silent => continue,
            Reply::Pdu { body, stray } => (body, stray),
        };
        if stream
            .write_all(&frame(transaction, unit, &body))
            .await
            .is_err()
        {
            return;
        }
        if stray
            && stray_frame(&mut stream, transaction, unit, &pdu)
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Sends, a moment after an answer (so that it arrives on its own, while
/// the client waits for nothing), a well-formed reply to a request not yet
/// made: the transaction id after this one, the same unit and function,
/// every value 0xDEAD.
async fn stray_frame(
    stream: &mut TcpStream,
    transaction: [u8; 2],
    unit: u8,
    request: &[u8],
) -> std::io::Result<()> {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let next = u16::from_be_bytes(transaction).wrapping_add(1);
    stream
        .write_all(&frame(next.to_be_bytes(), unit, &stray_body(request)))
        .await
}

/// A Modbus TCP frame: the MBAP header (transaction, protocol 0, length,
/// unit) and `body`.
fn frame(transaction: [u8; 2], unit: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + body.len());
    out.extend_from_slice(&transaction);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(body.len() as u16 + 1).to_be_bytes());
    out.push(unit);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegisterKind;
    use crate::sim::answer::Answer;
    use crate::sim::fault::FaultAction;

    struct Counting;
    impl Units for Counting {
        fn answer(&self, unit: u8, kind: RegisterKind, start: u16, count: u16) -> Answer {
            match (unit, kind) {
                (9, _) => Answer::Exception(0x0B),
                (_, k) if k.is_bit() => {
                    Answer::Bits((0..count).map(|i| (start + i).is_multiple_of(3)).collect())
                }
                _ => Answer::Registers((start..start + count).collect()),
            }
        }
        fn has_unit(&self, unit: u8) -> bool {
            unit != 9
        }
    }

    async fn exchange(request: &[u8], faults: Vec<Scoped>) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Counting), Arc::new(faults)));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = vec![0u8; 260];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        server.abort();
        out.truncate(n);
        out
    }

    #[tokio::test]
    async fn holding_reads_are_answered_with_big_endian_words_and_the_same_transaction() {
        // transaction 0x1234, protocol 0, length 6, unit 1, fc 3, start 0x0100, count 2
        let r = exchange(&[0x12, 0x34, 0, 0, 0, 6, 1, 3, 0x01, 0x00, 0, 2], vec![]).await;
        assert_eq!(r, [0x12, 0x34, 0, 0, 0, 7, 1, 3, 4, 0x01, 0x00, 0x01, 0x01]);
    }

    #[tokio::test]
    async fn coil_reads_pack_bits_lsb_first() {
        let r = exchange(&[0, 1, 0, 0, 0, 6, 1, 1, 0, 0, 0, 10], vec![]).await;
        // bits 0,3,6,9 on → 0b0100_1001, 0b0000_0010
        assert_eq!(r, [0, 1, 0, 0, 0, 5, 1, 1, 2, 0x49, 0x02]);
    }

    #[tokio::test]
    async fn unknown_functions_and_bad_quantities_get_exceptions() {
        assert_eq!(
            exchange(&[0, 1, 0, 0, 0, 6, 1, 0x2B, 0, 0, 0, 1], vec![]).await[7..],
            [0xAB, 1]
        );
        assert_eq!(
            exchange(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 126], vec![]).await[7..],
            [0x83, 3]
        );
        assert_eq!(
            exchange(&[0, 1, 0, 0, 0, 6, 1, 3, 0xFF, 0xFF, 0, 2], vec![]).await[7..],
            [0x83, 2]
        );
    }

    #[tokio::test]
    async fn fixed_words_replace_only_their_registers_words() {
        let fault = Scoped {
            unit: 1,
            kind: Some(RegisterKind::Holding),
            addresses: Some((101, 102)),
            action: FaultAction::Words(vec![0x4100, 0x4200, 0x4300]),
        };
        // Addresses 100..=103: 100 and 103 keep their own words, 101 and 102
        // hold the fixed ones; the third fixed word is past the register.
        let r = exchange(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 100, 0, 4], vec![fault]).await;
        assert_eq!(r[7..], [3, 8, 0, 100, 0x41, 0, 0x42, 0, 0, 103]);
    }

    #[tokio::test]
    async fn faults_apply_only_within_their_scope() {
        let fault = Scoped {
            unit: 1,
            kind: Some(RegisterKind::Holding),
            addresses: Some((100, 101)),
            action: FaultAction::Exception(4),
        };
        assert_eq!(
            exchange(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 101, 0, 1], vec![fault.clone()]).await[7..],
            [0x83, 4]
        );
        assert_eq!(
            exchange(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 102, 0, 1], vec![fault.clone()]).await[7..],
            [3, 2, 0, 102]
        );
        assert_eq!(
            exchange(&[0, 1, 0, 0, 0, 6, 2, 3, 0, 101, 0, 1], vec![fault]).await[7..],
            [3, 2, 0, 101]
        );
    }
}
