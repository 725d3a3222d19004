//! The PostgreSQL binary COPY format (PGCOPY), written by regpoll because sqlx
//! has no encoder. It is the fastest way into a table: no SQL parsing per row
//! and no text conversion of numbers and timestamps.
//!
//! Layout (PostgreSQL docs, "COPY", Binary Format): an 11-byte signature, a
//! 32-bit flags field and a 32-bit header-extension length; then one tuple per
//! row: a 16-bit field count and, per field, a 32-bit length (-1 for NULL)
//! followed by the value in the type's binary send format; then a 16-bit -1.

use chrono::{DateTime, Utc};

use crate::history::row::Row;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 UTC.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// Columns of `COPY_STATEMENT`, in order.
const FIELDS: i16 = 7;

/// The statement the encoded bytes are sent with.
pub const COPY_STATEMENT: &str = concat!(
    "COPY register_readings (",
    written_columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// Encodes `rows` as one complete PGCOPY stream.
pub fn encode(rows: &[Row]) -> Vec<u8> {
    // ~60 bytes a row without text; one allocation for most batches.
    let mut out = Vec::with_capacity(HEADER_LEN + rows.len() * 72 + 2);
    header(&mut out);
    tuples(&mut out, rows);
    trailer(&mut out);
    out
}

/// Length of the stream's header.
pub const HEADER_LEN: usize = 19;

/// Appends the stream's header: what comes before the first tuple.
pub fn header(out: &mut Vec<u8>) {
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// Appends one tuple per row. A stream may be sent in pieces, each a run
/// of tuples, between `header` and `trailer`.
pub fn tuples(out: &mut Vec<u8>, rows: &[Row]) {
    for r in rows {
        out.extend_from_slice(&FIELDS.to_be_bytes());
        timestamptz(out, r.ts);
        int4(out, r.register_id);
        int4(out, r.device_id);
        match r.value() {
            Some(v) => {
                out.extend_from_slice(&8i32.to_be_bytes());
                out.extend_from_slice(&v.to_bits().to_be_bytes());
            }
            None => null(out),
        }
        text(out, r.value_text());
        text(out, Some(r.quality.as_str()));
        text(out, r.detail());
    }
}

/// Appends the end-of-data marker.
pub fn trailer(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn int4(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&4i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

fn timestamptz(out: &mut Vec<u8>, ts: DateTime<Utc>) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&(ts.timestamp_micros() - PG_EPOCH_OFFSET_US).to_be_bytes());
}

fn text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => {
            out.extend_from_slice(&(s.len() as i32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => null(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Quality;

    #[test]
    fn one_row_is_laid_out_as_the_format_says() {
        let row = Row::new(
            DateTime::from_timestamp_micros(PG_EPOCH_OFFSET_US + 1).unwrap(),
            7,
            3,
            None,
            Some("é"),
            Quality::Bad,
            None,
        );
        let b = encode(&[row]);
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]); // flags, extension length
        want.extend([0, 7]); // 7 fields
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]); // ts: 1 µs after 2000-01-01
        want.extend([0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 3]); // register_id, device_id
        want.extend([0xFF, 0xFF, 0xFF, 0xFF]); // value NULL
        want.extend([0, 0, 0, 2, 0xC3, 0xA9]); // value_text "é"
        want.extend([0, 0, 0, 3, b'b', b'a', b'd']); // quality
        want.extend([0xFF, 0xFF, 0xFF, 0xFF]); // detail NULL
        want.extend([0xFF, 0xFF]); // trailer
        assert_eq!(b, want);
    }
}
