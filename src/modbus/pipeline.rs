//! The connection of a Modbus TCP gateway that takes several outstanding
//! transactions (`max_in_flight` above 1): requests to different units go
//! out without waiting for each other's answers, and a reader task hands
//! each answer to its request by transaction id, in whatever order they
//! come back.
//!
//! This path costs a task per connection and, per request, a channel, a
//! table entry and a lock or two; the default (`max_in_flight: 1`) never
//! takes it (see `endpoint`). What a timeout, a late reply and a frame
//! nobody asked for mean is the same as on the default path (`tcp`): the
//! abandoned ids are remembered and their late replies dropped, an id never
//! sent puts the stream out of step and drops the connection.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_modbus::ExceptionCode;

use super::tcp::{self, CallError};
use super::{Words, stats::EndpointStats};
use crate::registry::RegisterKind;

/// How many abandoned transactions a pipelined connection remembers.
const ABANDONED: usize = 64;

type Answer = Result<Vec<u8>, CallError>;

/// One open pipelined connection: the write half, the requests awaiting
/// answers, and the task reading them.
pub(crate) struct PipeLink {
    writer: Mutex<OwnedWriteHalf>,
    table: Arc<StdMutex<Table>>,
    next_transaction: AtomicU16,
    step: u16,
    /// Set by the reader when the stream broke or went out of step.
    dead: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl Drop for PipeLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Requests sent and not answered, by transaction id, and those given up.
#[derive(Default)]
struct Table {
    pending: HashMap<u16, (u8, oneshot::Sender<Answer>)>,
    abandoned: Vec<u16>,
}

impl PipeLink {
    pub fn new(stream: TcpStream, stats: Arc<EndpointStats>) -> Self {
        let (read, write) = stream.into_split();
        let table = Arc::new(StdMutex::new(Table::default()));
        let dead = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_answers(
            read,
            Arc::clone(&table),
            Arc::clone(&dead),
            stats,
        ));
        Self {
            writer: Mutex::new(write),
            table,
            next_transaction: AtomicU16::new(tcp::random_u16()),
            step: tcp::random_u16() | 1,
            dead,
            reader,
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Sends one read and waits up to `timeout` for its answer.
    pub async fn read(
        &self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Option<Result<Result<Words, ExceptionCode>, CallError>> {
        let transaction = self
            .next_transaction
            .fetch_add(self.step, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.table).pending.insert(transaction, (unit, tx));
        let request = tcp::request(transaction, unit, kind, start, count);
        // Whether the request is being written: a timeout then cuts it off
        // and leaves the stream out of step.
        let mut writing = false;
        let outcome = tokio::time::timeout(timeout, async {
            let mut writer = self.writer.lock().await;
            writing = true;
            writer.write_all(&request).await?;
            writing = false;
            drop(writer);
            rx.await.map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the connection's reader stopped")
            })
        })
        .await;
        let answer = match outcome {
            Err(_) => {
                if writing {
                    self.dead.store(true, Ordering::Relaxed);
                }
                let mut t = lock(&self.table);
                t.pending.remove(&transaction);
                if t.abandoned.len() == ABANDONED {
                    t.abandoned.remove(0);
                }
                t.abandoned.push(transaction);
                return None;
            }
            Ok(Err(e)) => {
                // A write that failed leaves the stream out of step.
                self.dead.store(true, Ordering::Relaxed);
                return Some(Err(CallError::Transport(e)));
            }
            Ok(Ok(answer)) => answer,
        };
        Some(answer.and_then(|frame| tcp::parse(&frame[7..], kind.read_function(), kind)))
    }
}

fn lock(t: &StdMutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads frames until the stream ends or goes out of step, handing each
/// answer to its request; then fails every request still waiting.
async fn read_answers(
    mut read: OwnedReadHalf,
    table: Arc<StdMutex<Table>>,
    dead: Arc<AtomicBool>,
    stats: Arc<EndpointStats>,
) {
    let mut buffer = vec![0u8; 2 * tcp::MAX_FRAME];
    let mut filled = 0;
    let failure = loop {
        match tcp::frame_end_in(&buffer[..filled]) {
            Err(e) => break e,
            Ok(Some(end)) => {
                let transaction = u16::from_be_bytes([buffer[0], buffer[1]]);
                let unit = buffer[6];
                let mut t = lock(&table);
                if let Some((want, tx)) = t.pending.remove(&transaction) {
                    let answer = if want == unit {
                        Ok(buffer[..end].to_vec())
                    } else {
                        Err(CallError::Protocol(format!(
                            "answer to transaction {transaction} from unit {unit}, expected unit {want}"
                        )))
                    };
                    let _ = tx.send(answer);
                } else if let Some(i) = t.abandoned.iter().position(|a| *a == transaction) {
                    t.abandoned.swap_remove(i);
                    stats
                        .late_replies
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    break CallError::Protocol(format!(
                        "frame for transaction {transaction} from unit {unit}, which was never sent"
                    ));
                }
                drop(t);
                buffer.copy_within(end..filled, 0);
                filled -= end;
            }
            Ok(None) => match read.read(&mut buffer[filled..]).await {
                Ok(0) => break tcp::closed(),
                Ok(n) => filled += n,
                Err(e) => break CallError::Transport(e),
            },
        }
    };
    dead.store(true, Ordering::Relaxed);
    let reason = match &failure {
        CallError::Transport(e) => format!("transport: {e}"),
        CallError::Protocol(m) | CallError::Stale(m) => m.clone(),
    };
    tracing::debug!(reason, "pipelined connection out of step or closed");
    for (_, (_, tx)) in lock(&table).pending.drain() {
        let _ = tx.send(Err(match &failure {
            CallError::Transport(e) => {
                CallError::Transport(io::Error::new(e.kind(), e.to_string()))
            }
            _ => CallError::Protocol(reason.clone()),
        }));
    }
}

/// Bounds the requests in flight on one pipelined endpoint.
pub(crate) struct Pipeline {
    pub permits: Semaphore,
}

impl Pipeline {
    pub fn new(max_in_flight: u8) -> Self {
        Self {
            permits: Semaphore::new(usize::from(max_in_flight)),
        }
    }
}
