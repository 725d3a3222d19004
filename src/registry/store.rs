//! Loading the registry from, and syncing devices.yaml into, the database.
//!
//! The SQL here is written once for PostgreSQL and SQLite (both accept `$N`
//! placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING` and a quoted "offset";
//! `Json` is jsonb on one and text on the other). Rows are never deleted:
//! readings refer to them, so devices and registers that leave the file are
//! marked inactive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use sqlx::types::Json;

use super::{
    Address, Align, Byte, CronSchedule, DataBits, DataType, Deadband, Demotion, Device, LogFrames,
    Register, RegisterMaps, RequestLimits, Schedule, SerialLine, StopBits, Tenant, Transport,
    TransportKind, UnitId, ValidRange,
};
use crate::db::{Db, on_pool};

/// A row of `devices`. Also the form a device takes in the registry cache
/// (`cache`), so that a cached device is checked exactly as a stored one.
#[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub(super) struct DeviceRow {
    pub(super) id: i32,
    pub(super) name: String,
    host: String,
    port: i32,
    unit_id: i32,
    every_ms: i64,
    timeout_ms: i64,
    connect_timeout_ms: i64,
    retries: i32,
    pause_ms: i64,
    max_registers_per_request: i32,
    max_bits_per_request: i32,
    max_gap: i32,
    /// The pacing and demotion columns (migration 0012); a registry cache
    /// written before them holds the defaults.
    #[serde(default)]
    delay_after_connect_ms: i64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: i32,
    #[serde(default = "default_demote_after")]
    demote_after: i32,
    #[serde(default = "default_demote_max_ms")]
    demote_max_ms: i64,
    cron: Option<String>,
    timezone: Option<String>,
    align: String,
    active: bool,
    tags: Json<BTreeMap<String, String>>,
    /// The tenant column (migration 0017), left out of the registry cache
    /// when empty so that a cache without tenants is the file it was before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    /// Left out of the registry cache when `off`, so a cache of devices
    /// that log no frames is the file it was before the column existed.
    #[serde(default = "log_frames_off", skip_serializing_if = "is_off")]
    log_frames: String,
    /// The transport and serial columns are left out of the registry cache
    /// for a TCP device, so a cache of TCP devices is the version-1 file it
    /// was before they existed (as `byte` is for registers).
    #[serde(default = "tcp", skip_serializing_if = "is_tcp")]
    transport: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    serial: SerialColumns,
}

fn log_frames_off() -> String {
    LogFrames::Off.as_str().to_string()
}

fn is_off(log_frames: &str) -> bool {
    log_frames == LogFrames::Off.as_str()
}

/// The serial line columns of `devices`: all set for transport rtu, none
/// otherwise.
#[derive(Default, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
struct SerialColumns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serial_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    baud: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_bits: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop_bits: Option<i32>,
}

impl SerialColumns {
    fn of(transport: &Transport) -> SerialColumns {
        match transport.serial() {
            None => SerialColumns::default(),
            Some(line) => SerialColumns {
                serial_path: Some(line.path.clone()),
                baud: Some(i32::try_from(line.baud).unwrap_or(i32::MAX)),
                parity: Some(line.parity.as_str().to_string()),
                data_bits: Some(i32::from(line.data_bits.as_u8())),
                stop_bits: Some(i32::from(line.stop_bits.as_u8())),
            },
        }
    }

    /// The transport these columns and `transport` describe, checked as
    /// devices.yaml's validation checks it.
    fn transport(self, transport: &str, unit: u8) -> Result<Transport, String> {
        let kind: TransportKind = transport.parse()?;
        let given = [
            self.serial_path.is_some(),
            self.baud.is_some(),
            self.parity.is_some(),
            self.data_bits.is_some(),
            self.stop_bits.is_some(),
        ];
        let transport = match (kind, self) {
            (
                TransportKind::Rtu,
                SerialColumns {
                    serial_path: Some(path),
                    baud: Some(baud),
                    parity: Some(parity),
                    data_bits: Some(data_bits),
                    stop_bits: Some(stop_bits),
                },
            ) => {
                if path.is_empty() {
                    return Err("serial_path is empty".into());
                }
                let baud = u32::try_from(baud)
                    .ok()
                    .filter(|b| (super::BAUD_MIN..=super::BAUD_MAX).contains(b))
                    .ok_or(format!(
                        "baud {baud} is outside {}..{}",
                        super::BAUD_MIN,
                        super::BAUD_MAX
                    ))?;
                Transport::Rtu(Box::new(SerialLine {
                    path,
                    baud,
                    parity: parity.parse()?,
                    data_bits: DataBits::of(data_bits.into())?,
                    stop_bits: StopBits::of(stop_bits.into())?,
                }))
            }
            (TransportKind::Rtu, _) => {
                return Err(
                    "transport rtu needs serial_path, baud, parity, data_bits and stop_bits".into(),
                );
            }
            (_, _) if given.contains(&true) => {
                return Err(format!(
                    "serial_path, baud, parity, data_bits and stop_bits are only for transport rtu, not {transport}"
                ));
            }
            (TransportKind::Tcp, _) => Transport::Tcp,
            (TransportKind::RtuOverTcp, _) => Transport::RtuOverTcp,
        };
        if transport.is_rtu() {
            super::check_rtu_unit(unit)?;
        }
        Ok(transport)
    }
}

