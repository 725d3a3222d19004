//! Sorting a failed history write: will it work if tried again later, or
//! will the database refuse the same rows again, whatever happens?
//!
//! A retryable failure (the connection went, the pool had none free, the
//! server is starting or stopping, its disk is full, a lock or serialization
//! conflict) keeps the batch waiting: retried with backoff, spooled. A data
//! failure (a value or row the database refuses) would block every later
//! batch forever if retried, so the batch is split instead and the rows at
//! fault are quarantined (see `history::quarantine`).
//!
//! Only errors known to be about the rows count as data errors. Anything
//! else, such as a dropped table or a missing privilege, would refuse every
//! row alike: quarantining them all would empty history into the quarantine,
//! so those are retried, and kept, until someone fixes the database.

use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// What kind of failure a history write met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Try the same rows again later.
    Retryable,
    /// The database refuses (some of) these rows; trying again will not help.
    Data,
}

/// SQLSTATE codes, outside classes 22 (data exception) and 23 (integrity
/// constraint violation), that are about the rows written: a trigger's
/// `RAISE EXCEPTION` (P0001) and a value too large for an index (54000).
const PG_DATA_CODES: [&str; 2] = ["P0001", "54000"];

/// SQLite primary result codes that are about the rows written: a
/// constraint (including a trigger's `RAISE(ABORT, …)`), a datatype
/// mismatch, a value too big, a bind out of range.
const SQLITE_DATA_CODES: [i32; 4] = [
    19, // SQLITE_CONSTRAINT
    20, // SQLITE_MISMATCH
    18, // SQLITE_TOOBIG
    25, // SQLITE_RANGE
];

/// Sorts the error a history write returned. The store's errors carry
/// context (`cannot COPY … readings`), so the sqlx error is looked for
/// along the cause chain; an error with none is retryable.
pub fn classify(e: &anyhow::Error) -> Failure {
    e.chain()
        .find_map(|c| c.downcast_ref::<sqlx::Error>())
        .map_or(Failure::Retryable, classify_sqlx)
}

fn classify_sqlx(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                classify_sqlstate(pg.code())
            } else if db.try_downcast_ref::<SqliteError>().is_some() {
                let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                classify_sqlite(code)
            } else {
                Failure::Retryable
            }
        }
        // A value that cannot be encoded is refused the same way each time.
        sqlx::Error::Encode(_) => Failure::Data,
        // Io, Tls, Protocol, PoolTimedOut, PoolClosed, WorkerCrashed, … : the
        // link or the pool, not the rows.
        _ => Failure::Retryable,
    }
}

/// PostgreSQL: classes 22 and 23 are data errors (23505 of the primary key
/// never gets here: the store writes such a batch without the duplicates),
/// and the few others in `PG_DATA_CODES`. Everything else is retried:
/// 08 connection, 40001 serialization, 40P01 deadlock, 53 resources
/// (53100 disk full, 53300 too many connections), 57P01–57P03 shutting down
/// or starting, and what is not about rows.
pub fn classify_sqlstate(code: &str) -> Failure {
    if code.starts_with("22") || code.starts_with("23") || PG_DATA_CODES.contains(&code) {
        Failure::Data
    } else {
        Failure::Retryable
    }
}

/// SQLite: by the primary result code (the low byte of the extended code
/// sqlx reports). SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_FULL (13),
/// SQLITE_IOERR (10) and the rest are retried.
pub fn classify_sqlite(extended_code: i32) -> Failure {
    if SQLITE_DATA_CODES.contains(&(extended_code & 0xFF)) {
        Failure::Data
    } else {
        Failure::Retryable
    }
}

/// The database's own words for a refusal, for the quarantine's `error`
/// column and the log: the message and code of the database error when
/// there is one, the whole chain otherwise.
pub fn describe(e: &anyhow::Error) -> String {
    match e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) {
        Some(sqlx::Error::Database(db)) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_string(),
        },
        _ => crate::db::error_text(e.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn postgres_data_errors_are_classes_22_and_23_and_row_refusals() {
        for code in [
            "22021", // invalid byte sequence (a NUL in text)
            "22003", // numeric value out of range
            "22P05", // untranslatable character
            "23514", // check violation
            "23502", // not null violation
            "23503", // foreign key violation
            "23505", // a unique index other than the primary key
            "P0001", // a trigger's RAISE EXCEPTION
            "54000", // index row too large
        ] {
            assert_eq!(classify_sqlstate(code), Failure::Data, "{code}");
        }
    }

    #[test]
    fn postgres_link_load_and_lifecycle_errors_are_retryable() {
        for code in [
            "08006", // connection failure
            "08003", // connection does not exist
            "40001", // serialization failure
            "40P01", // deadlock
            "57P01", // admin shutdown
            "57P02", // crash shutdown
            "57P03", // cannot connect now (starting)
            "53300", // too many connections
            "53100", // disk full
            "53200", // out of memory
            "57014", // query canceled (statement timeout)
            "42P01", // undefined table: every row alike, fix the database
            "42501", // insufficient privilege: likewise
        ] {
            assert_eq!(classify_sqlstate(code), Failure::Retryable, "{code}");
        }
    }

    #[test]
    fn sqlite_constraints_and_mismatches_are_data_busy_and_full_are_not() {
        for code in [
            19, 1811, /* CONSTRAINT_TRIGGER */
            275,  /* CHECK */
            20, 18, 25,
        ] {
            assert_eq!(classify_sqlite(code), Failure::Data, "{code}");
        }
        for code in [
            5, 517, /* BUSY_SNAPSHOT */
            6, 13, 10, 3850, /* IOERR_… */
            14,
        ] {
            assert_eq!(classify_sqlite(code), Failure::Retryable, "{code}");
        }
    }

    #[test]
    fn link_and_pool_errors_found_under_context_are_retryable() {
        let io: anyhow::Error = Err::<(), _>(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
        .context("cannot COPY 3 readings into PostgreSQL")
        .unwrap_err();
        assert_eq!(classify(&io), Failure::Retryable);
        let pool = anyhow::Error::from(sqlx::Error::PoolTimedOut).context("no connection");
        assert_eq!(classify(&pool), Failure::Retryable);
        assert_eq!(
            classify(&anyhow::anyhow!("no sqlx error at all")),
            Failure::Retryable
        );
    }

    #[test]
    fn an_encode_error_under_context_is_data() {
        let e = anyhow::Error::from(sqlx::Error::Encode("value too long".into()))
            .context("cannot insert 1 readings into SQLite")
            .context("one more layer");
        assert_eq!(classify(&e), Failure::Data);
        assert!(describe(&e).contains("value too long"), "{}", describe(&e));
    }

    /// Real database errors, not hand-made ones: SQLite refusing a row
    /// through a trigger, and a busy-free failure (no such table).
    #[tokio::test]
    async fn a_real_sqlite_refusal_is_data_and_described_by_its_message() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TRIGGER no_sevens BEFORE INSERT ON t WHEN NEW.x = 7 \
             BEGIN SELECT RAISE(ABORT, 'sevens are refused'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (7)")
            .execute(&pool)
            .await
            .context("cannot insert")
            .unwrap_err();
        assert_eq!(classify(&refused), Failure::Data);
        assert!(describe(&refused).starts_with("sevens are refused (code "));
        let missing = sqlx::query("INSERT INTO nowhere VALUES (1)")
            .execute(&pool)
            .await
            .context("cannot insert")
            .unwrap_err();
        assert_eq!(classify(&missing), Failure::Retryable);
    }
}
