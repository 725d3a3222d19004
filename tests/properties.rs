//! Properties that must hold for any input: the planner covers every register
//! exactly once within its limits, encoding and decoding agree, and no reply a
//! device can send makes the poller panic.

use std::time::Duration;

use proptest::prelude::*;
use regpoll::modbus::decode::{decode, encode};
use regpoll::modbus::endpoint::Endpoint;
use regpoll::modbus::plan::plan;
use regpoll::reading::Value;
use regpoll::registry::{DataType, Register, RegisterKind, RequestLimits, UnitId, WordOrder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KINDS: [RegisterKind; 4] = [
    RegisterKind::Holding,
    RegisterKind::Input,
    RegisterKind::Coil,
    RegisterKind::Discrete,
];
const WORD_TYPES: [DataType; 8] = [
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
];
const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];

fn register(kind: RegisterKind, address: u16, data_type: DataType, order: WordOrder) -> Register {
    let data_type = if kind.is_bit() {
        DataType::Bool
    } else {
        data_type
    };
    // Keep the value inside the address space, as config validation does.
    let address = address.min((65536 - u32::from(data_type.width())) as u16);
    Register::plain(
        format!("{kind:?}{address}"),
        kind,
        address,
        data_type,
        order,
    )
}

fn any_register() -> impl Strategy<Value = Register> {
    (
        0..4usize,
        prop_oneof![0..300u16, 65400..=65535u16],
        0..8usize,
        0..4usize,
    )
        .prop_map(|(k, a, t, o)| register(KINDS[k], a, WORD_TYPES[t], ORDERS[o]))
}

proptest! {
    #[test]
    fn the_plan_covers_every_register_exactly_once_within_limits(
        registers in proptest::collection::vec(any_register(), 1..60),
        max_registers in 4u16..=125,
        max_bits in 1u16..=2000,
        max_gap in 0u16..=20,
    ) {
        let limits = RequestLimits { max_registers, max_bits, max_gap, ..RequestLimits::DEFAULT };
        let p = plan(&registers, &limits);
        let mut seen = vec![0u32; registers.len()];
        for req in &p {
            let limit = if req.kind.is_bit() { max_bits } else { max_registers };
            prop_assert!(req.count >= 1 && req.count <= limit, "{req:?} breaks the limit {limit}");
            prop_assert!(u32::from(req.start) + u32::from(req.count) <= 65536, "{req:?} runs past 65535");
            for &i in &req.registers {
                let r = &registers[i];
                seen[i] += 1;
                prop_assert_eq!(r.kind, req.kind);
                prop_assert!(r.address.0 >= req.start && r.last_address() < u32::from(req.start) + u32::from(req.count), "{r:?} is not inside {req:?}");
            }
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "coverage {seen:?}");
    }

    #[test]
    fn decoding_then_encoding_integers_gives_the_same_words(words in proptest::collection::vec(any::<u16>(), 4), t in 0..6usize, o in 0..4usize) {
        // Integer types are exact; floats are checked below (NaN payloads may change).
        let reg = register(RegisterKind::Holding, 0, WORD_TYPES[t], ORDERS[o]);
        let w = &words[..usize::from(reg.width())];
        let value = decode(w, &reg);
        if let Value::Number(n) = value {
            // 64-bit values above 2^53 are not exact in f64 (documented); skip those.
            if n.abs() < 9.0e15 {
                prop_assert_eq!(encode(&Value::Number(n), &reg), w.to_vec());
            }
        }
    }

    #[test]
    fn floats_survive_encoding_in_every_order(v in -1.0e30f64..1.0e30, o in 0..4usize) {
        let reg64 = register(RegisterKind::Holding, 0, DataType::F64, ORDERS[o]);
        prop_assert_eq!(decode(&encode(&Value::Number(v), &reg64), &reg64), Value::Number(v));
        let reg32 = register(RegisterKind::Holding, 0, DataType::F32, ORDERS[o]);
        let v32 = regpoll::modbus::decode::f32_to_f64(v as f32);
        prop_assert_eq!(decode(&encode(&Value::Number(v32), &reg32), &reg32), Value::Number(v32));
    }
}

/// Serves one connection that answers the first request with `reply` and
/// closes, then reads through an endpoint: whatever the bytes, the read ends
/// with a value or an error, never a panic or a hang.
async fn read_against(reply: Vec<u8>, kind: RegisterKind, count: u16) -> bool {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 12];
        let _ = s.read_exact(&mut request).await;
        let _ = s.write_all(&reply).await;
        let _ = s.shutdown().await;
    });
    let endpoint = Endpoint::new("127.0.0.1", port);
    let limits = RequestLimits {
        retries: 0,
        ..RequestLimits::DEFAULT
    };
    let (_, result) = endpoint
        .session()
        .await
        .read(
            UnitId(1),
            kind,
            0,
            count,
            Duration::from_millis(500),
            &limits,
        )
        .await;
    server.abort();
    result.is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_replies_never_panic_the_reader(
        reply in proptest::collection::vec(any::<u8>(), 0..300),
        // A valid MBAP header (transaction 0, protocol 0) in front of random bytes
        // reaches the PDU parser instead of stopping at the header.
        framed in any::<bool>(),
        k in 0..4usize,
        count in 1u16..=10,
    ) {
        let reply = if framed {
            let mut r = vec![0, 0, 0, 0, 0, (reply.len() + 1).min(255) as u8, 1];
            r.extend(&reply);
            r
        } else {
            reply
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(read_against(reply, KINDS[k], count));
    }
}