fn tcp() -> String {
    "tcp".into()
}

fn is_tcp(transport: &str) -> bool {
    transport == "tcp"
}

/// A row of `device_register_map`; in the registry cache without its ids,
/// which are kept per device (a register map is shared by many devices).
#[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub(super) struct RegisterRow {
    #[serde(skip)]
    id: i32,
    #[serde(skip)]
    device_id: i32,
    pub(super) name: String,
    kind: String,
    address: i32,
    data_type: String,
    word_order: String,
    scale: f64,
    offset: f64,
    unit: Option<String>,
    valid_min: Option<f64>,
    valid_max: Option<f64>,
    bit: Option<i32>,
    /// Left out of the registry cache when empty, so a cache without u8 or
    /// i8 registers is the version-1 file it was before `byte` existed; one
    /// with them names types an older regpoll skips the device for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    byte: Option<String>,
    length: Option<i32>,
    every_ms: Option<i64>,
    cron: Option<String>,
    timezone: Option<String>,
    /// The deadband columns (migration 0016), left out of the registry
    /// cache when empty so that a cache without deadbands is the version-1
    /// file it was before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadband: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadband_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heartbeat_ms: Option<i64>,
}

fn default_max_in_flight() -> i32 {
    1
}

fn default_demote_after() -> i32 {
    Demotion::DEFAULT.after.into()
}

fn default_demote_max_ms() -> i64 {
    millis(Demotion::DEFAULT.max)
}

impl DeviceRow {
    /// The row `sync_devices` would store for `d` (with `d`'s id).
    pub(super) fn of(d: &Device) -> DeviceRow {
        DeviceRow {
            id: d.id,
            name: d.name.clone(),
            host: d.host.clone(),
            port: i32::from(d.port),
            unit_id: i32::from(d.unit_id.0),
            every_ms: millis(stored_every(&d.schedule)),
            timeout_ms: millis(d.timeout),
            connect_timeout_ms: millis(d.limits.connect_timeout),
            retries: i32::from(d.limits.retries),
            pause_ms: millis(d.limits.pause),
            max_registers_per_request: i32::from(d.limits.max_registers),
            max_bits_per_request: i32::from(d.limits.max_bits),
            max_gap: i32::from(d.limits.max_gap),
            delay_after_connect_ms: millis(d.limits.delay_after_connect),
            max_in_flight: i32::from(d.limits.max_in_flight),
            demote_after: i32::from(d.limits.demotion.after),
            demote_max_ms: millis(d.limits.demotion.max),
            cron: cron_pattern(&d.schedule).map(str::to_string),
            timezone: cron_zone(&d.schedule).map(str::to_string),
            align: align_name(&d.schedule).to_string(),
            active: d.active,
            tags: Json(d.tags.clone()),
            tenant: d.tenant.as_ref().map(|t| t.as_str().to_string()),
            log_frames: d.limits.log_frames.as_str().to_string(),
            transport: d.transport.as_str().to_string(),
            serial: SerialColumns::of(&d.transport),
        }
    }
}

