//! `regpoll read`: one read of a device's registers, printed as a table, for
//! checking a device by hand.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::output::{fail_if_bad, print_readings};
use crate::cli::{LinkArgs, ReadArgs};
use crate::modbus::endpoint::Endpoint;
use crate::poller::DevicePoller;
use crate::reading::{PollReport, Quality};
use crate::registry::{
    BAUD_MAX, BAUD_MIN, Byte, DataBits, DataType, Device, Register, RegisterKind, RequestLimits,
    Schedule, SerialLine, StopBits, Transport, TransportKind, UnitId, WordOrder, check_rtu_unit,
};

pub(super) async fn read(args: ReadArgs) -> anyhow::Result<()> {
    let (host, port, transport) = link(&args.link)?;
    if transport.is_rtu() {
        check_rtu_unit(args.unit).map_err(|m| anyhow::anyhow!("--unit: {m}"))?;
    }
    let (kind, start) = kind_and_start(&args)?;
    let data_type = data_type(&args, kind)?;
    let orders: Vec<WordOrder> = if args.guess_order {
        anyhow::ensure!(
            data_type.width() > 1,
            "--guess-order compares the orders of a 32- or 64-bit value (u32, i32, f32, bcd32, u64, i64, f64); --type {} has one word (use --order BADC to swap its bytes)",
            data_type.as_str()
        );
        ORDERS.to_vec()
    } else {
        vec![WordOrder::parse(&args.order).map_err(anyhow::Error::msg)?.0]
    };
    let registers = registers(kind, start, args.count, data_type, &orders)?;
    let device = device(&host, port, transport, &args, registers);
    let endpoint = Endpoint::for_device(&device);
    let report = DevicePoller::new(Arc::new(device), Arc::new(endpoint))
        .poll()
        .await;
    if args.guess_order {
        print_orders(&report, data_type);
        return fail_when_bad(&report);
    }
    println!(
        "{:<16} {:>6} {:>14}{:<6} {:<9}DETAIL",
        "REGISTER", "ADDR", "VALUE", "", "QUALITY"
    );
    print_readings(&report, "");
    fail_when_bad(&report)
}

/// Where to read: HOST[:PORT] over TCP (Modbus or RTU frames), or a serial
/// line; every flag that does not fit the others is refused, never ignored.
pub(super) fn link(args: &LinkArgs) -> anyhow::Result<(String, u16, Transport)> {
    let kind = match (&args.transport, &args.serial) {
        (Some(t), _) => t.parse().map_err(anyhow::Error::msg)?,
        (None, Some(_)) => TransportKind::Rtu,
        (None, None) => TransportKind::Tcp,
    };
    let line_flags = [
        ("--baud", args.baud.is_some()),
        ("--parity", args.parity.is_some()),
        ("--data-bits", args.data_bits.is_some()),
        ("--stop-bits", args.stop_bits.is_some()),
    ];
    let (host, port, transport) = match (kind, &args.endpoint, &args.serial) {
        (TransportKind::Rtu, Some(e), Some(_)) => anyhow::bail!(
            "give either HOST[:PORT] ({e}) or --serial PATH, not both: a serial device has no address"
        ),
        (TransportKind::Rtu, _, None) => {
            anyhow::bail!(
                "--transport rtu reads a serial line: add --serial PATH, e.g. --serial /dev/ttyUSB0"
            )
        }
        (TransportKind::Rtu, None, Some(path)) => (
            String::new(),
            0,
            Transport::Rtu(Box::new(serial_line(path, args)?)),
        ),
        (_, _, Some(_)) => anyhow::bail!(
            "--serial is for transport rtu, not {}; leave out --transport, or give HOST[:PORT] instead of --serial",
            args.transport.as_deref().unwrap_or("tcp")
        ),
        (_, None, None) => anyhow::bail!(
            "say where to read: HOST[:PORT] of the device or gateway, or --serial PATH for a serial line"
        ),
        (k, Some(e), None) => {
            if let Some((flag, _)) = line_flags.iter().find(|(_, set)| *set) {
                anyhow::bail!("{flag} sets up a serial line; it needs --serial PATH");
            }
            let (host, port) = host_port(e)?;
            let transport = if k == TransportKind::Tcp {
                Transport::Tcp
            } else {
                Transport::RtuOverTcp
            };
            (host, port, transport)
        }
    };
    Ok((host, port, transport))
}

/// The line's settings from the flags, the defaults for the ones left out.
fn serial_line(path: &str, args: &LinkArgs) -> anyhow::Result<SerialLine> {
    let mut line = SerialLine::new(path);
    if let Some(baud) = args.baud {
        anyhow::ensure!(
            (BAUD_MIN..=BAUD_MAX).contains(&baud),
            "--baud {baud} is outside {BAUD_MIN}..{BAUD_MAX}"
        );
        line.baud = baud;
    }
    if let Some(p) = &args.parity {
        line.parity = p.parse().map_err(anyhow::Error::msg)?;
    }
    if let Some(b) = args.data_bits {
        line.data_bits = DataBits::of(b.into()).map_err(anyhow::Error::msg)?;
    }
    if let Some(b) = args.stop_bits {
        line.stop_bits = StopBits::of(b.into()).map_err(anyhow::Error::msg)?;
    }
    Ok(line)
}

