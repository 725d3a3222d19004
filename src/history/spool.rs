//! The on-disk spool: readings the database could not take yet, kept in
//! append-only segment files until they are replayed.
//!
//! A segment is a sequence of records, each `[u32 length][u32 CRC32][payload]`
//! (little-endian), the payload one batch of rows. Segments are named by a
//! growing sequence number, so replay in name order is replay in write order.
//! A damaged record (bad length or checksum, as after a crash mid-write or a
//! bad disk block) is reported and skipped: the reader searches forward for
//! the next record whose checksum holds, so good records after the damage are
//! still replayed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::DateTime;

use crate::history::row::Row;
use crate::reading::Quality;

/// Size at which a segment is closed and a new one started. A replay holds
/// one segment's rows in memory (about 40 bytes a row for 34 on disk), so
/// this bounds what a replay adds to the writer's memory: about 10 MB, a
/// quarter of what 10,000 devices need in all (the 64 MiB it was held
/// 75 MB of rows).
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// A record longer than this is taken for damage, not data.
const MAX_RECORD: u32 = 256 * 1024 * 1024;

pub struct Spool {
    dir: PathBuf,
    next_seq: u64,
    /// The segment being appended to, its path and size.
    current: Option<(File, PathBuf, u64)>,
    /// Whether any segment exists, kept here so that the writer's per-batch
    /// check costs no directory listing while the database is healthy.
    holds_data: bool,
    /// Bytes of every segment, kept here for the same reason.
    bytes: u64,
    /// Most bytes the spool may hold (`--spool-max`); `None`: what the disk holds.
    max_bytes: Option<u64>,
}

/// What reading one segment found.
#[derive(Debug, Default)]
pub struct Segment {
    pub batches: Vec<Vec<Row>>,
    /// Stretches of damaged bytes that were skipped.
    pub damaged: usize,
}

