//! Byte-exact RTU frames, written out by hand (their CRCs computed apart
//! from this code), against a device played on the other end of a pipe.

use super::*;
use tokio::io::{DuplexStream, duplex};

const HOLDING_0_2: [u8; 8] = [0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B];
/// Unit 1 answers holding 0..1 with 0x0001, 0x0002.
const ANSWER_1_2: [u8; 9] = [0x01, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02, 0x2A, 0x32];

/// A device on the other end: for each step, reads one request (8 bytes),
/// checks it, and writes the reply (nothing, for a device that stays
/// silent). Returns when each request arrived.
fn device(
    mut line: DuplexStream,
    steps: Vec<(Vec<u8>, Vec<u8>)>,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let mut arrivals = Vec::new();
        for (want, reply) in steps {
            let mut request = [0u8; 8];
            line.read_exact(&mut request).await.unwrap();
            arrivals.push(Instant::now());
            assert_eq!(request.to_vec(), want, "request");
            line.write_all(&reply).await.unwrap();
        }
        // Keeps the line open until the client is done with it.
        let _ = line.read(&mut [0u8; 1]).await;
        arrivals
    })
}

fn link(gap: Duration) -> (Connection<DuplexStream>, DuplexStream) {
    let (client, device) = duplex(1024);
    (Connection::new(client, gap), device)
}

async fn holding(
    c: &mut Connection<DuplexStream>,
) -> Result<Result<Words, ExceptionCode>, CallError> {
    c.read(1, RegisterKind::Holding, 0, 2).await
}

fn protocol_error(r: Result<Result<Words, ExceptionCode>, CallError>) -> String {
    match r {
        Err(CallError::Protocol(m)) => m,
        other => panic!("a protocol error expected, got {other:?}"),
    }
}

