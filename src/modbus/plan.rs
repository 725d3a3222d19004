//! Turns a device's registers into the fewest read requests: registers of the
//! same kind that sit close together are read in one request, up to the
//! protocol limit, and a multi-word value is never split across two requests.

use crate::registry::{Register, RegisterKind};

/// Most registers one read may carry (Modbus application protocol, 6.3/6.4: 125).
pub const MAX_REGISTERS_PER_REQUEST: u16 = 125;
/// Most coils or discrete inputs one read may carry (6.1/6.2: 2000).
pub const MAX_BITS_PER_REQUEST: u16 = 2000;
/// Largest hole of unconfigured addresses read through to merge two requests.
pub const MAX_GAP: u16 = 10;

/// One read request and the registers whose values it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// Indices into the device's register list.
    pub registers: Vec<usize>,
}

impl ReadRequest {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Plans the reads for `registers` (all of one device and one schedule).
pub fn plan(registers: &[Register]) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].kind, registers[i].address));
    let mut out: Vec<ReadRequest> = Vec::new();
    for i in order {
        let r = &registers[i];
        let start = u32::from(r.address.0);
        let end = start + u32::from(r.width());
        let limit = u32::from(if r.kind.is_bit() {
            MAX_BITS_PER_REQUEST
        } else {
            MAX_REGISTERS_PER_REQUEST
        });
        if let Some(last) = out.last_mut()
            && last.kind == r.kind
            && start <= last.end() + u32::from(MAX_GAP)
            && end.max(last.end()) - u32::from(last.start) <= limit
        {
            last.count = (end.max(last.end()) - u32::from(last.start)) as u16;
            last.registers.push(i);
            continue;
        }
        out.push(ReadRequest {
            kind: r.kind,
            start: r.address.0,
            count: r.width(),
            registers: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Address, DataType, ValidRange, WordOrder};

    fn reg(kind: RegisterKind, address: u16, data_type: DataType) -> Register {
        Register {
            id: 0,
            name: format!("r{address}"),
            kind,
            address: Address(address),
            data_type,
            order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            valid: ValidRange::default(),
        }
    }

    #[test]
    fn near_registers_of_one_kind_share_a_request() {
        let regs = vec![
            reg(RegisterKind::Holding, 10, DataType::F32),
            reg(RegisterKind::Holding, 0, DataType::U16),
            reg(RegisterKind::Input, 0, DataType::U16),
            reg(RegisterKind::Holding, 40, DataType::U16),
        ];
        let p = plan(&regs);
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].kind, p[0].start, p[0].count, p[0].registers.clone()),
            (RegisterKind::Holding, 0, 12, vec![1, 0])
        );
        assert_eq!((p[1].start, p[1].count), (40, 1));
        assert_eq!(p[2].kind, RegisterKind::Input);
    }

    #[test]
    fn contiguous_u32_values_split_only_at_value_borders() {
        let regs: Vec<_> = (0..108u16)
            .map(|i| reg(RegisterKind::Holding, i * 2, DataType::U32))
            .collect();
        let p = plan(&regs);
        assert_eq!(p.iter().map(|r| r.count).collect::<Vec<_>>(), vec![124, 92]);
        assert!(p.iter().all(|r| r.start % 2 == 0));
        let covered: usize = p.iter().map(|r| r.registers.len()).sum();
        assert_eq!(covered, 108);
    }

    #[test]
    fn registers_at_the_top_of_the_address_space_are_planned() {
        let regs = vec![
            reg(RegisterKind::Holding, 65534, DataType::U32),
            reg(RegisterKind::Holding, 65530, DataType::U16),
        ];
        let p = plan(&regs);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count), (65530, 6));
    }
}
