//! `widen`: what widening an f32 through its shortest decimal costs
//! (`regpoll::modbus::decode::f32_to_f64`, on the hot path of every f32 of
//! every poll), next to the plain `f64::from` it replaced, the same round
//! trip through std's formatter, and a whole `decode` of an f32 register.
//! In-process and single-threaded: it prints nanoseconds per value, the
//! best of several rounds (the least disturbed by the shared machine).

use std::hint::black_box;
use std::time::Instant;

use regpoll::modbus::decode::{decode, f32_to_f64};
use regpoll::reading::Value;
use regpoll::registry::{DataType, Register, RegisterKind, WordOrder};

pub struct WidenSpec {
    pub values: usize,
    pub rounds: usize,
}

/// Values like a meter's: one to three decimals (230.1, 49.98, 0.875), and
/// whole numbers (counters, setpoints) that take the fast path.
fn workload(n: usize) -> (Vec<f32>, Vec<f32>) {
    // A fixed linear congruential sequence: the same values every run.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (x >> 33) as u32
    };
    let decimals = (0..n)
        .map(|_| {
            let scale = [10.0, 100.0, 1000.0][(next() % 3) as usize];
            (f64::from(next() % 1_000_000) / scale) as f32
        })
        .collect();
    let whole = (0..n).map(|_| (next() % 100_000) as f32).collect();
    (decimals, whole)
}

/// Best nanoseconds per value of `f` over `rounds` passes.
fn per_value(values: &[f32], rounds: usize, f: impl Fn(f32) -> f64) -> f64 {
    (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            let mut sum = 0.0;
            for &v in values {
                sum += f(black_box(v));
            }
            black_box(sum);
            start.elapsed().as_nanos() as f64 / values.len().max(1) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn widen(spec: &WidenSpec) -> serde_json::Value {
    let (decimals, whole) = workload(spec.values);
    let reg = Register::plain(
        "v",
        RegisterKind::Holding,
        0,
        DataType::F32,
        WordOrder::Abcd,
    );
    let words: Vec<[u16; 2]> = decimals
        .iter()
        .map(|v| {
            let b = v.to_bits();
            [(b >> 16) as u16, b as u16]
        })
        .collect();
    let rounds = spec.rounds;
    let decode_ns = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            let mut sum = 0.0;
            for w in &words {
                if let Value::Number(n) = decode(black_box(w), &reg) {
                    sum += n;
                }
            }
            black_box(sum);
            start.elapsed().as_nanos() as f64 / words.len().max(1) as f64
        })
        .fold(f64::INFINITY, f64::min);
    serde_json::json!({
        "values": spec.values,
        "rounds": rounds,
        "ns_per_value": {
            "f64_from": per_value(&decimals, rounds, f64::from),
            "f32_to_f64_decimals": per_value(&decimals, rounds, f32_to_f64),
            "f32_to_f64_whole_numbers": per_value(&whole, rounds, f32_to_f64),
            "std_format_then_parse": per_value(&decimals, rounds, |v| {
                v.to_string().parse().unwrap_or(f64::NAN)
            }),
            "decode_f32_register": decode_ns,
        }
    })
}
