//! Words on the wire ↔ values. Modbus registers are 16-bit big-endian words;
//! wider values span several words, and devices disagree on their order, so the
//! order is configured per register as two independent swaps: of the words
//! (`CDAB`, `GHEFCDAB`) and of the bytes inside each word (`BADC`, `BADCFEHG`);
//! `DCBA`/`HGFEDCBA` do both. Decoding first undoes the swaps, giving the
//! big-endian `ABCD…` form, then reads the type. Text is the exception: it
//! is a run of bytes, not one number, so a word swap exchanges the words of
//! each pair of registers (text copied out of 32-bit memory a word at a time)
//! rather than reversing the whole run.
//!
//! The encoder exists for the simulator; round-trip tests keep the two honest
//! with each other, and hand-written byte patterns keep both honest with devices.

use crate::reading::Value;
use crate::registry::{Byte, DataType, Register, WordOrder};

/// Decodes the words of one register into its raw value (before scale and
/// offset). `words` must hold exactly `reg.width()` words.
pub fn decode(words: &[u16], reg: &Register) -> Value {
    debug_assert_eq!(words.len(), usize::from(reg.width()));
    // Numbers span at most four words: reordered on the stack, since this
    // runs for every register of every poll (text is reordered on its own).
    let mut buf = [0u16; 4];
    let w = &mut buf[..words.len().min(4)];
    w.copy_from_slice(&words[..w.len()]);
    swap(w, reg.order);
    match reg.data_type {
        DataType::Bool => Value::Bool(match reg.bit {
            Some(bit) => (w[0] >> bit) & 1 == 1,
            None => w[0] != 0,
        }),
        DataType::U16 => Value::Number(f64::from(w[0])),
        DataType::I16 => Value::Number(f64::from(w[0] as i16)),
        DataType::U32 => Value::Number(f64::from(join(w) as u32)),
        DataType::I32 => Value::Number(f64::from(join(w) as u32 as i32)),
        DataType::F32 => Value::Number(f32_to_f64(f32::from_bits(join(w) as u32))),
        DataType::U64 => Value::Number(join(w) as f64),
        DataType::I64 => Value::Number(join(w) as i64 as f64),
        DataType::F64 => Value::Number(f64::from_bits(join(w))),
        DataType::F16 => Value::Number(f16_to_f64(w[0])),
        DataType::Bcd16 | DataType::Bcd32 => match bcd(join(w), w.len()) {
            Ok(n) => Value::Number(n as f64),
            // Not a number: `invalid_bcd` says why, the poller marks it bad.
            Err(_) => Value::None,
        },
        DataType::U8 => Value::Number(f64::from(byte_of(w[0], reg.byte))),
        DataType::I8 => Value::Number(f64::from(byte_of(w[0], reg.byte) as i8)),
        DataType::String => Value::Text(decode_text(words, reg.order).0),
    }
}

/// Why a BCD register's words are no number (a nibble above 9), or `None`
/// when they are one, or the register is not BCD. Nibbles are counted from 0
/// at the left of the value written in hex, after the order's swaps are
/// undone: `BCD digit 0xA at nibble 2 of 0x12A4 is not a decimal digit`.
pub fn invalid_bcd(words: &[u16], reg: &Register) -> Option<String> {
    if !matches!(reg.data_type, DataType::Bcd16 | DataType::Bcd32) {
        return None;
    }
    let w = to_big_endian(words, reg.order);
    let raw = join(&w);
    let (digit, nibble) = bcd(raw, w.len()).err()?;
    Some(format!(
        "BCD digit {digit:#X} at nibble {nibble} of 0x{raw:0width$X} is not a decimal digit",
        width = w.len() * 4
    ))
}

/// The number packed BCD `raw` (of `words` words) holds, or the first digit
/// above 9 and its nibble, counted from 0 at the most significant.
fn bcd(raw: u64, words: usize) -> Result<u64, (u8, usize)> {
    let nibbles = words * 4;
    (0..nibbles).try_fold(0u64, |n, i| {
        let digit = ((raw >> (4 * (nibbles - 1 - i))) & 0xF) as u8;
        if digit > 9 {
            Err((digit, i))
        } else {
            Ok(n * 10 + u64::from(digit))
        }
    })
}