/// HOST or HOST:PORT; port 502 when left out.
pub(super) fn host_port(endpoint: &str) -> anyhow::Result<(String, u16)> {
    Ok(match endpoint.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>()
                .with_context(|| format!("`{p}` is not a port"))?,
        ),
        None => (endpoint.to_string(), 502),
    })
}

fn kind_and_start(args: &ReadArgs) -> anyhow::Result<(RegisterKind, u16)> {
    Ok(match (args.holding, args.input, args.coil, args.discrete) {
        (Some(a), _, _, _) => (RegisterKind::Holding, a),
        (_, Some(a), _, _) => (RegisterKind::Input, a),
        (_, _, Some(a), _) => (RegisterKind::Coil, a),
        (_, _, _, Some(a)) => (RegisterKind::Discrete, a),
        _ => anyhow::bail!("say what to read: --holding, --input, --coil or --discrete ADDR"),
    })
}

/// Bits are always bool; registers take a number type.
fn data_type(args: &ReadArgs, kind: RegisterKind) -> anyhow::Result<DataType> {
    let data_type: DataType = if kind.is_bit() {
        DataType::Bool
    } else {
        args.data_type.parse().map_err(anyhow::Error::msg)?
    };
    if !kind.is_bit() && matches!(data_type, DataType::Bool | DataType::String) {
        anyhow::bail!(
            "--type {} is not readable this way; use a number type (u16 … f64), or --coil/--discrete for bits",
            data_type.as_str()
        );
    }
    Ok(data_type)
}

/// The four orders `--guess-order` compares, in the order of its columns.
const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];

/// `--guess-order`'s table: one row per address, one column per order, the
/// value in each (or `bad`), then why a value was bad when one was.
fn print_orders(report: &PollReport, data_type: DataType) {
    let mut line = format!("{:<16}", "REGISTER");
    for order in ORDERS {
        line.push_str(&format!(" {:>24}", order.name_for(data_type)));
    }
    println!("{line}");
    let registers = &report.device.registers;
    let mut details = Vec::new();
    for row in report.readings.chunks(ORDERS.len()) {
        let Some(first) = row.first() else { continue };
        let name = registers[first.index].name.split(' ').next().unwrap_or("");
        let mut line = format!("{name:<16}");
        for r in row {
            let cell = if r.quality == Quality::Bad {
                "bad".to_string()
            } else {
                r.value.for_people()
            };
            line.push_str(&format!(" {cell:>24}"));
            if let Some(d) = &r.detail {
                details.push(format!("{}: {d}", registers[r.index].name));
            }
        }
        println!("{line}");
    }
    for d in details {
        println!("  {d}");
    }
}

/// `count` values of `data_type` side by side from `start`, each read in
/// every one of `orders` (one order but for `--guess-order`).
fn registers(
    kind: RegisterKind,
    start: u16,
    count: u16,
    data_type: DataType,
    orders: &[WordOrder],
) -> anyhow::Result<Vec<Register>> {
    let width = u32::from(data_type.width());
    let last = u32::from(start) + u32::from(count.max(1)) * width - 1;
    anyhow::ensure!(
        last <= 65535,
        "{} values of {} from {start} run past address 65535",
        count,
        data_type.as_str()
    );
    // A u8 or i8 is read as both bytes of each word, high first: which one
    // the device means is what the reader is finding out.
    let bytes: &[Option<Byte>] = if matches!(data_type, DataType::U8 | DataType::I8) {
        &[Some(Byte::High), Some(Byte::Low)]
    } else {
        &[None]
    };
    let several = orders.len() > 1;
    Ok((0..u32::from(count.max(1)))
        .flat_map(|i| {
            let address = (u32::from(start) + i * width) as u16;
            bytes.iter().flat_map(move |&byte| {
                orders.iter().map(move |&order| {
                    let mut name = match byte {
                        Some(b) => format!("{}[{address}].{}", kind.as_str(), b.as_str()),
                        None => format!("{}[{address}]", kind.as_str()),
                    };
                    if several {
                        name.push(' ');
                        name.push_str(order.name_for(data_type));
                    }
                    Register {
                        byte,
                        ..Register::plain(name, kind, address, data_type, order)
                    }
                })
            })
        })
        .collect())
}

/// A device made up for this one read: no retries, the timeout on both the
/// connect and the request.
fn device(
    host: &str,
    port: u16,
    transport: Transport,
    args: &ReadArgs,
    registers: Vec<Register>,
) -> Device {
    Device {
        id: 0,
        name: "read".into(),
        host: host.to_string(),
        port,
        unit_id: UnitId(args.unit),
        transport,
        active: true,
        schedule: Schedule::every(Duration::from_secs(1)),
        timeout: args.timeout,
        limits: RequestLimits {
            connect_timeout: args.timeout,
            retries: 0,
            log_frames: args.log_frames.unwrap_or_default(),
            ..RequestLimits::DEFAULT
        },
        tags: Default::default(),
        tenant: None,
        registers: registers.into(),
        register_ids: Box::default(),
    }
}

/// A script checking a device must be able to tell a failed read from a
/// good one without parsing the table: the table stays, the status fails.
fn fail_when_bad(report: &PollReport) -> anyhow::Result<()> {
    let bad = report
        .readings
        .iter()
        .filter(|r| r.quality == Quality::Bad)
        .count();
    let detail = report.error.as_deref().unwrap_or("no value");
    fail_if_bad(bad, report.readings.len(), detail)
}