impl RegisterRow {
    /// The row `sync_devices` would store for `r` (ids left at 0).
    pub(super) fn of(r: &Register) -> RegisterRow {
        let schedule = r.schedule.as_deref();
        let (deadband, deadband_percent, heartbeat_ms) = Deadband::columns(r.deadband.as_deref());
        RegisterRow {
            id: 0,
            device_id: 0,
            name: r.name.to_string(),
            kind: r.kind.as_str().to_string(),
            address: i32::from(r.address.0),
            data_type: r.data_type.as_str().to_string(),
            word_order: r.order.as_str().to_string(),
            scale: r.scale,
            offset: r.offset,
            unit: r.unit.as_deref().map(str::to_string),
            valid_min: r.valid.min(),
            valid_max: r.valid.max(),
            bit: r.bit.map(i32::from),
            byte: r.byte.map(|b| b.as_str().to_string()),
            length: r.length.map(i32::from),
            every_ms: match schedule {
                Some(Schedule::Every { every, .. }) => Some(millis(*every)),
                _ => None,
            },
            cron: schedule.and_then(cron_pattern).map(str::to_string),
            timezone: schedule.and_then(cron_zone).map(str::to_string),
            deadband,
            deadband_percent,
            heartbeat_ms,
        }
    }
}

const SELECT_DEVICES: &str = "SELECT id, name, host, port, unit_id, every_ms, timeout_ms, connect_timeout_ms, retries, \
     pause_ms, max_registers_per_request, max_bits_per_request, max_gap, delay_after_connect_ms, max_in_flight, demote_after, \
     demote_max_ms, cron, timezone, align, active, tags, tenant, log_frames, \
     transport, serial_path, baud, parity, data_bits, stop_bits FROM devices ORDER BY name";
const SELECT_REGISTERS: &str = "SELECT id, device_id, name, kind, address, data_type, word_order, scale, \"offset\", \
     unit, valid_min, valid_max, bit, byte, length, every_ms, cron, timezone, deadband, deadband_percent, heartbeat_ms \
     FROM device_register_map WHERE active ORDER BY device_id, kind, address, name";

/// A register of the registry, as history queries need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RegisterRef {
    pub id: i32,
    pub name: String,
    pub unit: Option<String>,
    pub data_type: String,
}

/// The registry as stored, and the rows that could not be used (edited by hand
/// into something invalid); those devices are left out and reported.
#[derive(Debug, Default)]
pub struct Loaded {
    pub devices: Vec<Device>,
    pub problems: Vec<String>,
    /// The active devices left out, each with why (the same as in
    /// `problems`, by device, for `/ready`, `/metrics` and Redis).
    pub rejected: Vec<Rejected>,
    /// Devices of the registry that are not to be polled: inactive, or with
    /// no active register (filled by `load_active_devices`), with their
    /// tenants (where their Redis keys are).
    pub inactive: Vec<(String, Option<Tenant>)>,
}

/// An active device whose rows regpoll cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub device: String,
    /// Its tenant, when the rows hold a valid one (where its Redis keys are).
    pub tenant: Option<Tenant>,
    pub reason: String,
}

/// What `devices sync` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub deactivated: Vec<String>,
    pub unchanged: usize,
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, names) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("deactivated", &self.deactivated),
        ] {
            for n in names {
                writeln!(f, "{label:<12} {n}")?;
            }
        }
        write!(
            f,
            "{} added, {} changed, {} deactivated, {} unchanged",
            self.added.len(),
            self.changed.len(),
            self.deactivated.len(),
            self.unchanged
        )
    }
}

impl Db {
    /// Every device (active and inactive) with its active registers.
    ///
    /// Register rows are streamed and turned into registers one device at a
    /// time: holding every row of 100,000 registers at once, as text columns,
    /// was the largest thing in regpoll's memory at start-up and at every
    /// reload (about 60 MB at 10,000 devices, over the registry itself).
    pub async fn load_devices(&self) -> anyhow::Result<Loaded> {
        let mut registers: HashMap<i32, Result<DeviceMap, String>> = HashMap::new();
        let devices: Vec<DeviceRow> = on_pool!(self, pool => {
            let devices = sqlx::query_as(SELECT_DEVICES)
                .fetch_all(pool)
                .await
                .context("cannot read devices")?;
            let mut rows = sqlx::query_as::<_, RegisterRow>(SELECT_REGISTERS).fetch(pool);
            let mut device = DeviceRegisters::default();
            while let Some(row) = rows
                .try_next()
                .await
                .context("cannot read device_register_map")?
            {
                if let Some((id, done)) = device.next(row) {
                    registers.insert(id, done);
                }
            }
            if let Some((id, done)) = device.finish() {
                registers.insert(id, done);
            }
            devices
        });
        let mut loaded = Loaded::default();
        let mut maps = RegisterMaps::default();
        let mut links = Links::default();
        for row in devices {
            let regs = registers
                .remove(&row.id)
                .unwrap_or_else(|| Ok(DeviceMap::default()));
            let name = row.name.clone();
            let active = row.active;
            let tenant = row.tenant.as_deref().and_then(|t| Tenant::parse(t).ok());
            match regs
                .and_then(|regs| device_from_rows(row, regs, &mut maps))
                .and_then(|d| links.admit(d))
            {
                Ok(d) => loaded.devices.push(d),
                Err(e) => {
                    loaded
                        .problems
                        .push(format!("device `{name}` is skipped: {e}"));
                    // An inactive device is not polled anyway: nothing to alarm.
                    if active {
                        loaded.rejected.push(Rejected {
                            device: name,
                            tenant,
                            reason: e,
                        });
                    }
                }
            }
        }
        Ok(loaded)
    }