/// Packs `n` (rounded, held to 0..=99…9) into BCD of `words` words.
fn to_bcd(n: f64, words: usize) -> u64 {
    let nibbles = words * 4;
    let max = 10u64.pow(nibbles as u32) - 1;
    let mut n = (n.round().max(0.0) as u64).min(max);
    (0..nibbles).fold(0u64, |acc, i| {
        let digit = n % 10;
        n /= 10;
        acc | (digit << (4 * i))
    })
}

fn byte_of(word: u16, byte: Option<Byte>) -> u8 {
    match byte {
        Some(Byte::High) => (word >> 8) as u8,
        Some(Byte::Low) | None => word as u8,
    }
}

fn byte_shift(byte: Option<Byte>) -> u16 {
    match byte {
        Some(Byte::High) => 8,
        Some(Byte::Low) | None => 0,
    }
}

/// Widens an IEEE 754 half to the f64 nearest its shortest decimal that
/// reads back as the same half, for the reason `f32_to_f64` gives: 0x3555
/// is exactly 0.333251953125, but the device meant 0.3333. Written out
/// rather than through a crate: the format is three fields in one word.
/// Non-finite values pass through unchanged (the poller flags them).
pub fn f16_to_f64(h: u16) -> f64 {
    let exact = f16_exact(h);
    if !exact.is_finite() || exact.trunc() == exact {
        return exact;
    }
    // A half has at most five significant decimal digits that matter.
    (0..5)
        .map(|digits| format!("{exact:.digits$e}"))
        .filter_map(|s| s.parse::<f64>().ok())
        .find(|&d| f64_to_f16(d) == h)
        .unwrap_or(exact)
}

/// The exact value of a half: sign, 5-bit exponent (bias 15), 10-bit fraction.
fn f16_exact(h: u16) -> f64 {
    let sign = if h & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exponent = i32::from((h >> 10) & 0x1F);
    let fraction = f64::from(h & 0x03FF);
    let magnitude = match exponent {
        0 => fraction * 2f64.powi(-24),
        0x1F if fraction == 0.0 => f64::INFINITY,
        0x1F => f64::NAN,
        e => (1024.0 + fraction) * 2f64.powi(e - 25),
    };
    sign * magnitude
}

/// The half nearest `v` (ties to even); beyond 65504 it is infinite.
fn f64_to_f16(v: f64) -> u16 {
    let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
    let a = v.abs();
    if a.is_nan() {
        return 0x7E00;
    }
    // 65520 is halfway between 65504 and the next step, 65536: ties to even
    // round up, out of range.
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    if a < 2f64.powi(-14) {
        // Subnormal, in steps of 2^-24; rounding up to 1024 gives the
        // smallest normal, which the bit layout encodes the same way.
        return sign | (a * 2f64.powi(24)).round_ties_even() as u16;
    }
    let mut exponent = ((a.to_bits() >> 52) & 0x7FF) as i32 - 1023;
    let mut mantissa = (a / 2f64.powi(exponent - 10)).round_ties_even() as u16;
    if mantissa == 2048 {
        exponent += 1;
        mantissa = 1024;
    }
    sign | (((exponent + 15) as u16) << 10) | (mantissa - 1024)
}

/// Widens an f32 to the f64 nearest its shortest round-trip decimal:
/// 230.1f32 becomes 230.1, not 230.10000610351562 (what `f64::from` gives,
/// the f32's exact binary value). The device meant the decimal; the extra
/// digits are an artefact of the f32's 24-bit mantissa and would show up in
/// Redis, the database, JSON and CSV, and break equality with what the
/// device's display shows. The f32 is still recovered exactly from the
/// result (`as f32`), so no information is lost.
///
/// It runs for every f32 of every poll: integers below 2^24 (counters,
/// setpoints) are exact either way and skip the decimal round trip; the
/// rest costs one `ryu` format and one parse (BENCHMARKS.md, "f32 widening").
/// Non-finite values pass through unchanged (the poller flags them).
pub fn f32_to_f64(v: f32) -> f64 {
    const EXACT: f32 = 16_777_216.0; // 2^24
    if !v.is_finite() || (v.abs() < EXACT && v.trunc() == v) {
        return f64::from(v);
    }
    let mut buf = ryu::Buffer::new();
    // ryu's output is always a valid float literal; the fallback is never taken.
    buf.format_finite(v).parse().unwrap_or(f64::from(v))
}

