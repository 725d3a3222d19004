//! The rules a stored register must follow beyond each column's own range,
//! as devices.yaml's validation (src/config/validate/register.rs) applies
//! them: the registry loader checks every row with them, and
//! migrations/postgres/0009 (constraints) and migrations/sqlite/0009
//! (triggers) make the database refuse rows that break them.

use super::{DataType, Register};

/// Whether `reg` (its order named in the 64-bit form when `named_64`) can
/// be polled as stored.
pub(super) fn check_shape(reg: &Register, named_64: bool) -> Result<(), String> {
    let t = reg.data_type;
    if !reg.scale.is_finite() || reg.scale == 0.0 {
        return Err(format!(
            "scale {} would hide the value; use a finite, non-zero number",
            reg.scale
        ));
    }
    if !reg.offset.is_finite() {
        return Err(format!("offset {} must be a finite number", reg.offset));
    }
    if let (Some(min), Some(max)) = (reg.valid.min(), reg.valid.max())
        && min > max
    {
        return Err(format!("valid range has min {min} above max {max}"));
    }
    if reg.length.is_some() && t != DataType::String {
        return Err(format!(
            "length is only for type string; {} has a fixed width",
            t.as_str()
        ));
    }
    if reg.bit.is_some() && (t != DataType::Bool || reg.kind.is_bit()) {
        return Err("bit selects a bit of a holding or input register of type bool".into());
    }
    if reg.byte.is_some() != matches!(t, DataType::U8 | DataType::I8) {
        return Err(format!(
            "byte (high or low) is required for types u8 and i8 and only for them, not {}",
            t.as_str()
        ));
    }
    t.check_order(reg.order, named_64)
        .map_err(|m| format!("word_order {m}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Byte, RegisterKind, WordOrder};

    fn reg(kind: RegisterKind, t: DataType, order: WordOrder) -> Register {
        Register::plain("r", kind, 0, t, order)
    }

    #[test]
    fn registers_devices_yaml_accepts_pass() {
        let mut s = reg(RegisterKind::Holding, DataType::String, WordOrder::Badc);
        s.length = Some(4);
        let mut b = reg(RegisterKind::Input, DataType::Bool, WordOrder::Abcd);
        b.bit = Some(3);
        let mut swapped_text = reg(RegisterKind::Holding, DataType::String, WordOrder::Dcba);
        swapped_text.length = Some(6);
        let mut high = reg(RegisterKind::Holding, DataType::I8, WordOrder::Abcd);
        high.byte = Some(Byte::High);
        for (r, named_64) in [
            (
                reg(RegisterKind::Holding, DataType::F32, WordOrder::Cdab),
                false,
            ),
            (
                reg(RegisterKind::Holding, DataType::F64, WordOrder::Dcba),
                true,
            ),
            (
                reg(RegisterKind::Coil, DataType::Bool, WordOrder::Abcd),
                false,
            ),
            (s, false),
            (b, false),
            (swapped_text, false),
            (high, false),
            (
                reg(RegisterKind::Input, DataType::Bcd32, WordOrder::Cdab),
                false,
            ),
            (
                reg(RegisterKind::Input, DataType::F16, WordOrder::Badc),
                false,
            ),
        ] {
            assert_eq!(check_shape(&r, named_64), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn rows_devices_yaml_would_refuse_are_refused_with_the_reason() {
        let mut scale = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        scale.scale = f64::NAN;
        let mut offset = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        offset.offset = f64::INFINITY;
        let mut zero = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        zero.scale = 0.0;
        let mut range = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        range.valid = crate::registry::ValidRange::new(Some(10.0), Some(1.0));
        let mut length = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        length.length = Some(2);
        let mut bit = reg(RegisterKind::Coil, DataType::Bool, WordOrder::Abcd);
        bit.bit = Some(1);
        let mut byte_on_u16 = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        byte_on_u16.byte = Some(Byte::Low);
        let mut swapped_byte = reg(RegisterKind::Holding, DataType::U8, WordOrder::Badc);
        swapped_byte.byte = Some(Byte::Low);
        for (r, named_64, want) in [
            (scale, false, "scale NaN"),
            (offset, false, "offset inf"),
            (zero, false, "scale 0"),
            (range, false, "min 10 above max 1"),
            (length, false, "length is only for type string"),
            (bit, false, "bit selects"),
            (byte_on_u16, false, "byte (high or low) is required"),
            (
                reg(RegisterKind::Holding, DataType::U8, WordOrder::Abcd),
                false,
                "byte (high or low) is required",
            ),
            (swapped_byte, false, "a byte has no byte order"),
            (
                reg(RegisterKind::Holding, DataType::Bcd16, WordOrder::Cdab),
                false,
                "swaps words",
            ),
            (
                reg(RegisterKind::Holding, DataType::String, WordOrder::Cdab),
                true,
                "64-bit order",
            ),
            (
                reg(RegisterKind::Holding, DataType::F32, WordOrder::Cdab),
                true,
                "64-bit order",
            ),
            (
                reg(RegisterKind::Holding, DataType::U16, WordOrder::Dcba),
                false,
                "swaps words",
            ),
        ] {
            let e = check_shape(&r, named_64).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }
}
