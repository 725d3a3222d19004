//! A Modbus simulator that serves the devices of a devices.yaml, each
//! endpoint over its transport (Modbus TCP, RTU over TCP, or RTU on a
//! pseudo-terminal standing in for the serial line), used by `regpoll
//! simulate`, `regpoll demo`, the tests and the benchmarks.
//!
//! Values change once per second and are a pure function of the device, the
//! register and the Unix second ([`expected_value`]), so a test can compute
//! what any reading should hold from its timestamp alone. Values are encoded
//! with each register's type and order, exactly as a device would send them.

mod answer;
pub mod fault;
pub mod log;
mod rtu;
mod wire;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::modbus::decode::{decode, encode};
use crate::reading::Value;
use crate::registry::{DataType, Device, Register, RegisterKind, Transport};
use answer::Answer;
pub use fault::{FaultAction, SimFault};
pub use log::{Request, RequestLog};

/// Where the simulator listens for each endpoint of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// On each device's own host and port, as a real device would.
    AsConfigured,
    /// Each endpoint on its own free port of 127.0.0.1 (tests, the demo).
    Ephemeral,
}

/// A running simulator. Dropping it stops every endpoint.
pub struct Simulator {
    /// Configured `host:port` → the address actually listened on.
    addrs: HashMap<String, SocketAddr>,
    /// Configured serial path → the pseudo-terminal a client opens instead.
    ptys: HashMap<String, PathBuf>,
    tasks: Vec<JoinHandle<()>>,
    log: Option<Arc<RequestLog>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Simulator {
    /// Starts serving `devices`: one listener per distinct endpoint, each unit
    /// id answering for its device's registers.
    pub async fn start(devices: &[Device], bind: Bind) -> io::Result<Simulator> {
        Self::start_with_faults(devices, bind, Vec::new()).await
    }

    /// Like [`Simulator::start`], with devices (or registers) misbehaving as `faults` say.
    pub async fn start_with_faults(
        devices: &[Device],
        bind: Bind,
        faults: Vec<SimFault>,
    ) -> io::Result<Simulator> {
        Self::serve(devices, bind, faults, None).await
    }

    /// Like [`Simulator::start_with_faults`], recording every request served
    /// in `log` (see [`RequestLog`]; also reachable as
    /// [`Simulator::request_log`]).
    pub async fn start_with_log(
        devices: &[Device],
        bind: Bind,
        faults: Vec<SimFault>,
        log: Arc<RequestLog>,
    ) -> io::Result<Simulator> {
        Self::serve(devices, bind, faults, Some(log)).await
    }

    /// The log of the requests served, when started with one.
    pub fn request_log(&self) -> Option<&Arc<RequestLog>> {
        self.log.as_ref()
    }

    async fn serve(
        devices: &[Device],
        bind: Bind,
        faults: Vec<SimFault>,
        log: Option<Arc<RequestLog>>,
    ) -> io::Result<Simulator> {
        let mut scoped: HashMap<String, Vec<fault::Scoped>> = HashMap::new();
        for (endpoint, f) in fault::resolve(&faults, devices)
            .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?
        {
            scoped.entry(endpoint).or_default().push(f);
        }
        let mut by_endpoint: HashMap<String, (Transport, HashMap<u8, UnitTable>)> = HashMap::new();
        for d in devices {
            let (_, units) = by_endpoint
                .entry(d.endpoint())
                .or_insert_with(|| (d.transport.clone(), HashMap::new()));
            let table = units.entry(d.unit_id.0).or_default();
            for r in d.registers.iter() {
                table.registers.push((seed(&d.name, &r.name), r.clone()));
            }
        }
        let mut sim = Simulator {
            addrs: HashMap::new(),
            ptys: HashMap::new(),
            tasks: Vec::new(),
            log: log.clone(),
        };
        for (endpoint, (transport, units)) in by_endpoint {
            let faults = Arc::new(scoped.remove(&endpoint).unwrap_or_default());
            let units: Arc<dyn wire::Units> = Arc::new(Endpoint {
                log: log
                    .as_ref()
                    .map(|l| log::EndpointLog::new(Arc::clone(l), &endpoint)),
                units,
            });
            if let Transport::Rtu(_) = transport {
                // Whatever the configured path, the line is a new pty.
                let pty = rtu::Pty::open()?;
                sim.ptys.insert(endpoint, pty.path.clone());
                sim.tasks.push(tokio::spawn(pty.serve(units, faults)));
                continue;
            }
            let listen = match bind {
                Bind::AsConfigured => endpoint.clone(),
                Bind::Ephemeral => "127.0.0.1:0".to_string(),
            };
            let listener = TcpListener::bind(&listen).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("simulator cannot listen on {listen}: {e}"),
                )
            })?;
            sim.addrs.insert(endpoint, listener.local_addr()?);
            sim.tasks.push(match transport {
                Transport::RtuOverTcp => tokio::spawn(rtu::serve_tcp(listener, units, faults)),
                _ => tokio::spawn(wire::serve(listener, units, faults)),
            });
        }
        Ok(sim)
    }

    /// The address the simulator listens on for a device's endpoint.
    pub fn addr_of(&self, device: &Device) -> Option<SocketAddr> {
        self.addrs.get(&device.endpoint()).copied()
    }

    /// The pseudo-terminal that stands in for a serial device's line: the
    /// path to open instead of the configured one.
    pub fn pty_of(&self, device: &Device) -> Option<&Path> {
        self.ptys.get(&device.endpoint()).map(PathBuf::as_path)
    }

    /// `device` as a client reaches it here: at the port or pseudo-terminal
    /// its endpoint is served on (the address of a TCP endpoint stays the
    /// configured host when the simulator listens on it).
    pub fn reach(&self, device: &Device) -> Device {
        let mut d = device.clone();
        if let Some(addr) = self.addr_of(device) {
            d.host = addr.ip().to_string();
            d.port = addr.port();
        }
        if let (Some(pty), Transport::Rtu(line)) = (self.pty_of(device), &mut d.transport) {
            line.path = pty.display().to_string();
        }
        d
    }

    /// Every configured TCP endpoint and where it is served.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.addrs.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Every configured serial path and the pseudo-terminal serving it.
    pub fn serial_lines(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.ptys.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }
}

