//! regpoll: a Modbus TCP polling service and historian.
//!
//! Data flows one way through the modules:
//!
//! - [`config`] parses devices.yaml into the registry's domain types, with
//!   file:line:column errors.
//! - [`registry`] holds those types (`Device`, `Register`, `Schedule`) and stores
//!   them in PostgreSQL or SQLite (`devices`, `device_register_map`).
//! - [`db`] opens PostgreSQL or SQLite and runs their migrations.
//! - [`schedule`] decides when each poll group fires; [`fleet`] runs one task
//!   per poll group and reconciles them with the registry (hot reload).
//! - [`modbus`] plans the read requests for a device (and learns a better
//!   plan from the device's refusals, [`modbus::learn`]), talks to endpoints
//!   (one connection per host:port), decodes words into values and, for
//!   commissioning, logs each request and answer when a device asks.
//! - [`poller`] runs one poll of one device and turns the outcome into
//!   [`reading::Reading`]s with a quality.
//! - [`sink`] hands each poll's report to the two rooms downstream, which
//!   never import each other:
//!   - [`latest`]: the newest value of every register, in memory and in
//!     Redis (the JSON contract, a coalescer that keeps the newest report of
//!     each poll group, the RESP connection and its writer);
//!   - [`history`]: every reading, batched by a writer from a bounded queue
//!     into a [`history::store::HistoryStore`] (PostgreSQL by binary COPY,
//!     SQLite by INSERT), with a disk spool while the database is down, a
//!     quarantine for rows it refuses for good, 1-minute and hourly rollups,
//!     retention per tier, and queries that read it back.
//! - [`stats`] takes one snapshot of the service's counters (kept with
//!   [`telemetry`]'s histograms and distributions, and [`modbus::stats`] per
//!   endpoint), which `/metrics`, `/api/stats` and the run summary render.
//! - [`api`] serves HTTP: health, readiness, metrics, devices, latest values,
//!   history ranges and the status page.
//! - [`cluster`] lets several instances share one fleet through PostgreSQL
//!   (`run --cluster`): leases, the self-fence every endpoint checks, and
//!   the rendezvous balance of links; `app` applies its decisions to the
//!   fleet.
//! - [`sim`] is a Modbus TCP simulator for the demo, the tests and benchmarks.
//! - [`app`] wires everything together and owns startup (also without the
//!   database, from the registry cache), supervision and shutdown;
//!   [`settings`] declares every setting of the service once (flag,
//!   environment variable, default, help); [`cli`] defines the command line
//!   from them and [`commands`] carries it out.

pub mod api;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod db;
pub mod fleet;
pub mod history;
pub mod latest;
pub mod modbus;
pub mod poller;
pub mod reading;
pub mod registry;
pub mod schedule;
pub mod settings;
pub mod sim;
pub mod sink;
pub mod stats;
pub mod telemetry;
pub mod tls;
