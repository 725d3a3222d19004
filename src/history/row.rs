//! One row of `register_readings` as the history writer holds it, and rows
//! kept in pieces while they wait to be written.

use chrono::{DateTime, Utc};

use crate::reading::{PollReport, Quality, Reading};

/// One row of `register_readings`, in 40 bytes: the writer holds every
/// reading it has not written yet as one of these, so their size is what a
/// COPY that waits for the disk costs in memory (100,000 rows a second at
/// 10,000 devices). Text and detail are rare (strings, and values that are
/// not good), so they live behind one pointer; with them inline a row was
/// 88 bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts: DateTime<Utc>,
    pub register_id: i32,
    pub device_id: i32,
    pub quality: Quality,
    /// `value` is NULL when false (`value` then holds 0).
    has_value: bool,
    value: f64,
    text: Option<Box<RowText>>,
}

#[derive(Debug, Clone, PartialEq)]
struct RowText {
    value_text: Option<Box<str>>,
    detail: Option<Box<str>>,
}

impl Row {
    pub fn new(
        ts: DateTime<Utc>,
        register_id: i32,
        device_id: i32,
        value: Option<f64>,
        value_text: Option<&str>,
        quality: Quality,
        detail: Option<&str>,
    ) -> Row {
        let text = (value_text.is_some() || detail.is_some()).then(|| {
            Box::new(RowText {
                value_text: value_text.map(Box::from),
                detail: detail.map(Box::from),
            })
        });
        // NaN and infinity are stored as NULL whoever made the row (an old
        // spool file, a future producer): no aggregate may meet one.
        let value = value.filter(|v| v.is_finite());
        Row {
            ts,
            register_id,
            device_id,
            quality,
            has_value: value.is_some(),
            value: value.unwrap_or(0.0),
            text,
        }
    }

    /// `register_readings.value`: the number (bool as 0/1), NULL for none
    /// and for NaN or infinity.
    pub fn value(&self) -> Option<f64> {
        self.has_value.then_some(self.value)
    }

    /// `register_readings.value_text`: a string register's text.
    pub fn value_text(&self) -> Option<&str> {
        self.text.as_ref()?.value_text.as_deref()
    }

    /// `register_readings.detail`: why the value is not good.
    pub fn detail(&self) -> Option<&str> {
        self.text.as_ref()?.detail.as_deref()
    }
}

/// Rows kept in pieces of at most `ROWS_PER_PIECE`, each allocated whole when
/// it is started. A batch grows while the writer waits for the database
/// (100,000 rows a second at 10,000 devices, for as long as a COPY stalls):
/// as one `Vec` it doubled, copying itself each time and holding up to
/// twice its rows, and old and new buffer at once while it copied. In
/// pieces nothing is copied and at most one piece is spare.
#[derive(Debug, Default)]
pub struct Rows {
    pieces: Vec<Vec<Row>>,
    len: usize,
}

/// Rows of one piece of [`Rows`]: 160 KiB at 40 bytes a row. (Not the
/// COPY's own pieces, `postgres::PIECE_ROWS`, which are what is sent at once.)
const ROWS_PER_PIECE: usize = 4_096;

impl Rows {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, row: Row) {
        match self.pieces.last_mut() {
            Some(piece) if piece.len() < piece.capacity() => piece.push(row),
            _ => {
                let mut piece = Vec::with_capacity(ROWS_PER_PIECE);
                piece.push(row);
                self.pieces.push(piece);
            }
        }
        self.len += 1;
    }

    /// Puts `other`'s rows after these, moving its pieces (no row is copied).
    pub fn append(&mut self, other: Rows) {
        self.len += other.len;
        self.pieces.extend(other.pieces);
    }

    /// The rows, piece by piece, in order.
    pub fn pieces(&self) -> Vec<&[Row]> {
        self.pieces.iter().map(Vec::as_slice).collect()
    }
}

impl Extend<Row> for Rows {
    fn extend<I: IntoIterator<Item = Row>>(&mut self, rows: I) {
        for row in rows {
            self.push(row);
        }
    }
}

/// How many rows a batch held in pieces has.
pub fn rows_in(pieces: &[&[Row]]) -> usize {
    pieces.iter().map(|p| p.len()).sum()
}

/// Every reading of `report` as a row (the history writer leaves some out
/// first: see `history::deadband`).
pub fn rows_of(report: &PollReport, out: &mut impl Extend<Row>) {
    out.extend(report.readings.iter().map(|r| row_of(report, r)));
}

/// The row of one reading of `report`.
pub fn row_of(report: &PollReport, r: &Reading) -> Row {
    Row::new(
        r.ts,
        report.device.register_id(r.index),
        report.device.id,
        r.value.as_f64(),
        r.value.as_text(),
        r.quality,
        r.detail.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> Vec<Row> {
        let ts = DateTime::from_timestamp_micros(0).unwrap();
        (0..n)
            .map(|i| Row::new(ts, i as i32, 1, Some(i as f64), None, Quality::Good, None))
            .collect()
    }

    fn ids(rows: &Rows) -> Vec<i32> {
        rows.pieces()
            .iter()
            .flat_map(|p| p.iter())
            .map(|r| r.register_id)
            .collect()
    }

    #[test]
    fn rows_grow_in_whole_pieces_and_keep_their_order() {
        let mut rows = Rows::default();
        rows.extend(numbered(2 * ROWS_PER_PIECE + 5));
        assert_eq!(rows.len(), 2 * ROWS_PER_PIECE + 5);
        let pieces = rows.pieces();
        assert_eq!(pieces.len(), 3);
        assert!(rows.pieces.iter().all(|p| p.capacity() == ROWS_PER_PIECE));
        assert_eq!(ids(&rows), (0..rows.len() as i32).collect::<Vec<_>>());
        assert_eq!(rows_in(&pieces), rows.len());
        assert!(Rows::default().pieces().is_empty());
    }

    #[test]
    fn a_row_stays_small() {
        assert!(std::mem::size_of::<Row>() <= 40);
    }

    #[test]
    fn a_row_gives_back_what_it_was_made_of() {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let good = Row::new(ts, 7, 3, Some(-0.0), None, Quality::Good, None);
        assert_eq!(good.value().map(f64::to_bits), Some((-0.0f64).to_bits()));
        assert_eq!((good.value_text(), good.detail()), (None, None));

        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let odd = Row::new(ts, 7, 3, Some(x), None, Quality::Uncertain, Some("NaN"));
            assert_eq!(odd.value(), None, "{x} is stored as NULL");
            assert_eq!(odd.detail(), Some("NaN"));
        }

        let bad = Row::new(
            ts,
            7,
            3,
            None,
            None,
            Quality::Bad,
            Some("timeout after 1000 ms"),
        );
        assert_eq!(bad.value(), None);
        assert_eq!(bad.detail(), Some("timeout after 1000 ms"));

        let text = Row::new(ts, 8, 3, None, Some("SN-1"), Quality::Good, None);
        assert_eq!(
            (text.value(), text.value_text(), text.detail()),
            (None, Some("SN-1"), None)
        );
        assert_eq!((text.ts, text.register_id, text.device_id), (ts, 8, 3));
    }
}