/// The registers one unit id answers for, each with its value seed.
#[derive(Default)]
struct UnitTable {
    registers: Vec<(u64, Register)>,
}

/// The units behind one simulated endpoint, and where its requests are
/// recorded when a test asked for it.
struct Endpoint {
    units: HashMap<u8, UnitTable>,
    log: Option<log::EndpointLog>,
}

impl wire::Units for Endpoint {
    fn has_unit(&self, unit: u8) -> bool {
        self.units.contains_key(&unit)
    }

    fn request_log(&self) -> Option<&log::EndpointLog> {
        self.log.as_ref()
    }

    fn answer(&self, unit: u8, kind: RegisterKind, start: u16, count: u16) -> Answer {
        // What a gateway answers for a unit id it has nothing behind.
        let Some(table) = self.units.get(&unit) else {
            return Answer::Exception(0x0B);
        };
        let now = Utc::now();
        if kind.is_bit() {
            Answer::Bits(table.bits(kind, start, count, now))
        } else {
            Answer::Registers(table.words(kind, start, count, now))
        }
    }
}

impl UnitTable {
    /// Words for a register read. Addresses with no configured register read
    /// as 0, like a device with a sparse but readable map.
    fn words(&self, kind: RegisterKind, start: u16, count: u16, now: DateTime<Utc>) -> Vec<u16> {
        let mut out = vec![0u16; usize::from(count)];
        let (lo, hi) = (u32::from(start), u32::from(start) + u32::from(count));
        for (seed, r) in self.registers.iter().filter(|(_, r)| r.kind == kind) {
            let words = encode(&raw_value(*seed, r, now), r);
            for (k, w) in words.into_iter().enumerate() {
                let addr = u32::from(r.address.0) + k as u32;
                if (lo..hi).contains(&addr) {
                    let slot = &mut out[(addr - lo) as usize];
                    // Bit fields and bytes share their word; every other
                    // value owns its words.
                    let shared = r.bit.is_some() || r.byte.is_some();
                    *slot = if shared { *slot | w } else { w };
                }
            }
        }
        out
    }

    fn bits(&self, kind: RegisterKind, start: u16, count: u16, now: DateTime<Utc>) -> Vec<bool> {
        let mut out = vec![false; usize::from(count)];
        for (seed, r) in self.registers.iter().filter(|(_, r)| r.kind == kind) {
            if let Some(i) = r
                .address
                .0
                .checked_sub(start)
                .map(usize::from)
                .filter(|&i| i < out.len())
            {
                out[i] = raw_value(*seed, r, now) == Value::Bool(true);
            }
        }
        out
    }
}

/// A register's place in the simulator's cycle: a second of the hour, from a
/// hash that is the same in every build (the values a device shows stay put).
fn seed(device: &str, register: &str) -> u64 {
    let hash = crate::registry::stable_hash(&format!("{device}/{register}"));
    hash % 3_600_000_000 / 1_000_000
}

/// The engineering value (after scale and offset) the simulator intends for a
/// register at `t`: it steps once per second through 60 values, inside the
/// register's valid range when it has one; bools alternate; strings count.
fn intended(seed: u64, reg: &Register, t: DateTime<Utc>) -> Value {
    let step = (t.timestamp().rem_euclid(60) as u64 + seed) % 60;
    match (reg.data_type, reg.valid.min(), reg.valid.max()) {
        (DataType::Bool, _, _) => Value::Bool(step % 2 == 1),
        (DataType::String, _, _) => Value::Text(format!("{}-{step:02}", reg.name)),
        (_, Some(min), Some(max)) => Value::Number(min + (max - min) * step as f64 / 60.0),
        _ => Value::Number((seed % 100) as f64 + step as f64),
    }
}

/// What the device holds at `t`, before encoding: numbers with scale and
/// offset undone.
fn raw_value(seed: u64, reg: &Register, t: DateTime<Utc>) -> Value {
    match intended(seed, reg, t) {
        Value::Number(v) => Value::Number((v - reg.offset) / reg.scale),
        other => other,
    }
}

/// What regpoll should read for `reg` of `device` at `t`: the intended value as
/// it survives encoding into the register's type (integers are rounded,
/// strings cut to their length).
pub fn expected_value(device: &str, reg: &Register, t: DateTime<Utc>) -> Value {
    let raw = raw_value(seed(device, &reg.name), reg, t);
    match decode(&encode(&raw, reg), reg) {
        Value::Number(n) => Value::Number(reg.engineering(n)),
        other => other,
    }
}
