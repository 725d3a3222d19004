//! Words on the wire ↔ values. Modbus registers are 16-bit big-endian words;
//! wider values span several words, and devices disagree on their order, so the
//! order is configured per register as two independent swaps: of the words
//! (`CDAB`, `GHEFCDAB`) and of the bytes inside each word (`BADC`, `BADCFEHG`);
//! `DCBA`/`HGFEDCBA` do both. Decoding first undoes the swaps, giving the
//! big-endian `ABCD…` form, then reads the type.
//!
//! The encoder exists for the simulator; round-trip tests keep the two honest
//! with each other, and hand-written byte patterns keep both honest with devices.

use crate::reading::Value;
use crate::registry::{DataType, Register, WordOrder};

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
        DataType::String => Value::Text(decode_text(words, reg.order).0),
    }
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
    text(&to_big_endian(words, order))
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
        DataType::String => pack_text(value, reg.width()),
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
        let mut r = reg(String, Badc);
        r.length = Some(4);
        assert_eq!(
            decode(&encode(&Value::Text("pump-7".into()), &r), &r),
            Value::Text("pump-7".into())
        );
    }
}