#[test]
fn the_crc_is_crc16_modbus_sent_low_byte_first() {
    // The catalogue's check value of CRC-16/MODBUS.
    assert_eq!(crc16(b"123456789"), 0x4B37);
    assert_eq!(
        request(1, 0x03, 0, 10),
        [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
    );
    assert_eq!(
        request(1, 0x01, 0, 10),
        [0x01, 0x01, 0x00, 0x00, 0x00, 0x0A, 0xBC, 0x0D]
    );
    assert_eq!(request(1, 0x03, 0, 2), HOLDING_0_2);
}

#[tokio::test]
async fn registers_coils_and_exceptions_come_back_from_hand_written_frames() {
    let (mut c, line) = link(Duration::ZERO);
    let coils = request(1, 0x01, 0, 10).to_vec();
    let peer = device(
        line,
        vec![
            (HOLDING_0_2.to_vec(), ANSWER_1_2.to_vec()),
            (coils, vec![0x01, 0x01, 0x02, 0x03, 0x01, 0x78, 0xCC]),
            (HOLDING_0_2.to_vec(), vec![0x01, 0x83, 0x02, 0xC0, 0xF1]),
        ],
    );
    assert_eq!(
        holding(&mut c).await.unwrap(),
        Ok(Words::Registers(vec![1, 2]))
    );
    let Ok(Words::Bits(bits)) = c.read(1, RegisterKind::Coil, 0, 10).await.unwrap() else {
        panic!("bits expected");
    };
    assert_eq!(
        &bits[..10],
        [
            true, true, false, false, false, false, false, false, true, false
        ]
    );
    assert_eq!(
        holding(&mut c).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    drop(c);
    peer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_bad_answer_fails_its_request_only_and_the_next_one_is_read() {
    let mut bad_crc = ANSWER_1_2.to_vec();
    bad_crc[8] ^= 1;
    let mut other_unit = ANSWER_1_2.to_vec();
    other_unit[0] = 2;
    let mut other_function = ANSWER_1_2.to_vec();
    other_function[1] = 4;
    let mut longer = ANSWER_1_2.to_vec();
    longer.push(0x99);
    let short_count = vec![0x01, 0x03, 0x02, 0x00, 0x01, 0x79, 0x84];
    let cases: [(Vec<u8>, &str); 6] = [
        (bad_crc, "CRC 0x332a in the answer, computed 0x322a"),
        (other_unit, "answer from unit 2, expected unit 1"),
        (
            other_function,
            "function code 0x04 in the answer, expected 0x03",
        ),
        (longer, "1 bytes after the answer"),
        (short_count, "byte count 2 in the answer, expected 4"),
        (
            vec![0x13, 0x37, 0x01, 0x03],
            "answer from unit 19, expected unit 1",
        ),
    ];
    for (reply, want) in cases {
        let (mut c, line) = link(Duration::ZERO);
        let peer = device(
            line,
            vec![
                (HOLDING_0_2.to_vec(), reply),
                (HOLDING_0_2.to_vec(), ANSWER_1_2.to_vec()),
            ],
        );
        let message = protocol_error(holding(&mut c).await);
        assert!(message.contains(want), "{message} (expected {want})");
        assert_eq!(
            holding(&mut c).await.unwrap(),
            Ok(Words::Registers(vec![1, 2])),
            "after: {want}"
        );
        drop(c);
        peer.await.unwrap();
    }
}

#[tokio::test]
async fn bytes_that_cannot_begin_an_answer_are_skipped() {
    let (mut c, line) = link(Duration::ZERO);
    let mut noisy = vec![0x00, 0xFF, 0xF8];
    noisy.extend_from_slice(&ANSWER_1_2);
    let peer = device(line, vec![(HOLDING_0_2.to_vec(), noisy)]);
    assert_eq!(
        holding(&mut c).await.unwrap(),
        Ok(Words::Registers(vec![1, 2]))
    );
    drop(c);
    peer.await.unwrap();
}

#[tokio::test]
async fn noise_between_frames_is_discarded_before_the_next_request() {
    let (mut c, mut line) = link(Duration::ZERO);
    let mut first = [0u8; 8];
    let serve = async {
        line.read_exact(&mut first).await.unwrap();
        line.write_all(&ANSWER_1_2).await.unwrap();
        line
    };
    let (answer, mut line) = tokio::join!(holding(&mut c), serve);
    assert_eq!(answer.unwrap(), Ok(Words::Registers(vec![1, 2])));
    // Between the frames, one nobody asked for.
    let mut unasked = ANSWER_1_2;
    unasked[4] = 0x63;
    line.write_all(&unasked).await.unwrap();
    let peer = tokio::spawn(async move {
        let mut request = [0u8; 8];
        line.read_exact(&mut request).await.unwrap();
        line.write_all(&ANSWER_1_2).await.unwrap();
        let _ = line.read(&mut [0u8; 1]).await;
    });
    assert_eq!(
        holding(&mut c).await.unwrap(),
        Ok(Words::Registers(vec![1, 2])),
        "the unasked frame is not the second answer"
    );
    drop(c);
    peer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn after_a_timeout_the_rest_of_a_late_answer_is_waited_out() {
    let (mut c, mut line) = link(Duration::ZERO);
    let peer = tokio::spawn(async move {
        let mut request = [0u8; 8];
        line.read_exact(&mut request).await.unwrap();
        // Half an answer, then the rest long after the client gave up.
        line.write_all(&ANSWER_1_2[..4]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        line.write_all(&ANSWER_1_2[4..]).await.unwrap();
        line.read_exact(&mut request).await.unwrap();
        let asked = Instant::now();
        let mut fresh = ANSWER_1_2;
        fresh[4] = 0x07;
        let crc = crc16(&fresh[..7]).to_le_bytes();
        fresh[7..].copy_from_slice(&crc);
        line.write_all(&fresh).await.unwrap();
        let _ = line.read(&mut [0u8; 1]).await;
        asked
    });
    let first = tokio::time::timeout(Duration::from_secs(1), holding(&mut c)).await;
    assert!(first.is_err(), "the first request times out");
    tokio::time::sleep(Duration::from_millis(490)).await;
    let started = Instant::now();
    assert_eq!(
        holding(&mut c).await.unwrap(),
        Ok(Words::Registers(vec![7, 2])),
        "the late half answer is not taken for the new one"
    );
    drop(c);
    let asked = peer.await.unwrap();
    assert!(asked - started >= RESYNC_QUIET, "the line was waited quiet");
}

#[tokio::test(start_paused = true)]
async fn a_line_that_never_falls_quiet_fails_the_request_not_the_bus_forever() {
    let (mut c, mut line) = link(Duration::ZERO);
    let chatter = tokio::spawn(async move {
        loop {
            if line.write_all(&[0x55]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // A request that is dropped unanswered leaves the line unsettled.
    let _ = tokio::time::timeout(Duration::from_millis(100), holding(&mut c)).await;
    let message = protocol_error(holding(&mut c).await);
    assert!(message.contains("did not fall quiet"), "{message}");
    chatter.abort();
}

#[tokio::test(start_paused = true)]
async fn requests_on_a_serial_line_keep_the_frame_gap() {
    let gap = Duration::from_micros(3646);
    let (mut c, line) = link(gap);
    let peer = device(
        line,
        vec![
            (HOLDING_0_2.to_vec(), ANSWER_1_2.to_vec()),
            (HOLDING_0_2.to_vec(), ANSWER_1_2.to_vec()),
        ],
    );
    holding(&mut c).await.unwrap().unwrap();
    let answered = Instant::now();
    holding(&mut c).await.unwrap().unwrap();
    drop(c);
    let arrivals = peer.await.unwrap();
    assert!(
        arrivals[1] - answered >= gap,
        "{:?}",
        arrivals[1] - answered
    );
}