impl Spool {
    /// Opens (creating) the spool directory; segments left by an earlier run
    /// stay and are replayed first.
    /// `max_bytes` bounds what it holds: an append past it fails as a full
    /// disk would, and the writer treats both alike.
    pub fn open(dir: &Path, max_bytes: Option<u64>) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let existing = Self::list(dir)?;
        let next_seq = existing.last().and_then(|p| seq_of(p)).map_or(0, |s| s + 1);
        let bytes = existing
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            next_seq,
            current: None,
            holds_data: !existing.is_empty(),
            bytes,
            max_bytes,
        })
    }

    /// Segment files, oldest first.
    fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| seq_of(p).is_some())
            .collect();
        files.sort();
        Ok(files)
    }

    pub fn segments(&self) -> io::Result<Vec<PathBuf>> {
        Self::list(&self.dir)
    }

    pub fn is_empty(&self) -> bool {
        !self.holds_data
    }

    /// Bytes on disk, for reporting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends one batch as one record, durably (fsync): the spool exists for
    /// the times things go wrong.
    pub fn append(&mut self, rows: &[Row]) -> io::Result<()> {
        self.append_pieces(&[rows])?;
        self.sync()
    }

    /// Appends one batch held in pieces as one record, without fsync: the
    /// writer appends every batch it spills at once and then calls
    /// [`Spool::sync`] once (a record is durable after the `sync` that
    /// follows it). A record that could not be written whole is cut off
    /// again, so the segment never holds a torn record that a later one
    /// follows.
    pub fn append_pieces(&mut self, pieces: &[&[Row]]) -> io::Result<()> {
        let payload = encode(pieces);
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        if let Some(max) = self.max_bytes
            && self.bytes + record.len() as u64 > max
        {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the spool in {} holds {} bytes and a record of {} more would pass its limit of {max} bytes (--spool-max)",
                    self.dir.display(),
                    self.bytes,
                    record.len()
                ),
            ));
        }
        if self
            .current
            .as_ref()
            .is_none_or(|(_, _, size)| *size >= SEGMENT_BYTES)
        {
            let path = self.dir.join(format!("spool-{:020}.seg", self.next_seq));
            self.next_seq += 1;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.current = Some((file, path, 0));
        }
        let (file, _, size) = self.current.as_mut().expect("segment was just opened");
        self.holds_data = true;
        if let Err(e) = file.write_all(&record) {
            // Best effort: if even this fails, the reader skips the torn
            // record as damage.
            let _ = file.set_len(*size);
            return Err(e);
        }
        *size += record.len() as u64;
        self.bytes += record.len() as u64;
        Ok(())
    }

    /// Makes every record appended so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        match &self.current {
            Some((file, _, _)) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Closes the segment being written, so that every segment can be replayed.
    pub fn seal(&mut self) {
        self.current = None;
    }

    /// [`Spool::seal`] when `path` is the segment being written.
    pub fn seal_if(&mut self, path: &Path) {
        if self.current.as_ref().is_some_and(|(_, p, _)| p == path) {
            self.current = None;
        }
    }

    /// Reads one segment, skipping damage.
    pub fn read(path: &Path) -> io::Result<Segment> {
        let bytes = fs::read(path)?;
        let mut out = Segment::default();
        let mut at = 0;
        let mut in_damage = false;
        while at < bytes.len() {
            match record_at(&bytes, at) {
                Some((rows, next)) => {
                    out.batches.push(rows);
                    at = next;
                    in_damage = false;
                }
                None => {
                    if !in_damage {
                        out.damaged += 1;
                        in_damage = true;
                    }
                    at += 1;
                }
            }
        }
        Ok(out)
    }

    /// Looks again whether any segment is left (after one was removed from
    /// outside, say).
    pub fn recheck(&mut self) -> io::Result<()> {
        self.holds_data = !Self::list(&self.dir)?.is_empty();
        Ok(())
    }

    /// Removes a segment once all of it is stored.
    pub fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.seal_if(path);
        let len = fs::metadata(path).map_or(0, |m| m.len());
        fs::remove_file(path)?;
        self.bytes = self.bytes.saturating_sub(len);
        self.holds_data = !Self::list(&self.dir)?.is_empty();
        Ok(())
    }
}

fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("spool-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

/// The record starting at `at`, if its length and checksum hold, and where the next one starts.
fn record_at(bytes: &[u8], at: usize) -> Option<(Vec<Row>, usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + 8..at + 8 + len as usize)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((decode(payload)?, at + 8 + len as usize))
}

fn encode(pieces: &[&[Row]]) -> Vec<u8> {
    let len = crate::history::row::rows_in(pieces);
    let mut out = Vec::with_capacity(len * 40);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for r in pieces.iter().flat_map(|p| p.iter()) {
        out.extend_from_slice(&r.ts.timestamp_micros().to_le_bytes());
        out.extend_from_slice(&r.register_id.to_le_bytes());
        out.extend_from_slice(&r.device_id.to_le_bytes());
        match r.value() {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            None => out.push(0),
        }
        text(&mut out, r.value_text());
        out.push(match r.quality {
            Quality::Good => 0,
            Quality::Bad => 1,
            Quality::Uncertain => 2,
        });
        text(&mut out, r.detail());
    }
    out
}

fn text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