/// Decodes a `string` register's words into its text and, when the text
/// had to be changed to be stored (a NUL inside it, bytes that are not
/// UTF-8), what was done: the reading's `detail`, with quality `uncertain`.
pub fn decode_text(words: &[u16], order: WordOrder) -> (String, Option<String>) {
    text(&text_order(words, order))
}

/// Undoes (or applies) an order's swaps on text: bytes inside each word,
/// and words inside each pair of registers. A last register without a
/// partner stays where it is.
fn text_order(words: &[u16], order: WordOrder) -> Vec<u16> {
    let mut w = words.to_vec();
    if order.swaps_words() {
        w.chunks_exact_mut(2).for_each(|pair| pair.swap(0, 1));
    }
    if order.swaps_bytes() {
        w.iter_mut().for_each(|x| *x = x.swap_bytes());
    }
    w
}

/// Encodes a raw value into the words a device would send for `reg`. Numbers
/// are rounded and saturated to integer types; text is cut or NUL-padded to
/// the register's length. A bit field yields a word with only its bit set (or
/// none): the caller combines the bit fields that share a register.
pub fn encode(value: &Value, reg: &Register) -> Vec<u16> {
    let n = f64_of(value);
    let big_endian: Vec<u16> = match reg.data_type {
        DataType::Bool => {
            let on = n != 0.0;
            vec![match reg.bit {
                Some(bit) => u16::from(on) << bit,
                None => u16::from(on),
            }]
        }
        DataType::U16 => vec![n.round() as u16],
        DataType::I16 => vec![n.round() as i16 as u16],
        DataType::U32 => split(u64::from(n.round() as u32), 2),
        DataType::I32 => split(u64::from(n.round() as i32 as u32), 2),
        DataType::F32 => split(u64::from((n as f32).to_bits()), 2),
        DataType::U64 => split(n.round() as u64, 4),
        DataType::I64 => split(n.round() as i64 as u64, 4),
        DataType::F64 => split(n.to_bits(), 4),
        DataType::F16 => vec![f64_to_f16(n)],
        DataType::Bcd16 => split(to_bcd(n, 1), 1),
        DataType::Bcd32 => split(to_bcd(n, 2), 2),
        DataType::U8 => vec![u16::from(n.round() as u8) << byte_shift(reg.byte)],
        DataType::I8 => vec![u16::from(n.round() as i8 as u8) << byte_shift(reg.byte)],
        DataType::String => return text_order(&pack_text(value, reg.width()), reg.order),
    };
    // Both swaps are their own inverse, so the same function applies them.
    to_big_endian(&big_endian, reg.order)
}

fn f64_of(value: &Value) -> f64 {
    match value {
        Value::Number(n) => *n,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::None | Value::Text(_) => 0.0,
    }
}

/// Undoes (or, applied to big-endian words, applies) the order's swaps.
fn to_big_endian(words: &[u16], order: WordOrder) -> Vec<u16> {
    let mut w = words.to_vec();
    swap(&mut w, order);
    w
}

fn swap(w: &mut [u16], order: WordOrder) {
    if order.swaps_words() {
        w.reverse();
    }
    if order.swaps_bytes() {
        w.iter_mut().for_each(|x| *x = x.swap_bytes());
    }
}

fn join(words: &[u16]) -> u64 {
    words
        .iter()
        .fold(0u64, |acc, &w| (acc << 16) | u64::from(w))
}

fn split(v: u64, words: usize) -> Vec<u16> {
    (0..words).rev().map(|i| (v >> (16 * i)) as u16).collect()
}

/// Two bytes per register, high byte first. Trailing NULs are padding and
/// dropped without comment. A NUL with other bytes after it is not: text
/// cannot hold a NUL in PostgreSQL (a COPY that carries one is refused whole),
/// so the text is cut at the first NUL, as a C string would be, and the note
/// says so; SQLite gets the same value, so both stores agree. Bytes that are
/// not UTF-8 become U+FFFD rather than an error (a garbled label is still
/// worth showing), also with a note.
fn text(words: &[u16]) -> (String, Option<String>) {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    let mut notes = Vec::new();
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        notes.push(format!(
            "text cut at a NUL byte at offset {at} ({} more bytes followed)",
            bytes.len() - at - 1
        ));
        bytes.truncate(at);
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!(
                "text is not UTF-8 (invalid byte at offset {}); invalid bytes shown as U+FFFD",
                e.utf8_error().valid_up_to()
            ));
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    };
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    (text, note)
}

