//! Turns a device's registers into the fewest read requests: registers of the
//! same kind that sit close together are read in one request, up to the
//! protocol limit, and a multi-word value is never split across two requests.

use crate::registry::{Register, RegisterKind, RequestLimits};

/// Most registers one read may carry (Modbus application protocol, 6.3/6.4: 125).
pub const MAX_REGISTERS_PER_REQUEST: u16 = 125;
/// Most coils or discrete inputs one read may carry (6.1/6.2: 2000).
pub const MAX_BITS_PER_REQUEST: u16 = 2000;

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
/// Every register must fit in one request under `limits` (config validation
/// guarantees it); registers that share addresses (bit fields of one word)
/// share the read.
pub fn plan(registers: &[Register], limits: &RequestLimits) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].kind, registers[i].address));
    let mut out: Vec<ReadRequest> = Vec::new();
    for i in order {
        let r = &registers[i];
        let start = u32::from(r.address.0);
        let end = start + u32::from(r.width());
        let limit = u32::from(if r.kind.is_bit() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        if let Some(last) = out.last_mut()
            && last.kind == r.kind
            && start <= last.end() + u32::from(limits.max_gap)
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

/// Plans the reads for `members` (indices into `registers`: one poll group);
/// the requests refer to registers by their index in `registers`.
pub fn plan_group(
    registers: &[Register],
    members: &[usize],
    limits: &RequestLimits,
) -> Vec<ReadRequest> {
    let subset: Vec<Register> = members.iter().map(|&i| registers[i].clone()).collect();
    let mut requests = plan(&subset, limits);
    for req in &mut requests {
        req.registers.iter_mut().for_each(|i| *i = members[*i]);
        // A plan lives as long as its device is polled: at 10,000 devices
        // the room left by growing these lists was 1.5 MB.
        req.registers.shrink_to_fit();
    }
    requests.shrink_to_fit();
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DataType;

    fn reg(kind: RegisterKind, address: u16, data_type: DataType) -> Register {
        Register::test(kind, address, data_type)
    }

    fn shape(p: &[ReadRequest]) -> Vec<(u16, u16)> {
        p.iter().map(|r| (r.start, r.count)).collect()
    }

    const DEFAULT: RequestLimits = RequestLimits::DEFAULT;

    #[test]
    fn near_registers_of_one_kind_share_a_request() {
        let regs = vec![
            reg(RegisterKind::Holding, 10, DataType::F32),
            reg(RegisterKind::Holding, 0, DataType::U16),
            reg(RegisterKind::Input, 0, DataType::U16),
            reg(RegisterKind::Holding, 40, DataType::U16),
        ];
        let p = plan(&regs, &DEFAULT);
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
        let p = plan(&regs, &DEFAULT);
        assert_eq!(shape(&p), vec![(0, 124), (124, 92)]);
        let covered: usize = p.iter().map(|r| r.registers.len()).sum();
        assert_eq!(covered, 108);
    }

    #[test]
    fn registers_at_the_top_of_the_address_space_are_planned() {
        let regs = vec![
            reg(RegisterKind::Holding, 65532, DataType::U64),
            reg(RegisterKind::Holding, 65530, DataType::U16),
        ];
        assert_eq!(shape(&plan(&regs, &DEFAULT)), vec![(65530, 6)]);
    }

    #[test]
    fn a_device_limited_to_40_registers_gets_requests_of_at_most_40() {
        let regs: Vec<_> = (0..50u16)
            .map(|i| reg(RegisterKind::Input, i * 2, DataType::F32))
            .collect();
        let limits = RequestLimits {
            max_registers: 40,
            ..DEFAULT
        };
        assert_eq!(
            shape(&plan(&regs, &limits)),
            vec![(0, 40), (40, 40), (80, 20)]
        );
    }

    #[test]
    fn gaps_are_read_through_only_up_to_max_gap() {
        let regs = vec![
            reg(RegisterKind::Holding, 0, DataType::U16),
            reg(RegisterKind::Holding, 6, DataType::U16),
        ];
        assert_eq!(shape(&plan(&regs, &DEFAULT)), vec![(0, 7)]);
        let no_gaps = RequestLimits {
            max_gap: 0,
            ..DEFAULT
        };
        assert_eq!(shape(&plan(&regs, &no_gaps)), vec![(0, 1), (6, 1)]);
        let adjacent = vec![
            reg(RegisterKind::Holding, 0, DataType::U16),
            reg(RegisterKind::Holding, 1, DataType::U16),
        ];
        assert_eq!(shape(&plan(&adjacent, &no_gaps)), vec![(0, 2)]);
    }

    #[test]
    fn bit_fields_of_one_word_share_its_read() {
        let mut a = reg(RegisterKind::Holding, 5, DataType::Bool);
        a.bit = Some(0);
        let mut b = a.clone();
        b.bit = Some(9);
        let p = plan(&[a, b], &DEFAULT);
        assert_eq!(shape(&p), vec![(5, 1)]);
        assert_eq!(p[0].registers, vec![0, 1]);
    }

    #[test]
    fn coils_use_the_bit_limit() {
        let regs: Vec<_> = (0..3u16)
            .map(|i| reg(RegisterKind::Coil, i * 1000, DataType::Bool))
            .collect();
        let limits = RequestLimits {
            max_gap: 2000,
            ..DEFAULT
        };
        assert_eq!(shape(&plan(&regs, &limits)), vec![(0, 1001), (2000, 1)]);
    }
}
