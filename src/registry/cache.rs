//! A copy of the last registry `run` loaded, kept in `--data-dir`, so that a
//! start while PostgreSQL is unreachable can poll the devices it polled
//! before, with the ids their readings are stored under.
//!
//! The file is JSON: a header (`format`, `version`) that is read first, so a
//! file from another version is reported for what it is rather than as a
//! parse error; then the devices as the rows `devices` and
//! `device_register_map` hold, which are checked on reading exactly as rows
//! loaded from the database are. Register maps are stored once and referred
//! to by index (10,000 devices are mostly a few models of meter), the ids
//! per device. A new format gets a new version; an older regpoll refuses a
//! newer file and says so, never guesses.
//!
//! Written atomically (a temporary file, fsync, rename, fsync of the
//! directory), and only when the registry changed since the last write.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Device;
use super::RegisterMaps;
use super::store::{
    DeviceMap, DeviceRow, Loaded, RegisterRow, device_from_rows, register_from_row,
};

/// What the `format` field says, so that no other JSON file is taken for a cache.
const FORMAT: &str = "regpoll registry cache";
/// The version this build writes and reads. Bump it when the shape changes.
pub const VERSION: u32 = 1;
/// Bound on the file read back, far above any fleet: 10,000 devices of one
/// map take a few MB (a unit test holds it under 6 MB).
const MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Why a cache file cannot be used. It is reported and ignored, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "there is no registry cache at {0} (it is written after the first start with the database)"
    )]
    Missing(PathBuf),
    #[error("cannot read the registry cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the registry cache {path} is damaged ({reason}); it is ignored and rewritten at the next load from the database"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "the registry cache {path} has format version {found}, this regpoll reads version {VERSION}; it is ignored and rewritten at the next load from the database"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "the registry cache {path} is of the database at {cached}, not of {wanted}; its ids would be wrong there, so it is ignored"
    )]
    OtherDatabase {
        path: PathBuf,
        cached: String,
        wanted: String,
    },
}

#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: String,
    version: u32,
    /// The database the ids belong to (`Db::location`).
    database: String,
    /// The distinct register maps.
    maps: Vec<Vec<RegisterRow>>,
    devices: Vec<CachedDevice>,
}

#[derive(Serialize, Deserialize)]
struct CachedDevice {
    #[serde(flatten)]
    row: DeviceRow,
    /// Index into `maps`.
    map: usize,
    /// `device_register_map.id` of each register of the map, in its order.
    register_ids: Vec<i32>,
}

/// The cache file of a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("registry-cache.json")
}

/// The bytes of a cache of `devices`, the registry of the database at `database`.
pub fn encode(devices: &[Device], database: &str) -> Vec<u8> {
    let mut index: HashMap<*const super::Register, usize> = HashMap::new();
    let mut maps = Vec::new();
    let cached = devices
        .iter()
        .map(|d| {
            let map = *index.entry(d.registers.as_ptr()).or_insert_with(|| {
                maps.push(d.registers.iter().map(RegisterRow::of).collect());
                maps.len() - 1
            });
            CachedDevice {
                row: DeviceRow::of(d),
                map,
                register_ids: d.register_ids.to_vec(),
            }
        })
        .collect();
    let file = CacheFile {
        format: FORMAT.to_string(),
        version: VERSION,
        database: database.to_string(),
        maps,
        devices: cached,
    };
    serde_json::to_vec(&file).expect("a registry cache always serializes")
}

/// The devices of the cache at `path`, if it is of the database at
/// `database`. Devices that fail the checks a database row must pass are
/// left out and named in `problems`, as when loading from the database.
pub fn load(path: &Path, database: &str) -> Result<Loaded, CacheError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => CacheError::Missing(path.to_path_buf()),
        _ => CacheError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_BYTES {
        return Err(damaged(
            path,
            format!("{len} bytes, over the {MAX_BYTES}-byte bound"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode(&bytes, path, database)
}

fn damaged(path: &Path, reason: impl Into<String>) -> CacheError {
    CacheError::Damaged {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn decode(bytes: &[u8], path: &Path, database: &str) -> Result<Loaded, CacheError> {
    let header: Header = serde_json::from_slice(bytes).map_err(|e| damaged(path, e.to_string()))?;
    if header.format != FORMAT {
        return Err(damaged(
            path,
            format!("its format is `{}`, not `{FORMAT}`", header.format),
        ));
    }
    if header.version != VERSION {
        return Err(CacheError::Version {
            path: path.to_path_buf(),
            found: header.version,
        });
    }
    let file: CacheFile =
        serde_json::from_slice(bytes).map_err(|e| damaged(path, e.to_string()))?;
    if file.database != database {
        return Err(CacheError::OtherDatabase {
            path: path.to_path_buf(),
            cached: file.database,
            wanted: database.to_string(),
        });
    }
    let maps: Vec<Result<Vec<super::Register>, String>> = file
        .maps
        .into_iter()
        .map(|rows| {
            rows.into_iter()
                .map(|r| {
                    let name = r.name.clone();
                    register_from_row(r).map_err(|e| format!("register `{name}`: {e}"))
                })
                .collect()
        })
        .collect();
    let mut loaded = Loaded::default();
    let mut shared = RegisterMaps::default();
    for d in file.devices {
        let name = d.row.name.clone();
        let device = match maps.get(d.map) {
            None => Err(format!("register map {} does not exist", d.map)),
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(regs)) if regs.len() != d.register_ids.len() => Err(format!(
                "{} registers but {} register ids",
                regs.len(),
                d.register_ids.len()
            )),
            Some(Ok(regs)) => device_from_rows(
                d.row,
                DeviceMap {
                    registers: regs.clone(),
                    ids: d.register_ids,
                },
                &mut shared,
            ),
        };
        match device {
            Ok(device) => loaded.devices.push(device),
            Err(e) => loaded
                .problems
                .push(format!("cached device `{name}` is skipped: {e}")),
        }
    }
    Ok(loaded)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one, never a part: a temporary file beside it, synced, renamed
/// over it, and the directory synced so the rename itself is durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Keeps the cache file equal to the registry: [`store`](Self::store)
/// writes only when the registry changed since the last write, and a
/// failure is logged once until writing works again.
pub struct CacheWriter {
    path: PathBuf,
    database: String,
    /// CRC-32 and length of the last file written.
    last: Option<(u32, usize)>,
    failing: bool,
}

impl CacheWriter {
    /// A writer of the cache at `path`; a file already there counts as
    /// written, so an unchanged registry is not written again at start.
    pub fn new(path: PathBuf, database: String) -> Self {
        let last = std::fs::read(&path)
            .ok()
            .map(|b| (crc32fast::hash(&b), b.len()));
        Self {
            path,
            database,
            last,
            failing: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the cache of `devices` unless it would be the same as the last
    /// one written. The file is written on a blocking thread: an fsync can
    /// take a while on a busy disk, and this runs on the supervisor's task.
    pub async fn store(&mut self, devices: &[Device]) {
        let bytes = encode(devices, &self.database);
        // The file holds no time of its own (its modification time says
        // when it was written), so equal registries give equal bytes.
        let seen = (crc32fast::hash(&bytes), bytes.len());
        if self.last == Some(seen) {
            return;
        }
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(()) => {
                self.last = Some(seen);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(path = %self.path.display(), "registry cache written again");
                }
                tracing::debug!(path = %self.path.display(), devices = devices.len(), "registry cache written");
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot write the registry cache; a start while the database is unreachable will not be able to poll. Check that --data-dir is writable");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