/// Reads what `encode` wrote; `None` for anything malformed (the checksum
/// should have caught it, but a reader never trusts its input).
fn decode(b: &[u8]) -> Option<Vec<Row>> {
    let mut r = Reader { b, at: 0 };
    let n = r.u32()? as usize;
    let mut rows = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let ts = DateTime::from_timestamp_micros(i64::from_le_bytes(r.take(8)?.try_into().ok()?))?;
        let register_id = i32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let device_id = i32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let value = match r.take(1)?[0] {
            0 => None,
            1 => Some(f64::from_bits(u64::from_le_bytes(
                r.take(8)?.try_into().ok()?,
            ))),
            _ => return None,
        };
        let value_text = r.text()?;
        let quality = match r.take(1)?[0] {
            0 => Quality::Good,
            1 => Quality::Bad,
            2 => Quality::Uncertain,
            _ => return None,
        };
        let detail = r.text()?;
        rows.push(Row::new(
            ts,
            register_id,
            device_id,
            value,
            value_text.as_deref(),
            quality,
            detail.as_deref(),
        ));
    }
    (r.at == b.len()).then_some(rows)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn text(&mut self) -> Option<Option<String>> {
        match self.u32()? {
            u32::MAX => Some(None),
            n => Some(Some(
                String::from_utf8(self.take(n as usize)?.to_vec()).ok()?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(start: i64, n: i64) -> Vec<Row> {
        (start..start + n)
            .map(|i| {
                Row::new(
                    DateTime::from_timestamp_micros(1_700_000_000_000_000 + i).unwrap(),
                    i as i32,
                    1,
                    (i % 3 != 0).then_some(i as f64 / 3.0),
                    (i % 5 == 0).then(|| format!("text {i} ✓")).as_deref(),
                    if i % 3 == 0 {
                        Quality::Bad
                    } else {
                        Quality::Good
                    },
                    (i % 3 == 0).then_some("timeout after 1000 ms"),
                )
            })
            .collect()
    }

    /// A spool written before NaN and infinity were stored as NULL may hold
    /// them: they come back as NULL, never as a number to aggregate.
    #[test]
    fn a_spooled_nan_or_infinity_comes_back_as_null() {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let one = Row::new(
            ts,
            7,
            1,
            Some(1.0),
            None,
            Quality::Uncertain,
            Some("NaN float"),
        );
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut bytes = encode(&[&[one.clone()][..]]);
            let at = bytes
                .windows(8)
                .position(|w| w == 1.0f64.to_bits().to_le_bytes())
                .unwrap();
            bytes[at..at + 8].copy_from_slice(&x.to_bits().to_le_bytes());
            let back = decode(&bytes).unwrap();
            assert_eq!(back[0].value(), None, "{x}");
            assert_eq!(back[0].detail(), Some("NaN float"));
        }
    }

    #[test]
    fn batches_come_back_in_order_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), None).unwrap();
        spool.append(&batch(0, 10)).unwrap();
        spool.append(&batch(10, 5)).unwrap();
        spool.seal();
        let segs = spool.segments().unwrap();
        assert_eq!(segs.len(), 1);
        let seg = Spool::read(&segs[0]).unwrap();
        assert_eq!(seg.damaged, 0);
        assert_eq!(seg.batches, [batch(0, 10), batch(10, 5)]);
        // A reopened spool continues after the existing segments.
        let mut again = Spool::open(dir.path(), None).unwrap();
        again.append(&batch(15, 1)).unwrap();
        assert_eq!(again.segments().unwrap().len(), 2);
    }

    #[test]
    fn a_corrupted_record_is_reported_and_the_good_ones_around_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), None).unwrap();
        for i in 0..3 {
            spool.append(&batch(i * 10, 10)).unwrap();
        }
        let path = spool.segments().unwrap().remove(0);
        let mut bytes = fs::read(&path).unwrap();
        let record = bytes.len() / 3;
        bytes[record + record / 2] ^= 0xFF; // inside the second record
        fs::write(&path, &bytes).unwrap();
        let seg = Spool::read(&path).unwrap();
        assert_eq!(seg.damaged, 1);
        assert_eq!(seg.batches, [batch(0, 10), batch(20, 10)]);
    }

    #[test]
    fn a_truncated_tail_keeps_every_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), None).unwrap();
        spool.append(&batch(0, 10)).unwrap();
        spool.append(&batch(10, 10)).unwrap();
        let path = spool.segments().unwrap().remove(0);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let seg = Spool::read(&path).unwrap();
        assert_eq!((seg.batches.len(), seg.damaged), (1, 1));
        assert_eq!(seg.batches[0], batch(0, 10));
    }
}