    /// A cheap summary of the registry that changes whenever any row of
    /// `devices` or `device_register_map` does (PostgreSQL gives every new
    /// row version a new `xmin`), so a periodic check can skip reloading an
    /// unchanged registry of thousands of devices. `None` on SQLite, which
    /// has no such column: it is always reloaded.
    pub async fn registry_fingerprint(&self) -> anyhow::Result<Option<String>> {
        let Some(pool) = self.as_postgres() else {
            return Ok(None);
        };
        let row: (String,) = sqlx::query_as(
            "SELECT concat_ws('/', \
                (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM devices), \
                (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM device_register_map))",
        )
        .fetch_one(pool)
        .await
        .context("cannot read the registry's fingerprint")?;
        Ok(Some(row.0))
    }

    /// Each active device with an active register (what `run` polls, as
    /// `load_active_devices` selects them) and the link it is reached
    /// through ([`Device::endpoint`]), by name: the columns that decide it
    /// and nothing else, so that listing the owner of every device of a
    /// large registry costs one light statement, not a registry load.
    pub(crate) async fn active_links(&self) -> sqlx::Result<Vec<(String, String)>> {
        const ACTIVE_LINKS: &str = "SELECT d.name, d.host, d.port, d.serial_path FROM devices d \
             WHERE d.active AND EXISTS (SELECT 1 FROM device_register_map r \
                                        WHERE r.device_id = d.id AND r.active)";
        let rows: Vec<(String, String, i32, Option<String>)> = on_pool!(self, pool => {
            sqlx::query_as(ACTIVE_LINKS).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(name, host, port, serial)| {
                // The registry's checks keep ports within 1..65535.
                let port = u16::try_from(port).unwrap_or_default();
                let link = super::endpoint_of(&host, port, serial.as_deref());
                (name, link)
            })
            .collect())
    }

    /// The registers of the device named `device` (inactive ones too: their
    /// history stays queryable), in address order, as history queries name
    /// them; `None` when there is no such device.
    ///
    /// With `tenant`, only a device of that tenant is found: a device of
    /// another tenant, or of none, is `None` as an unknown one is.
    pub(crate) async fn device_registers(
        &self,
        device: &str,
        tenant: Option<&str>,
    ) -> sqlx::Result<Option<Vec<RegisterRef>>> {
        const DEVICE: &str = "SELECT id, tenant FROM devices WHERE name = $1";
        const REGISTERS: &str = "SELECT id, name, unit, data_type FROM device_register_map \
                                 WHERE device_id = $1 ORDER BY address, name";
        on_pool!(self, pool => {
            let found: Option<(i32, Option<String>)> = sqlx::query_as(DEVICE)
                .bind(device)
                .fetch_optional(pool)
                .await?;
            let seen = found.filter(|(_, theirs)| {
                tenant.is_none_or(|mine| theirs.as_deref() == Some(mine))
            });
            match seen {
                Some((id, _)) => sqlx::query_as(REGISTERS).bind(id).fetch_all(pool).await.map(Some),
                None => Ok(None),
            }
        })
    }

    /// The active devices that have at least one active register: what `run` polls.
    pub async fn load_active_devices(&self) -> anyhow::Result<Loaded> {
        let mut loaded = self.load_devices().await?;
        let (polled, idle): (Vec<Device>, Vec<Device>) = std::mem::take(&mut loaded.devices)
            .into_iter()
            .partition(|d| d.active && !d.registers.is_empty());
        loaded.devices = polled;
        loaded.inactive = idle.into_iter().map(|d| (d.name, d.tenant)).collect();
        Ok(loaded)
    }

