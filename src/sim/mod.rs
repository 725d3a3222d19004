//! A Modbus TCP simulator that serves the devices of a devices.yaml, used by
//! `regpoll simulate`, `regpoll demo`, the tests and the benchmarks.
//!
//! Values change once per second and are a pure function of the device, the
//! register and the Unix second ([`engineering_value`]), so a test can compute
//! what any reading should hold from its timestamp alone. Values are encoded
//! with each register's type and order, exactly as a device would send them.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::modbus::decode::{decode, encode};
use crate::modbus::plan::{MAX_BITS_PER_REQUEST, MAX_REGISTERS_PER_REQUEST};
use crate::reading::Value;
use crate::registry::{DataType, Device, Register, RegisterKind};

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
    tasks: Vec<JoinHandle<()>>,
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
        let mut by_endpoint: HashMap<String, HashMap<u8, UnitTable>> = HashMap::new();
        for d in devices {
            let units = by_endpoint.entry(d.endpoint()).or_default();
            let table = units.entry(d.unit_id.0).or_default();
            for r in &d.registers {
                table.registers.push((seed(&d.name, &r.name), r.clone()));
            }
        }
        let mut sim = Simulator {
            addrs: HashMap::new(),
            tasks: Vec::new(),
        };
        for (endpoint, units) in by_endpoint {
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
            let service = SimService(Arc::new(units));
            sim.tasks.push(tokio::spawn(serve(listener, service)));
        }
        Ok(sim)
    }

    /// The address the simulator listens on for a device's endpoint.
    pub fn addr_of(&self, device: &Device) -> Option<SocketAddr> {
        self.addrs.get(&device.endpoint()).copied()
    }

    /// Every configured endpoint and where it is served.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.addrs.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

async fn serve(listener: TcpListener, service: SimService) {
    let server = Server::new(listener);
    let on_connected = |stream, addr| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, addr, |_| Ok(Some(service.clone()))) }
    };
    if let Err(e) = server
        .serve(
            &on_connected,
            |e| tracing::debug!(error = %e, "simulator connection ended"),
        )
        .await
    {
        tracing::warn!(error = %e, "simulator endpoint stopped");
    }
}

/// The registers one unit id answers for, each with its value seed.
#[derive(Default)]
struct UnitTable {
    registers: Vec<(u64, Register)>,
}

#[derive(Clone)]
struct SimService(Arc<HashMap<u8, UnitTable>>);

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(unit) = self.0.get(&req.slave) else {
            // What a gateway answers for a unit id it has nothing behind.
            return ready(Err(ExceptionCode::GatewayTargetDevice));
        };
        let now = Utc::now();
        ready(match req.request {
            Request::ReadHoldingRegisters(a, n) => unit
                .words(RegisterKind::Holding, a, n, now)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => unit
                .words(RegisterKind::Input, a, n, now)
                .map(Response::ReadInputRegisters),
            Request::ReadCoils(a, n) => unit
                .bits(RegisterKind::Coil, a, n, now)
                .map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => unit
                .bits(RegisterKind::Discrete, a, n, now)
                .map(Response::ReadDiscreteInputs),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

impl UnitTable {
    /// Words for a register read. Addresses with no configured register read
    /// as 0, like a device with a sparse but readable map.
    fn words(
        &self,
        kind: RegisterKind,
        start: u16,
        count: u16,
        now: DateTime<Utc>,
    ) -> Result<Vec<u16>, ExceptionCode> {
        check_range(start, count, MAX_REGISTERS_PER_REQUEST)?;
        let mut out = vec![0u16; usize::from(count)];
        let (lo, hi) = (u32::from(start), u32::from(start) + u32::from(count));
        for (seed, r) in self.registers.iter().filter(|(_, r)| r.kind == kind) {
            let words = encode(&raw_value(*seed, r, now), r);
            for (k, w) in words.into_iter().enumerate() {
                let addr = u32::from(r.address.0) + k as u32;
                if (lo..hi).contains(&addr) {
                    let slot = &mut out[(addr - lo) as usize];
                    // Bit fields share their word; every other value owns its words.
                    *slot = if r.bit.is_some() { *slot | w } else { w };
                }
            }
        }
        Ok(out)
    }

    fn bits(
        &self,
        kind: RegisterKind,
        start: u16,
        count: u16,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, ExceptionCode> {
        check_range(start, count, MAX_BITS_PER_REQUEST)?;
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
        Ok(out)
    }
}

fn check_range(start: u16, count: u16, max: u16) -> Result<(), ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    if u32::from(start) + u32::from(count) > 65536 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(())
}

fn seed(device: &str, register: &str) -> u64 {
    crate::schedule::phase(
        &format!("{device}/{register}"),
        std::time::Duration::from_secs(3600),
    )
    .as_secs()
}

/// The engineering value (after scale and offset) the simulator intends for a
/// register at `t`: it steps once per second through 60 values, inside the
/// register's valid range when it has one; bools alternate; strings count.
fn intended(seed: u64, reg: &Register, t: DateTime<Utc>) -> Value {
    let step = (t.timestamp().rem_euclid(60) as u64 + seed) % 60;
    match (reg.data_type, reg.valid.min, reg.valid.max) {
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
        Value::Number(n) => Value::Number(n * reg.scale + reg.offset),
        other => other,
    }
}
