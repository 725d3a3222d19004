//! One register: name, kind, type, bit or length, order, address, scaling,
//! valid range and its own schedule. Each check below looks at one thing and
//! reports what would be valid; `register` runs them in the file's order.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::super::raw::{RawRegister, RawValid};
use super::deadband::{Inherited, Written};
use super::{Ctx, Validator, check_name};
use crate::registry::{
    Address, Byte, DataType, Register, RegisterKind, RequestLimits, ValidRange, WordOrder,
};

impl Validator<'_> {
    pub(super) fn register(
        &mut self,
        raw: RawRegister,
        at: Location,
        dctx: Ctx<'_>,
        limits: &RequestLimits,
        inherited: Inherited,
        seen: &mut HashMap<String, u64>,
    ) -> Option<Register> {
        let mut raw = raw;
        let problems = std::mem::take(&mut raw.problems);
        let Some(name) = raw.name.clone() else {
            self.problems(problems, dctx);
            self.error(
                at,
                dctx,
                "register has no `name`; every register needs a name unique within its device",
            );
            return None;
        };
        let ctx = Ctx {
            device: dctx.device,
            register: Some(&name.value),
        };
        let before = self.errors.len();
        self.problems(problems, ctx);
        self.register_name(&name, ctx, seen);
        let kind = self.kind(raw.kind.as_ref(), at, ctx);
        let data_type = self.data_type(&raw, kind, ctx);
        let at_type = raw.r#type.as_ref().map_or(at, |t| t.referenced);
        self.bits_are_bool(kind, data_type, ctx, at_type);
        let bit = self.bit(&raw, kind, data_type, ctx, at_type);
        let byte = self.byte(raw.byte.as_ref(), data_type, ctx, at_type);
        let length = self.length(&raw, data_type, limits, ctx, at_type);
        let order = match (&raw.order, data_type) {
            (None, _) => Some(WordOrder::Abcd),
            (Some(o), Some(t)) => self.order(o, t, ctx),
            (Some(_), None) => None,
        };
        let address = self.address(raw.address.as_ref(), at, ctx);
        self.fits_below_65536(address, data_type, length, ctx);
        let scale = self.scale(raw.scale.as_ref(), ctx);
        let offset = self.offset(raw.offset.as_ref(), ctx);
        let valid = self.valid(raw.valid.as_ref(), ctx);
        let deadband = self.register_deadband(
            Written {
                deadband: raw.deadband.as_ref(),
                percent: raw.deadband_percent.as_ref(),
                heartbeat: raw.heartbeat.as_ref(),
            },
            inherited,
            data_type,
            at,
            ctx,
        );
        self.timezone_without_cron(raw.timezone.as_ref(), raw.cron.as_ref(), "register", ctx);
        let schedule = self.schedule(
            raw.every.as_ref(),
            raw.cron.as_ref(),
            raw.timezone.as_ref(),
            None,
            ctx,
        );
        if self.errors.len() > before {
            return None;
        }
        Some(Register {
            name: name.value.as_str().into(),
            kind: kind?,
            address: Address(address?.value as u16),
            data_type: data_type?,
            order: order?,
            scale,
            offset,
            unit: raw.unit.map(|u| u.value.into()),
            valid,
            bit,
            byte,
            length,
            schedule: schedule.map(Box::new),
            deadband,
        })
    }

    /// A safe name, not used by an earlier register of the device.
    fn register_name(
        &mut self,
        name: &Spanned<String>,
        ctx: Ctx<'_>,
        seen: &mut HashMap<String, u64>,
    ) {
        if let Err(m) = check_name(&name.value) {
            self.error(name.referenced, ctx, m);
        }
        if let Some(first) = seen.insert(name.value.clone(), name.referenced.line()) {
            self.error(
                name.referenced,
                ctx,
                format!(
                    "duplicate register name in this device; `{}` is already used on line {first}",
                    name.value
                ),
            );
        }
    }

    /// `kind` is required.
    fn kind(
        &mut self,
        kind: Option<&Spanned<String>>,
        at: Location,
        ctx: Ctx<'_>,
    ) -> Option<RegisterKind> {
        match kind {
            None => {
                self.error(
                    at,
                    ctx,
                    format!(
                        "register has no `kind`; valid kinds: {}",
                        RegisterKind::VALID
                    ),
                );
                None
            }
            Some(k) => self.parsed::<RegisterKind>(k, ctx),
        }
    }

    /// `type`, or without it bool for bits (and `bit:`), u16 otherwise.
    fn data_type(
        &mut self,
        raw: &RawRegister,
        kind: Option<RegisterKind>,
        ctx: Ctx<'_>,
    ) -> Option<DataType> {
        match (&raw.r#type, kind, &raw.bit) {
            (Some(t), _, _) => self.parsed::<DataType>(t, ctx),
            (None, Some(k), _) if k.is_bit() => Some(DataType::Bool),
            (None, _, Some(_)) => Some(DataType::Bool),
            (None, _, None) => Some(DataType::U16),
        }
    }

    /// Coils and discrete inputs are single bits.
    fn bits_are_bool(
        &mut self,
        kind: Option<RegisterKind>,
        data_type: Option<DataType>,
        ctx: Ctx<'_>,
        at_type: Location,
    ) {
        if let (Some(k), Some(t)) = (kind, data_type)
            && k.is_bit()
            && t != DataType::Bool
        {
            self.error(
                at_type,
                ctx,
                format!(
                    "{} registers hold single bits; use `type: bool`",
                    k.as_str()
                ),
            );
        }
    }

    /// `bit: 0..15` picks one bit of a holding or input register (type bool).
    fn bit(
        &mut self,
        raw: &RawRegister,
        kind: Option<RegisterKind>,
        t: Option<DataType>,
        ctx: Ctx<'_>,
        at_type: Location,
    ) -> Option<u8> {
        match (&raw.bit, kind, t) {
            (Some(b), _, _) if !(0..=15).contains(&b.value) => {
                self.error(
                    b.referenced,
                    ctx,
                    format!(
                        "bit {} is outside 0..15 (0 is the least significant bit)",
                        b.value
                    ),
                );
                None
            }
            (Some(b), Some(k), _) if k.is_bit() => {
                self.error(b.referenced, ctx, format!("`bit` selects a bit of a 16-bit register; {} registers are single bits already", k.as_str()));
                None
            }
            (Some(b), _, Some(t)) if t != DataType::Bool => {
                self.error(
                    b.referenced,
                    ctx,
                    format!("`bit` needs `type: bool`, not {}", t.as_str()),
                );
                None
            }
            (Some(b), _, _) => Some(b.value as u8),
            (None, Some(k), Some(DataType::Bool)) if !k.is_bit() => {
                self.error(
                    at_type,
                    ctx,
                    "`type: bool` on a 16-bit register needs `bit: 0..15` to say which bit",
                );
                None
            }
            (None, _, _) => None,
        }
    }

    /// `length` (in registers) is required for strings and meaningless otherwise.
    fn length(
        &mut self,
        raw: &RawRegister,
        t: Option<DataType>,
        limits: &RequestLimits,
        ctx: Ctx<'_>,
        at_type: Location,
    ) -> Option<u16> {
        let max = i64::from(limits.max_registers);
        match (&raw.length, t) {
            (None, Some(DataType::String)) => {
                self.error(at_type, ctx, "`type: string` needs `length`: how many registers (two bytes each) the text spans");
                None
            }
            (Some(l), Some(DataType::String)) if !(1..=max).contains(&l.value) => {
                self.error(
                    l.referenced,
                    ctx,
                    format!(
                        "length {} is outside 1..{max} (a string is read in one request)",
                        l.value
                    ),
                );
                None
            }
            (Some(l), Some(DataType::String)) => Some(l.value as u16),
            (Some(l), Some(t)) => {
                self.error(
                    l.referenced,
                    ctx,
                    format!(
                        "`length` is only for `type: string`; {} has a fixed width",
                        t.as_str()
                    ),
                );
                None
            }
            _ => None,
        }
    }

    /// `byte: high|low` says which byte of the register a `u8` or `i8` is.
    /// It is required: a manual names the byte ("high byte: mode"), and a
    /// default would read the other one without a word of warning.
    fn byte(
        &mut self,
        byte: Option<&Spanned<String>>,
        t: Option<DataType>,
        ctx: Ctx<'_>,
        at_type: Location,
    ) -> Option<Byte> {
        let small = matches!(t, Some(DataType::U8 | DataType::I8));
        match (byte, t) {
            (Some(b), Some(t)) if !small => {
                self.error(
                    b.referenced,
                    ctx,
                    format!(
                        "`byte` is only for `type: u8` or `type: i8`; {} uses the whole register",
                        t.as_str()
                    ),
                );
                None
            }
            (Some(b), _) => self.parsed::<Byte>(b, ctx),
            (None, Some(t)) if small => {
                self.error(
                    at_type,
                    ctx,
                    format!(
                        "`type: {}` needs `byte: high` (bits 15..8, first on the wire) or `byte: low` (bits 7..0)",
                        t.as_str()
                    ),
                );
                None
            }
            (None, _) => None,
        }
    }

    /// Orders must fit the type (`DataType::check_order`).
    fn order(&mut self, o: &Spanned<String>, t: DataType, ctx: Ctx<'_>) -> Option<WordOrder> {
        let checked = WordOrder::parse(&o.value)
            .and_then(|(order, named_64)| t.check_order(order, named_64).map(|()| order));
        match checked {
            Ok(order) => Some(order),
            Err(m) => {
                self.error(o.referenced, ctx, m);
                None
            }
        }
    }

    /// `address` is required, a 0-based protocol address.
    fn address<'r>(
        &mut self,
        address: Option<&'r Spanned<i64>>,
        at: Location,
        ctx: Ctx<'_>,
    ) -> Option<&'r Spanned<i64>> {
        match address {
            None => {
                self.error(
                    at,
                    ctx,
                    "register has no `address`; give the 0-based protocol address (0..65535)",
                );
                None
            }
            Some(a) if !(0..=65535).contains(&a.value) => {
                self.error(
                    a.referenced,
                    ctx,
                    format!(
                        "address {} is outside 0..65535 (0-based protocol addresses)",
                        a.value
                    ),
                );
                None
            }
            Some(a) => Some(a),
        }
    }

    /// Every word of the value must have an address.
    fn fits_below_65536(
        &mut self,
        address: Option<&Spanned<i64>>,
        data_type: Option<DataType>,
        length: Option<u16>,
        ctx: Ctx<'_>,
    ) {
        let (Some(a), Some(t)) = (address, data_type) else {
            return;
        };
        let width = if t == DataType::String {
            length.unwrap_or(1)
        } else {
            t.width()
        };
        let last = a.value + i64::from(width) - 1;
        if last > 65535 {
            self.error(
                a.referenced,
                ctx,
                format!(
                    "address {} + {} registers of {} runs past 65535 (last address would be {last}); move the register down",
                    a.value,
                    width,
                    t.as_str()
                ),
            );
        }
    }

    /// `scale` (1 when left out) must keep the value visible.
    fn scale(&mut self, scale: Option<&Spanned<f64>>, ctx: Ctx<'_>) -> f64 {
        if let Some(s) = scale
            && (!s.value.is_finite() || s.value == 0.0)
        {
            self.error(
                s.referenced,
                ctx,
                format!(
                    "scale {} would hide the value; use a finite, non-zero number (1 for none)",
                    s.value
                ),
            );
        }
        scale.map_or(1.0, |s| s.value)
    }

    /// `offset` (0 when left out) must be finite.
    fn offset(&mut self, offset: Option<&Spanned<f64>>, ctx: Ctx<'_>) -> f64 {
        if let Some(o) = offset
            && !o.value.is_finite()
        {
            self.error(
                o.referenced,
                ctx,
                "offset must be a finite number (0 for none)",
            );
        }
        offset.map_or(0.0, |o| o.value)
    }

    /// `valid: {min, max}`, either bound optional, min not above max.
    fn valid(&mut self, valid: Option<&Spanned<RawValid>>, ctx: Ctx<'_>) -> ValidRange {
        let range = valid.map_or(ValidRange::default(), |v| {
            ValidRange::new(v.value.min, v.value.max)
        });
        if let (Some(v), Some(min), Some(max)) = (valid, range.min(), range.max())
            && min > max
        {
            self.error(
                v.referenced,
                ctx,
                format!("valid range has min {min} above max {max}"),
            );
        }
        range
    }
}