    /// Makes the registry match `devices` (a whole devices.yaml): adds and
    /// updates by name, deactivates devices and registers that are not in it.
    /// Runs in one transaction, so a failure changes nothing.
    pub async fn sync_devices(&self, devices: &[Device]) -> anyhow::Result<SyncReport> {
        let existing: HashMap<String, Device> = self
            .load_devices()
            .await?
            .devices
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let mut report = SyncReport::default();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.context("cannot start the sync transaction")?;
            for d in devices {
                let old = existing.get(&d.name);
                match old {
                    None => report.added.push(d.name.clone()),
                    Some(old) if !same_config(old, d) => report.changed.push(d.name.clone()),
                    Some(_) => {
                        report.unchanged += 1;
                        continue;
                    }
                }
                let serial = SerialColumns::of(&d.transport);
                let id: i32 = sqlx::query_scalar(
                    "INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms, active, tags, \
                     connect_timeout_ms, retries, pause_ms, max_registers_per_request, max_bits_per_request, max_gap, \
                     cron, timezone, align, delay_after_connect_ms, demote_after, demote_max_ms, max_in_flight, log_frames, \
                     transport, serial_path, baud, parity, data_bits, stop_bits, tenant) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                     $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29) \
                     ON CONFLICT (name) DO UPDATE SET host = excluded.host, port = excluded.port, \
                     unit_id = excluded.unit_id, every_ms = excluded.every_ms, timeout_ms = excluded.timeout_ms, \
                     active = excluded.active, tags = excluded.tags, connect_timeout_ms = excluded.connect_timeout_ms, \
                     retries = excluded.retries, pause_ms = excluded.pause_ms, \
                     max_registers_per_request = excluded.max_registers_per_request, \
                     max_bits_per_request = excluded.max_bits_per_request, max_gap = excluded.max_gap, \
                     cron = excluded.cron, timezone = excluded.timezone, align = excluded.align, \
                     delay_after_connect_ms = excluded.delay_after_connect_ms, demote_after = excluded.demote_after, \
                     demote_max_ms = excluded.demote_max_ms, max_in_flight = excluded.max_in_flight, \
                     log_frames = excluded.log_frames, \
                     transport = excluded.transport, serial_path = excluded.serial_path, baud = excluded.baud, \
                     parity = excluded.parity, data_bits = excluded.data_bits, stop_bits = excluded.stop_bits, \
                     tenant = excluded.tenant, updated_at = CURRENT_TIMESTAMP RETURNING id",
                )
                .bind(&d.name)
                .bind(&d.host)
                .bind(i32::from(d.port))
                .bind(i32::from(d.unit_id.0))
                .bind(millis(stored_every(&d.schedule)))
                .bind(millis(d.timeout))
                .bind(d.active)
                .bind(Json(&d.tags))
                .bind(millis(d.limits.connect_timeout))
                .bind(i32::from(d.limits.retries))
                .bind(millis(d.limits.pause))
                .bind(i32::from(d.limits.max_registers))
                .bind(i32::from(d.limits.max_bits))
                .bind(i32::from(d.limits.max_gap))
                .bind(cron_pattern(&d.schedule))
                .bind(cron_zone(&d.schedule))
                .bind(align_name(&d.schedule))
                .bind(millis(d.limits.delay_after_connect))
                .bind(i32::from(d.limits.demotion.after))
                .bind(millis(d.limits.demotion.max))
                .bind(i32::from(d.limits.max_in_flight))
                .bind(d.limits.log_frames.as_str())
                .bind(d.transport.as_str())
                .bind(serial.serial_path)
                .bind(serial.baud)
                .bind(serial.parity)
                .bind(serial.data_bits)
                .bind(serial.stop_bits)
                .bind(d.tenant.as_ref().map(Tenant::as_str))
                .fetch_one(&mut *tx)
                .await
                .with_context(|| format!("cannot store device `{}`", d.name))?;
                for r in d.registers.iter() {
                    let (deadband, deadband_percent, heartbeat_ms) = Deadband::columns(r.deadband.as_deref());
                    sqlx::query(
                        "INSERT INTO device_register_map (device_id, name, kind, address, data_type, word_order, \
                         scale, \"offset\", unit, valid_min, valid_max, bit, byte, length, every_ms, cron, timezone, \
                         deadband, deadband_percent, heartbeat_ms, active) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, true) \
                         ON CONFLICT (device_id, name) DO UPDATE SET kind = excluded.kind, address = excluded.address, \
                         data_type = excluded.data_type, word_order = excluded.word_order, scale = excluded.scale, \
                         \"offset\" = excluded.\"offset\", unit = excluded.unit, valid_min = excluded.valid_min, \
                         valid_max = excluded.valid_max, bit = excluded.bit, byte = excluded.byte, length = excluded.length, \
                         every_ms = excluded.every_ms, cron = excluded.cron, timezone = excluded.timezone, \
                         deadband = excluded.deadband, deadband_percent = excluded.deadband_percent, \
                         heartbeat_ms = excluded.heartbeat_ms, active = true, updated_at = CURRENT_TIMESTAMP",
                    )
                    .bind(id)
                    .bind(&r.name)
                    .bind(r.kind.as_str())
                    .bind(i32::from(r.address.0))
                    .bind(r.data_type.as_str())
                    .bind(r.order.as_str())
                    .bind(r.scale)
                    .bind(r.offset)
                    .bind(&r.unit)
                    .bind(r.valid.min())
                    .bind(r.valid.max())
                    .bind(r.bit.map(i32::from))
                    .bind(r.byte.map(Byte::as_str))
                    .bind(r.length.map(i32::from))
                    .bind(match r.schedule.as_deref() {
                        Some(Schedule::Every { every, .. }) => Some(millis(*every)),
                        _ => None,
                    })
                    .bind(r.schedule.as_deref().and_then(cron_pattern))
                    .bind(r.schedule.as_deref().and_then(cron_zone))
                    .bind(deadband)
                    .bind(deadband_percent)
                    .bind(heartbeat_ms)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("cannot store register `{}` of device `{}`", r.name, d.name))?;
                }
                let keep: HashSet<&str> = d.registers.iter().map(|r| &*r.name).collect();
                let gone: Vec<i32> = old.into_iter().flat_map(|o| {
                    o.registers.iter().enumerate().filter(|(_, r)| !keep.contains(&*r.name)).map(|(i, _)| o.register_id(i))
                }).collect();
                for gone in gone {
                    sqlx::query("UPDATE device_register_map SET active = false, updated_at = CURRENT_TIMESTAMP WHERE id = $1")
                        .bind(gone)
                        .execute(&mut *tx)
                        .await
                        .context("cannot deactivate a removed register")?;
                }
            }
            let keep: HashSet<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            let mut gone: Vec<&Device> = existing.values().filter(|d| d.active && !keep.contains(d.name.as_str())).collect();
            gone.sort_by(|a, b| a.name.cmp(&b.name));
            for d in gone {
                sqlx::query("UPDATE devices SET active = false, updated_at = CURRENT_TIMESTAMP WHERE id = $1")
                    .bind(d.id)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("cannot deactivate device `{}`", d.name))?;
                report.deactivated.push(d.name.clone());
            }
            tx.commit().await.context("cannot commit the sync")?;
        });
        Ok(report)
    }
}

