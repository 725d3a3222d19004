//! Disk stalls made on purpose during a fleet's window (`fleet --stall`).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _};

/// A disk stall made on purpose: `register_readings` held locked for `hold`
/// once every `every`, so the history writer's COPY waits as it does when
/// the database waits for its disk. On a VM's disk real stalls come and go
/// by the hour; this makes the memory and the tails of a stalled writer
/// measurable on demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    pub hold: Duration,
    pub every: Duration,
}

/// Parses `HOLD/EVERY`, e.g. `800ms/4s`.
pub fn parse_stall(s: &str) -> Result<Stall, String> {
    let (hold, every) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not HOLD/EVERY; write e.g. 800ms/4s"))?;
    let hold = regpoll::registry::parse_duration(hold.trim())?;
    let every = regpoll::registry::parse_duration(every.trim())?;
    if hold.is_zero() || hold >= every {
        return Err(format!(
            "`{s}`: the hold must be longer than 0 and shorter than the time between stalls, e.g. 800ms/4s"
        ));
    }
    Ok(Stall { hold, every })
}

/// Holds `register_readings` locked for `hold` in a transaction of its own.
pub async fn stall_once(conn: &mut sqlx::PgConnection, hold: Duration) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    tx.execute("LOCK TABLE register_readings IN ACCESS EXCLUSIVE MODE")
        .await
        .context("cannot lock register_readings")?;
    sqlx::query("SELECT pg_sleep($1)")
        .bind(hold.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Makes stalls until told to stop (it ends the one under way first);
/// returns how many it made.
pub async fn make_stalls(
    url: String,
    stall: Stall,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let mut made = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(stall.every - stall.hold) => {
                stall_once(&mut conn, stall.hold).await?;
                made += 1;
            }
            _ = &mut stop => break,
        }
    }
    conn.close().await?;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_are_written_hold_slash_every() {
        assert_eq!(
            parse_stall("800ms/4s"),
            Ok(Stall {
                hold: Duration::from_millis(800),
                every: Duration::from_secs(4)
            })
        );
        for bad in ["800ms", "4s/800ms", "0s/1s", "1s/1s", "x/4s"] {
            let e = parse_stall(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(
            parse_stall("4s/800ms")
                .unwrap_err()
                .contains("e.g. 800ms/4s")
        );
    }
}
