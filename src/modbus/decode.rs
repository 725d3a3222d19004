//! Words on the wire ↔ numbers. Modbus registers are 16-bit big-endian words;
//! 32-bit values span two words whose order devices disagree on, so the order
//! is configured per register (`ABCD` = high word first, `CDAB` = low word first).
//! The encoder exists for the simulator, and keeps decoder and simulator honest
//! with each other through round-trip tests.

use crate::registry::{DataType, WordOrder};

/// Decodes the words of one register into its raw number (before scale and
/// offset). `words` must hold exactly `data_type.width()` words.
pub fn decode(words: &[u16], data_type: DataType, order: WordOrder) -> f64 {
    debug_assert_eq!(words.len(), usize::from(data_type.width()));
    match data_type {
        DataType::Bool => f64::from(u8::from(words[0] != 0)),
        DataType::U16 => f64::from(words[0]),
        DataType::I16 => f64::from(words[0] as i16),
        DataType::U32 => f64::from(join32(words, order)),
        DataType::I32 => f64::from(join32(words, order) as i32),
        DataType::F32 => f64::from(f32::from_bits(join32(words, order))),
    }
}

/// Encodes a raw number into the words a device would send. Integers are
/// rounded and saturated to the type's range.
pub fn encode(raw: f64, data_type: DataType, order: WordOrder) -> Vec<u16> {
    match data_type {
        DataType::Bool => vec![u16::from(raw != 0.0)],
        DataType::U16 => vec![raw.round() as u16],
        DataType::I16 => vec![raw.round() as i16 as u16],
        DataType::U32 => split32(raw.round() as u32, order),
        DataType::I32 => split32(raw.round() as i32 as u32, order),
        DataType::F32 => split32((raw as f32).to_bits(), order),
    }
}

fn join32(w: &[u16], order: WordOrder) -> u32 {
    let (hi, lo) = match order {
        WordOrder::Abcd => (w[0], w[1]),
        WordOrder::Cdab => (w[1], w[0]),
    };
    (u32::from(hi) << 16) | u32::from(lo)
}

fn split32(v: u32, order: WordOrder) -> Vec<u16> {
    let (hi, lo) = ((v >> 16) as u16, v as u16);
    match order {
        WordOrder::Abcd => vec![hi, lo],
        WordOrder::Cdab => vec![lo, hi],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hand_written_word_patterns() {
        use DataType::*;
        use WordOrder::*;
        assert_eq!(decode(&[0xFFFF], U16, Abcd), 65535.0);
        assert_eq!(decode(&[0xFFFF], I16, Abcd), -1.0);
        assert_eq!(decode(&[0x0001, 0x0002], U32, Abcd), 65538.0);
        assert_eq!(decode(&[0x0002, 0x0001], U32, Cdab), 65538.0);
        assert_eq!(decode(&[0xFFFF, 0xFFFE], I32, Abcd), -2.0);
        assert_eq!(decode(&[0xFFFE, 0xFFFF], I32, Cdab), -2.0);
        // 123.456f32 = 0x42F6E979
        assert_eq!(decode(&[0x42F6, 0xE979], F32, Abcd), f64::from(123.456f32));
        assert_eq!(decode(&[0xE979, 0x42F6], F32, Cdab), f64::from(123.456f32));
    }

    #[test]
    fn encode_then_decode_gives_the_value_back() {
        use DataType::*;
        for order in [WordOrder::Abcd, WordOrder::Cdab] {
            for (t, v) in [
                (U16, 40000.0),
                (I16, -1234.0),
                (U32, 4_000_000_000.0),
                (I32, -2_000_000_000.0),
                (F32, -0.5),
                (Bool, 1.0),
            ] {
                assert_eq!(decode(&encode(v, t, order), t, order), v, "{t:?} {order:?}");
            }
        }
    }
}