fn pack_text(value: &Value, registers: u16) -> Vec<u16> {
    let mut bytes = match value {
        Value::Text(t) => t.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    bytes.resize(usize::from(registers) * 2, 0);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegisterKind;

    fn reg(data_type: DataType, order: WordOrder) -> Register {
        Register {
            order,
            ..Register::test(RegisterKind::Holding, 0, data_type)
        }
    }

    fn num(words: &[u16], t: DataType, o: WordOrder) -> f64 {
        match decode(words, &reg(t, o)) {
            Value::Number(n) => n,
            other => panic!("expected a number, got {other:?}"),
        }
    }

    use DataType::*;
    use WordOrder::*;

    #[test]
    fn sixteen_bit_values_honour_the_byte_swap() {
        assert_eq!(num(&[0xFFFF], U16, Abcd), 65535.0);
        assert_eq!(num(&[0xFFFE], I16, Abcd), -2.0);
        assert_eq!(num(&[0x1234], U16, Badc), f64::from(0x3412u16));
        assert_eq!(num(&[0xFEFF], I16, Badc), -2.0);
    }

    /// 0x12345678 as u32 and i32, and 123.456f32 = 0x42F6E979, in each order.
    #[test]
    fn thirty_two_bit_values_in_every_order() {
        let cases = [
            (Abcd, [0x1234, 0x5678], [0x42F6, 0xE979]),
            (Cdab, [0x5678, 0x1234], [0xE979, 0x42F6]),
            (Badc, [0x3412, 0x7856], [0xF642, 0x79E9]),
            (Dcba, [0x7856, 0x3412], [0x79E9, 0xF642]),
        ];
        for (order, int_words, float_words) in cases {
            assert_eq!(
                num(&int_words, U32, order),
                f64::from(0x1234_5678u32),
                "{order:?}"
            );
            assert_eq!(
                num(&int_words, I32, order),
                f64::from(0x1234_5678i32),
                "{order:?}"
            );
            assert_eq!(num(&float_words, F32, order), 123.456, "{order:?}");
        }
        assert_eq!(num(&[0xFFFF, 0xFFFE], I32, Abcd), -2.0);
        assert_eq!(num(&[0xFEFF, 0xFFFF], I32, Dcba), -2.0);
    }

    /// 0x0102030405060708 and -2.5f64 = 0xC004000000000000 in each 64-bit order.
    #[test]
    fn sixty_four_bit_values_in_every_order() {
        let cases = [
            (Abcd, [0x0102, 0x0304, 0x0506, 0x0708], [0xC004, 0, 0, 0]),
            (Cdab, [0x0708, 0x0506, 0x0304, 0x0102], [0, 0, 0, 0xC004]),
            (Badc, [0x0201, 0x0403, 0x0605, 0x0807], [0x04C0, 0, 0, 0]),
            (Dcba, [0x0807, 0x0605, 0x0403, 0x0201], [0, 0, 0, 0x04C0]),
        ];
        for (order, int_words, float_words) in cases {
            assert_eq!(
                num(&int_words, U64, order),
                0x0102_0304_0506_0708u64 as f64,
                "{order:?}"
            );
            assert_eq!(
                num(&int_words, I64, order),
                0x0102_0304_0506_0708i64 as f64,
                "{order:?}"
            );
            assert_eq!(num(&float_words, F64, order), -2.5, "{order:?}");
        }
        assert_eq!(num(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], I64, Abcd), -2.0);
        assert_eq!(num(&[0xFFFF; 4], U64, Abcd), u64::MAX as f64);
    }

    /// 230.1f32 is 0x4366199A; as f64 its exact value is 230.10000610351562.
    #[test]
    fn an_f32_becomes_the_decimal_the_device_meant() {
        assert_eq!(230.1f32.to_bits(), 0x4366_199A);
        assert_eq!(num(&[0x4366, 0x199A], F32, Abcd), 230.1);
        assert_eq!(num(&[0x199A, 0x4366], F32, Cdab), 230.1);
        for (x, want) in [
            (0.1f32, 0.1),
            (-4.8, -4.8),
            (123_456.7, 123_456.7),
            (1.0e-45, 1.0e-45),
            (3.4028235e38, 3.4028235e38),
            (16_777_215.0, 16_777_215.0),
            (123_456_790.0, 123_456_790.0),
            (-0.0, -0.0),
        ] {
            let got = f32_to_f64(x);
            assert_eq!(got.to_bits(), f64::to_bits(want), "{x}");
            // Nothing is lost: the f32 comes back exactly.
            assert_eq!((got as f32).to_bits(), x.to_bits(), "{x}");
        }
        assert!(f32_to_f64(f32::NAN).is_nan());
        assert_eq!(f32_to_f64(f32::NEG_INFINITY), f64::NEG_INFINITY);
    }

    #[test]
    fn every_f32_widened_rounds_back_to_itself() {
        // A stride through all 2^32 bit patterns, every exponent and sign.
        for bits in (0..=u32::MAX).step_by(65_521) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                assert_eq!((f32_to_f64(x) as f32).to_bits(), bits, "{x}");
            }
        }
    }

    #[test]
    fn bit_fields_read_one_bit_of_a_word() {
        let mut r = reg(Bool, Abcd);
        r.bit = Some(0);
        assert_eq!(decode(&[0x0001], &r), Value::Bool(true));
        r.bit = Some(15);
        assert_eq!(decode(&[0x8000], &r), Value::Bool(true));
        assert_eq!(decode(&[0x7FFF], &r), Value::Bool(false));
    }

    #[test]
    fn strings_trim_trailing_nuls_and_replace_invalid_utf8() {
        let mut r = reg(String, Abcd);
        r.length = Some(3);
        assert_eq!(
            decode(&[0x4142, 0x4300, 0x0000], &r),
            Value::Text("ABC".into())
        );
        assert_eq!(
            decode(&[0x41FF, 0x4300, 0x0000], &r),
            Value::Text("A\u{FFFD}C".into())
        );
        r.order = Badc;
        assert_eq!(
            decode(&[0x4241, 0x0043, 0x0000], &r),
            Value::Text("ABC".into())
        );
    }

    #[test]
    fn padding_nuls_leave_text_unremarked() {
        assert_eq!(
            decode_text(&[0x4142, 0x4300, 0x0000], Abcd),
            ("ABC".to_string(), None)
        );
        assert_eq!(
            decode_text(&[0, 0], Abcd),
            (std::string::String::new(), None)
        );
    }

    #[test]
    fn a_nul_inside_text_cuts_it_and_says_so() {
        // "AB\0CD" and one byte of padding.
        let (t, note) = decode_text(&[0x4142, 0x0043, 0x4400], Abcd);
        assert_eq!(t, "AB");
        assert_eq!(
            note.as_deref(),
            Some("text cut at a NUL byte at offset 2 (2 more bytes followed)")
        );
        // The same bytes with swapped bytes in each word.
        assert_eq!(decode_text(&[0x4241, 0x4300, 0x0044], Badc).0, "AB");
        // A leading NUL leaves nothing.
        let (t, note) = decode_text(&[0x0041], Abcd);
        assert_eq!(t, "");
        assert!(note.unwrap().contains("offset 0 (1 more bytes"));
        // What decode() gives the simulator and everyone else agrees.
        let mut r = reg(String, Abcd);
        r.length = Some(3);
        assert_eq!(
            decode(&[0x4142, 0x0043, 0x4400], &r),
            Value::Text("AB".into())
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_noted() {
        let (t, note) = decode_text(&[0x41FF, 0x4300], Abcd);
        assert_eq!(t, "A\u{FFFD}C");
        assert_eq!(
            note.as_deref(),
            Some("text is not UTF-8 (invalid byte at offset 1); invalid bytes shown as U+FFFD")
        );
        // Both at once: cut first, then the rest replaced.
        let (t, note) = decode_text(&[0xFF41, 0x0042], Abcd);
        assert_eq!(t, "\u{FFFD}A");
        let note = note.unwrap();
        assert!(
            note.starts_with("text cut at a NUL byte at offset 2") && note.contains("not UTF-8"),
            "{note}"
        );
    }

    /// Half-precision patterns as a device sends them, byte swap included.
    #[test]
    fn halves_decode_from_hand_written_words() {
        for (word, want) in [
            (0x3C00, 1.0),
            (0xC000, -2.0),
            (0x7BFF, 65504.0),
            (0x0001, 6e-8),
            (0x0400, 6.104e-5),
            (0x3555, 0.3333),
            (0x5640, 100.0),
            (0x8000, -0.0),
        ] {
            assert_eq!(
                num(&[word], F16, Abcd).to_bits(),
                f64::to_bits(want),
                "{word:#06X}"
            );
            assert_eq!(
                num(&[u16::swap_bytes(word)], F16, Badc).to_bits(),
                f64::to_bits(want),
                "{word:#06X} BADC"
            );
        }
        assert_eq!(num(&[0x7C00], F16, Abcd), f64::INFINITY);
        assert_eq!(num(&[0xFC00], F16, Abcd), f64::NEG_INFINITY);
        assert!(num(&[0x7E00], F16, Abcd).is_nan());
    }

    #[test]
    fn every_half_widened_encodes_back_to_itself() {
        for h in 0..=u16::MAX {
            let v = f16_to_f64(h);
            if !v.is_nan() {
                assert_eq!(f64_to_f16(v), h, "{h:#06X} read as {v}");
            }
        }
        // Rounding to the nearest half, ties to even, and beyond 65504.
        assert_eq!(f64_to_f16(65519.0), 0x7BFF);
        assert_eq!(f64_to_f16(65520.0), 0x7C00);
        assert_eq!(f64_to_f16(1.0 + 2f64.powi(-11)), 0x3C00);
        assert_eq!(f64_to_f16(1.0 + 3.0 * 2f64.powi(-11)), 0x3C02);
        assert_eq!(f64_to_f16(1.0e-9), 0x0000);
    }

    #[test]
    fn bcd_reads_decimal_digits_in_every_order() {
        assert_eq!(num(&[0x1234], Bcd16, Abcd), 1234.0);
        assert_eq!(num(&[0x3412], Bcd16, Badc), 1234.0);
        assert_eq!(num(&[0x9999], Bcd16, Abcd), 9999.0);
        for (order, words) in [
            (Abcd, [0x0012, 0x3456]),
            (Cdab, [0x3456, 0x0012]),
            (Badc, [0x1200, 0x5634]),
            (Dcba, [0x5634, 0x1200]),
        ] {
            assert_eq!(num(&words, Bcd32, order), 123_456.0, "{order:?}");
        }
        assert_eq!(num(&[0x9999, 0x9999], Bcd32, Abcd), 99_999_999.0);
    }

    #[test]
    fn bcd_with_a_nibble_above_nine_is_no_number() {
        let r = reg(Bcd16, Abcd);
        assert_eq!(decode(&[0x12A4], &r), Value::None);
        assert_eq!(
            invalid_bcd(&[0x12A4], &r).as_deref(),
            Some("BCD digit 0xA at nibble 2 of 0x12A4 is not a decimal digit")
        );
        assert_eq!(
            invalid_bcd(&[0xF000], &r).as_deref(),
            Some("BCD digit 0xF at nibble 0 of 0xF000 is not a decimal digit")
        );
        // Nibbles are counted in the value with the order undone.
        let r = reg(Bcd32, Cdab);
        assert_eq!(
            invalid_bcd(&[0x3B56, 0x0012], &r).as_deref(),
            Some("BCD digit 0xB at nibble 5 of 0x00123B56 is not a decimal digit")
        );
        assert_eq!(invalid_bcd(&[0x3456, 0x0012], &r), None);
        assert_eq!(invalid_bcd(&[0xFFFF], &reg(U16, Abcd)), None);
    }

    #[test]
    fn bytes_read_their_half_of_the_word() {
        let byte = |t, b| Register {
            byte: Some(b),
            ..reg(t, Abcd)
        };
        assert_eq!(
            decode(&[0xAB12], &byte(U8, Byte::High)),
            Value::Number(171.0)
        );
        assert_eq!(decode(&[0xAB12], &byte(U8, Byte::Low)), Value::Number(18.0));
        assert_eq!(
            decode(&[0xAB12], &byte(I8, Byte::High)),
            Value::Number(-85.0)
        );
        assert_eq!(decode(&[0x00FF], &byte(I8, Byte::Low)), Value::Number(-1.0));
        assert_eq!(
            decode(&[0x7F80], &byte(I8, Byte::High)),
            Value::Number(127.0)
        );
        assert_eq!(
            decode(&[0x7F80], &byte(I8, Byte::Low)),
            Value::Number(-128.0)
        );
        // Each encodes into its own byte only, so two can share a word.
        let high = encode(&Value::Number(171.0), &byte(U8, Byte::High));
        let low = encode(&Value::Number(-1.0), &byte(I8, Byte::Low));
        assert_eq!(
            (high[0], low[0], high[0] | low[0]),
            (0xAB00, 0x00FF, 0xABFF)
        );
    }

    /// "ABCDEFGH" in four registers, as each order puts it on the wire: byte
    /// swap inside each word, word swap inside each pair of registers.
    #[test]
    fn strings_in_every_order() {
        for (order, words) in [
            (Abcd, [0x4142, 0x4344, 0x4546, 0x4748]),
            (Badc, [0x4241, 0x4443, 0x4645, 0x4847]),
            (Cdab, [0x4344, 0x4142, 0x4748, 0x4546]),
            (Dcba, [0x4443, 0x4241, 0x4847, 0x4645]),
        ] {
            assert_eq!(decode_text(&words, order).0, "ABCDEFGH", "{order:?}");
        }
        // An odd last register has no partner and keeps its place.
        assert_eq!(decode_text(&[0x4344, 0x4142, 0x4500], Cdab).0, "ABCDE");
        assert_eq!(decode_text(&[0x4443, 0x4241, 0x0045], Dcba).0, "ABCDE");
    }

    #[test]
    fn encode_then_decode_gives_the_value_back() {
        for order in [Abcd, Cdab, Badc, Dcba] {
            for (t, v) in [
                (U16, 40000.0),
                (I16, -1234.0),
                (U32, 4_000_000_000.0),
                (I32, -2_000_000_000.0),
                (F32, -0.5),
                (U64, 9.0e15),
                (I64, -9.0e15),
                (F64, 1.0e-300),
            ] {
                let r = reg(t, order);
                assert_eq!(
                    decode(&encode(&Value::Number(v), &r), &r),
                    Value::Number(v),
                    "{t:?} {order:?}"
                );
            }
        }
        for order in [Abcd, Cdab, Badc, Dcba] {
            for (t, v) in [(F16, -0.3333), (Bcd32, 12_345_678.0)] {
                let r = reg(t, order);
                let back = decode(&encode(&Value::Number(v), &r), &r);
                assert_eq!(back, Value::Number(v), "{t:?} {order:?}");
            }
            for length in [3, 4] {
                let mut r = reg(String, order);
                r.length = Some(length);
                assert_eq!(
                    decode(&encode(&Value::Text("pump-7".into()), &r), &r),
                    Value::Text("pump-7".into()),
                    "{order:?} {length}"
                );
            }
        }
        for order in [Abcd, Badc] {
            let r = reg(Bcd16, order);
            assert_eq!(
                decode(&encode(&Value::Number(9876.0), &r), &r),
                Value::Number(9876.0)
            );
        }
        for (t, b, v) in [(U8, Byte::High, 200.0), (I8, Byte::Low, -100.0)] {
            let r = Register {
                byte: Some(b),
                ..reg(t, Abcd)
            };
            assert_eq!(decode(&encode(&Value::Number(v), &r), &r), Value::Number(v));
        }
    }

    #[test]
    fn bcd_is_held_to_its_digits_when_encoded() {
        assert_eq!(encode(&Value::Number(1234.4), &reg(Bcd16, Abcd)), [0x1234]);
        assert_eq!(
            encode(&Value::Number(123_456.0), &reg(Bcd16, Abcd)),
            [0x9999]
        );
        assert_eq!(encode(&Value::Number(-5.0), &reg(Bcd32, Abcd)), [0, 0]);
        assert_eq!(
            encode(&Value::Number(123_456.0), &reg(Bcd32, Cdab)),
            [0x3456, 0x0012]
        );
    }
}
