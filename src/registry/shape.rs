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
    if let (Some(min), Some(max)) = (reg.valid.min, reg.valid.max)
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
    let words = t.width();
    if named_64 && words != 4 {
        return Err(format!(
            "word_order {} is a 64-bit order; for {} use {}",
            reg.order.name_for(DataType::F64),
            t.as_str(),
            reg.order.as_str()
        ));
    }
    if reg.order.swaps_words() && (words == 1 || t == DataType::String) {
        return Err(format!(
            "word_order {} swaps words, but {} has one word; use ABCD or BADC",
            reg.order.as_str(),
            t.as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegisterKind, WordOrder};

    fn reg(kind: RegisterKind, t: DataType, order: WordOrder) -> Register {
        Register::plain("r", kind, 0, t, order)
    }

    #[test]
    fn registers_devices_yaml_accepts_pass() {
        let mut s = reg(RegisterKind::Holding, DataType::String, WordOrder::Badc);
        s.length = Some(4);
        let mut b = reg(RegisterKind::Input, DataType::Bool, WordOrder::Abcd);
        b.bit = Some(3);
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
        range.valid.min = Some(10.0);
        range.valid.max = Some(1.0);
        let mut length = reg(RegisterKind::Holding, DataType::U16, WordOrder::Abcd);
        length.length = Some(2);
        let mut bit = reg(RegisterKind::Coil, DataType::Bool, WordOrder::Abcd);
        bit.bit = Some(1);
        for (r, named_64, want) in [
            (scale, false, "scale NaN"),
            (offset, false, "offset inf"),
            (zero, false, "scale 0"),
            (range, false, "min 10 above max 1"),
            (length, false, "length is only for type string"),
            (bit, false, "bit selects"),
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