/// `devices.every_ms` is NOT NULL; for a cron device it holds the default
/// interval and is not used (the cron column wins).
fn stored_every(s: &Schedule) -> Duration {
    match s {
        Schedule::Every { every, .. } => *every,
        Schedule::Cron(_) => super::DEFAULT_EVERY,
    }
}

fn cron_pattern(s: &Schedule) -> Option<&str> {
    match s {
        Schedule::Cron(c) => Some(c.pattern.as_str()),
        Schedule::Every { .. } => None,
    }
}

fn cron_zone(s: &Schedule) -> Option<&str> {
    match s {
        Schedule::Cron(c) => Some(c.timezone.name()),
        Schedule::Every { .. } => None,
    }
}

fn align_name(s: &Schedule) -> &'static str {
    match s {
        Schedule::Every {
            align: Align::Strict,
            ..
        } => "strict",
        _ => "spread",
    }
}

/// A schedule from its columns: cron (with its zone, UTC by default) when set,
/// else the interval.
fn schedule_from_columns(
    every_ms: Option<i64>,
    cron: Option<&str>,
    timezone: Option<&str>,
    align: &str,
) -> Result<Option<Schedule>, String> {
    if let Some(pattern) = cron {
        return CronSchedule::parse(pattern, timezone.unwrap_or("UTC"))
            .map(|c| Some(Schedule::Cron(Box::new(c))));
    }
    let Some(ms) = every_ms else { return Ok(None) };
    let every = u64::try_from(ms)
        .ok()
        .filter(|&v| v > 0)
        .map(Duration::from_millis)
        .ok_or(format!("every_ms {ms} must be positive"))?;
    let align = match align {
        "spread" => Align::Spread,
        "strict" => Align::Strict,
        other => return Err(format!("align `{other}` is neither spread nor strict")),
    };
    Ok(Some(Schedule::Every { every, align }))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether two devices have the same configuration, ignoring database ids and
/// the order registers are listed in.
fn same_config(a: &Device, b: &Device) -> bool {
    let strip = |d: &Device| {
        let mut registers = d.registers.to_vec();
        registers.sort_by(|x, y| x.name.cmp(&y.name));
        Device {
            id: 0,
            registers: Arc::from(registers),
            register_ids: Box::default(),
            ..d.clone()
        }
    };
    strip(a) == strip(b)
}

/// One device's registers as loaded, with their `device_register_map.id`s.
#[derive(Default)]
pub(super) struct DeviceMap {
    pub(super) registers: Vec<Register>,
    pub(super) ids: Vec<i32>,
}

/// Gathers the registers of one device at a time from rows ordered by
/// device (as `SELECT_REGISTERS` returns them).
#[derive(Default)]
struct DeviceRegisters {
    device_id: Option<i32>,
    map: DeviceMap,
    error: Option<String>,
}

impl DeviceRegisters {
    /// Takes the next row; when it belongs to another device, hands back
    /// the previous device's registers (or its first unusable one).
    fn next(&mut self, row: RegisterRow) -> Option<(i32, Result<DeviceMap, String>)> {
        let done = match self.device_id {
            Some(id) if id != row.device_id => self.finish(),
            _ => None,
        };
        self.device_id = Some(row.device_id);
        if self.error.is_none() {
            let (name, id) = (row.name.clone(), row.id);
            match register_from_row(row) {
                Ok(r) => {
                    self.map.registers.push(r);
                    self.map.ids.push(id);
                }
                Err(e) => self.error = Some(format!("register `{name}`: {e}")),
            }
        }
        done
    }

    fn finish(&mut self) -> Option<(i32, Result<DeviceMap, String>)> {
        let id = self.device_id.take()?;
        let map = std::mem::take(&mut self.map);
        Some((id, self.error.take().map_or(Ok(map), Err)))
    }
}

pub(super) fn device_from_rows(
    row: DeviceRow,
    map: DeviceMap,
    maps: &mut RegisterMaps,
) -> Result<Device, String> {
    let unit = u8::try_from(row.unit_id)
        .map_err(|_| format!("unit_id {} is outside 0..255", row.unit_id))?;
    let transport = row.serial.transport(&row.transport, unit)?;
    if row.host.is_empty() && !matches!(transport, Transport::Rtu(_)) {
        return Err("host is empty; give the device's address or name".into());
    }
    let port = u16::try_from(row.port)
        .ok()
        .filter(|&p| p > 0)
        .ok_or(format!("port {} is outside 1..65535", row.port))?;
    let ms = |v: i64, what: &str| {
        u64::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .map(Duration::from_millis)
            .ok_or(format!("{what} {v} must be positive"))
    };
    Ok(Device {
        id: row.id,
        name: row.name,
        host: row.host,
        port,
        unit_id: UnitId(unit),
        transport,
        active: row.active,
        schedule: schedule_from_columns(
            Some(row.every_ms),
            row.cron.as_deref(),
            row.timezone.as_deref(),
            &row.align,
        )?
        .expect("every_ms is always set"),
        timeout: ms(row.timeout_ms, "timeout_ms")?,
        limits: RequestLimits {
            max_registers: in_range(
                row.max_registers_per_request,
                1,
                125,
                "max_registers_per_request",
            )?,
            max_bits: in_range(row.max_bits_per_request, 1, 2000, "max_bits_per_request")?,
            max_gap: in_range(row.max_gap, 0, 2000, "max_gap")?,
            retries: in_range(row.retries, 0, 10, "retries")? as u8,
            connect_timeout: ms(row.connect_timeout_ms, "connect_timeout_ms")?,
            pause: Duration::from_millis(
                u64::try_from(row.pause_ms)
                    .map_err(|_| format!("pause_ms {} is negative", row.pause_ms))?,
            ),
            delay_after_connect: Duration::from_millis(in_range_i64(
                row.delay_after_connect_ms,
                0,
                60_000,
                "delay_after_connect_ms",
            )?),
            max_in_flight: in_range(row.max_in_flight, 1, 16, "max_in_flight")? as u8,
            demotion: Demotion {
                after: in_range(row.demote_after, 1, 100, "demote_after")? as u8,
                max: Duration::from_millis(in_range_i64(
                    row.demote_max_ms,
                    1_000,
                    86_400_000,
                    "demote_max_ms",
                )?),
            },
            log_frames: row.log_frames.parse()?,
        },
        tags: row.tags.0,
        tenant: row.tenant.as_deref().map(Tenant::parse).transpose()?,
        // Shared with the devices that have the same map; the ids are the
        // device's own, so they are kept apart (and sized exactly).
        registers: maps.share(map.registers),
        register_ids: map.ids.into_boxed_slice(),
    })
}

/// The first active device on each link, in name order: a later one that
/// frames or sets up the link differently (rows written by hand; devices.yaml
/// refuses it) is skipped, so one link never carries two framings.
#[derive(Default)]
struct Links(HashMap<String, (String, Transport)>);

impl Links {
    fn admit(&mut self, d: Device) -> Result<Device, String> {
        if !d.active {
            return Ok(d);
        }
        let key = d.endpoint();
        match self.0.get(&key) {
            None => {
                self.0.insert(key, (d.name.clone(), d.transport.clone()));
                Ok(d)
            }
            Some((first, theirs)) => {
                let other = format!("device `{first}`");
                match super::link_conflict(&key, &d.transport, theirs, &other) {
                    None => Ok(d),
                    Some(why) => Err(why),
                }
            }
        }
    }
}

fn in_range(v: i32, min: u16, max: u16, what: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or(format!("{what} {v} is outside {min}..{max}"))
}

fn in_range_i64(v: i64, min: u64, max: u64, what: &str) -> Result<u64, String> {
    u64::try_from(v)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or(format!("{what} {v} is outside {min}..{max}"))
}

pub(super) fn register_from_row(r: RegisterRow) -> Result<Register, String> {
    let address = u16::try_from(r.address)
        .map_err(|_| format!("address {} is outside 0..65535", r.address))?;
    let data_type = r.data_type.parse()?;
    let (order, named_64) = super::WordOrder::parse(&r.word_order)?;
    let reg = Register {
        name: r.name.into(),
        kind: r.kind.parse()?,
        address: Address(address),
        data_type,
        order,
        scale: r.scale,
        offset: r.offset,
        unit: r.unit.map(Into::into),
        valid: ValidRange::new(r.valid_min, r.valid_max),
        bit: r
            .bit
            .map(|b| in_range(b, 0, 15, "bit"))
            .transpose()?
            .map(|b| b as u8),
        byte: r.byte.as_deref().map(str::parse).transpose()?,
        length: r
            .length
            .map(|l| in_range(l, 1, 125, "length"))
            .transpose()?,
        schedule: schedule_from_columns(
            r.every_ms,
            r.cron.as_deref(),
            r.timezone.as_deref(),
            "spread",
        )?
        .map(Box::new),
        deadband: Deadband::from_columns(
            r.deadband,
            r.deadband_percent,
            r.heartbeat_ms,
            data_type,
        )?
        .map(Box::new),
    };
    match (reg.data_type, reg.kind.is_bit(), reg.bit, reg.length) {
        (DataType::String, _, _, None) => return Err("type string needs a length".into()),
        (DataType::Bool, false, None, _) => {
            return Err("type bool on a 16-bit register needs a bit".into());
        }
        (t, true, _, _) if t != DataType::Bool => {
            return Err(format!(
                "{} registers must have type bool",
                reg.kind.as_str()
            ));
        }
        _ => {}
    }
    super::shape::check_shape(&reg, named_64)?;
    if u32::from(address) + u32::from(reg.width()) > 65536 {
        return Err(format!(
            "address {address} + {} registers runs past 65535",
            reg.width()
        ));
    }
    Ok(reg)
}
