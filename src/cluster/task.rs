//! The cluster task: joins, renews the lease every heartbeat, balances the
//! links over the live instances, and tells the supervisor (which owns the
//! fleet) which links to poll. See the module comment of `cluster`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::store::{self, SessionError};
use super::{ClusterView, owner_of};

/// Every link of the registry's active devices. Published by the
/// supervisor after every load.
pub type Links = BTreeMap<String, LinkInfo>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// Devices behind it.
    pub devices: u32,
    /// A serial line of the machine (`transport: rtu`): only instances that
    /// have its device path may own it.
    pub serial: bool,
}

/// What the cluster task asks of the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Poll these links' devices from now on; each with the time after
    /// which its firings are this instance's (a planned handover), or
    /// `None`: from now.
    Own(Vec<(String, Option<DateTime<Utc>>)>),
    /// Stop polling these links' devices; answered once their in-flight
    /// polls have finished, with the time.
    Release {
        links: Vec<String>,
        done: oneshot::Sender<DateTime<Utc>>,
    },
}

/// The task's side of the channels.
pub struct Wiring {
    pub links: watch::Receiver<Arc<Links>>,
    pub fleet: mpsc::Sender<Command>,
    /// Sent at shutdown: release everything, leave, then answer.
    pub leave: oneshot::Receiver<oneshot::Sender<()>>,
}

/// Runs until told to leave.
pub async fn run(pool: PgPool, view: Arc<ClusterView>, wiring: Wiring) {
    let Wiring {
        links,
        fleet,
        mut leave,
    } = wiring;
    let mut member = Membership {
        pool,
        view,
        links,
        fleet,
        session: None,
        held: BTreeSet::new(),
        stale: None,
        failing: false,
        id_taken_logged: false,
    };
    let mut listener: Option<PgListener> = None;
    let mut registry_open = true;
    let heartbeat = member.view.settings.heartbeat;
    loop {
        // The next heartbeat is one period after this round began, however
        // many notifications brought rounds forward meanwhile.
        let next = Instant::now() + heartbeat;
        if listener.is_none() {
            // Bounded: a database that does not answer must not hold the
            // loop where the fence is not watched.
            listener = tokio::time::timeout(heartbeat, listen(&member.pool))
                .await
                .ok()
                .flatten();
        }
        // A round is abandoned when the fence closes meanwhile: a database
        // that hangs must not keep this instance polling past its lease.
        let fence_at = member.fence_deadline();
        let fenced = tokio::select! {
            () = member.round() => false,
            () = sleep_until_opt(fence_at) => true,
        };
        if fenced {
            member.fenced(NOT_RENEWED).await;
        }
        let fence_at = member.fence_deadline();
        let woke = tokio::select! {
            reply = &mut leave => Wake::Leave(reply.ok()),
            () = tokio::time::sleep_until(next.into()) => Wake::Heartbeat,
            () = sleep_until_opt(fence_at) => Wake::Fence,
            notified = recv(&mut listener) => Wake::Notified(notified),
            changed = member.links.changed(), if registry_open => Wake::Registry(changed.is_ok()),
        };
        match woke {
            Wake::Leave(reply) => {
                member.leave().await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return;
            }
            Wake::Fence => member.fenced(NOT_RENEWED).await,
            Wake::Notified(false) => listener = None,
            // The supervisor has ended: the service is stopping.
            Wake::Registry(false) => registry_open = false,
            Wake::Heartbeat | Wake::Notified(true) | Wake::Registry(true) => {}
        }
    }
}

const NOT_RENEWED: &str = "the database did not answer the lease renewal in time";

enum Wake {
    Leave(Option<oneshot::Sender<()>>),
    Heartbeat,
    Fence,
    Notified(bool),
    Registry(bool),
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut l = PgListener::connect_with(pool).await.ok()?;
    l.listen(store::CHANNEL).await.ok()?;
    Some(l)
}

/// True on a notification; false when the listening connection is lost.
async fn recv(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Membership {
    pool: PgPool,
    view: Arc<ClusterView>,
    links: watch::Receiver<Arc<Links>>,
    fleet: mpsc::Sender<Command>,
    /// This instance's session, once joined.
    session: Option<i64>,
    /// The links this session owns in the database and polls.
    held: BTreeSet<String>,
    /// A session given up after a fence, with when its polling stopped; it
    /// is deleted (and its links handed off) before joining again.
    stale: Option<(i64, DateTime<Utc>)>,
    /// Whether the last round failed (errors are logged when this turns).
    failing: bool,
    id_taken_logged: bool,
}

impl Membership {
    fn fence_deadline(&self) -> Option<Instant> {
        let left = self.view.fence.remaining();
        (self.session.is_some() && !self.held.is_empty()).then(|| Instant::now() + left)
    }

    /// The devices behind the links this session holds.
    fn devices_held(&self, links: &Links) -> usize {
        self.held
            .iter()
            .map(|l| links.get(l).map_or(0, |i| i.devices as usize))
            .sum()
    }

    async fn round(&mut self) {
        let result = self.try_round().await;
        match result {
            Ok(()) => {
                if self.failing {
                    tracing::info!("cluster heartbeat works again");
                }
                self.failing = false;
                // Not renewed while waiting for a held instance id.
                let renewed = self.session.map(|_| Utc::now());
                self.view.update(|s| {
                    s.last_error = None;
                    s.renewed_at = renewed.or(s.renewed_at);
                });
            }
            Err(SessionError::Lost) => {
                self.fenced("another instance deleted this one after its lease expired")
                    .await;
            }
            Err(SessionError::Database(e)) => {
                let text = crate::db::error_text(&e);
                if !self.failing {
                    tracing::warn!(error = %text, "cluster heartbeat failed; polling continues until the lease runs out");
                }
                self.failing = true;
                self.view.update(|s| s.last_error = Some(text));
            }
        }
    }

    async fn try_round(&mut self) -> Result<(), SessionError> {
        let settings = self.view.settings.clone();
        if let Some((stale, at)) = self.stale {
            store::leave(&self.pool, stale, &settings.instance_id, at).await?;
            self.stale = None;
        }
        let session = match self.session {
            Some(s) => s,
            None => match self.join().await? {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        let links = Arc::clone(&*self.links.borrow());
        let devices = self.devices_held(&links);
        // The serial lines this machine has: the others cannot poll them.
        let serial: Vec<String> = links
            .iter()
            .filter(|(l, i)| i.serial && std::path::Path::new(l).exists())
            .map(|(l, _)| l.clone())
            .collect();
        let sent = Instant::now();
        store::renew(
            &self.pool,
            session,
            settings.lease,
            (self.held.len(), devices),
            self.view.address(),
            &serial,
        )
        .await?;
        // The lease ends, as the others see it, no earlier than `sent + lease`.
        self.view
            .fence
            .extend_to(sent + settings.lease - settings.fence_margin);
        for r in store::reap(&self.pool).await? {
            tracing::warn!(instance = %r.instance_id, expired_s = r.expired_s, links = r.links, "cluster instance's lease expired; its endpoints are free to take over");
        }
        let members = store::members(&self.pool, Some(session)).await?;
        let ids: Vec<String> = members.iter().map(|m| m.instance_id.clone()).collect();
        let me = settings.instance_id.as_str();
        let wanted: BTreeSet<&String> = links
            .iter()
            .filter(|(l, info)| {
                if info.serial {
                    let able: Vec<String> = members
                        .iter()
                        .filter(|m| m.serial_lines.iter().any(|p| p == *l))
                        .map(|m| m.instance_id.clone())
                        .collect();
                    owner_of(l, &able) == Some(me)
                } else {
                    owner_of(l, &ids) == Some(me)
                }
            })
            .map(|(l, _)| l)
            .collect();
        let release: Vec<String> = self
            .held
            .iter()
            .filter(|l| !wanted.contains(l))
            .cloned()
            .collect();
        if !release.is_empty() {
            self.release(session, release).await?;
        }
        let acquire: Vec<String> = wanted
            .iter()
            .filter(|l| !self.held.contains(**l))
            .map(|l| (*l).clone())
            .collect();
        if !acquire.is_empty() && self.view.fence.is_open() {
            self.acquire(session, &acquire).await?;
        }
        let devices_owned = self.devices_held(&links);
        let links_owned = self.held.len();
        self.view.update(|s| {
            s.session = Some(session);
            s.members = members;
            s.links_owned = links_owned;
            s.devices_owned = devices_owned;
        });
        Ok(())
    }

    async fn join(&mut self) -> Result<Option<i64>, SessionError> {
        let settings = &self.view.settings;
        // An expired holder of this id (this process's own predecessor,
        // usually) is deleted first.
        store::reap(&self.pool).await?;
        let sent = Instant::now();
        match store::join(
            &self.pool,
            &settings.instance_id,
            self.view.address(),
            settings.lease,
        )
        .await?
        {
            Some(session) => {
                self.view
                    .fence
                    .extend_to(sent + settings.lease - settings.fence_margin);
                tracing::info!(instance = %settings.instance_id, session, "joined the cluster");
                self.session = Some(session);
                self.id_taken_logged = false;
                Ok(Some(session))
            }
            None => {
                if !self.id_taken_logged {
                    let age = store::heartbeat_age(&self.pool, &settings.instance_id).await?;
                    tracing::warn!(
                        instance = %settings.instance_id,
                        heartbeat_age_s = age.unwrap_or_default(),
                        "a live instance holds this --instance-id; waiting until its lease expires (if it is another running instance, give this one another id)"
                    );
                    self.id_taken_logged = true;
                }
                Ok(None)
            }
        }
    }

    /// Stops polling `links`, then gives them up.
    async fn release(&mut self, session: i64, links: Vec<String>) -> Result<(), SessionError> {
        let Some(at) = self.stop(links.clone()).await else {
            return Ok(());
        };
        for l in &links {
            self.held.remove(l);
        }
        store::release(
            &self.pool,
            session,
            &self.view.settings.instance_id,
            &links,
            at,
        )
        .await?;
        self.view
            .handovers
            .released
            .fetch_add(links.len() as u64, Ordering::Relaxed);
        tracing::info!(links = links.len(), "released endpoints to other instances");
        Ok(())
    }

    async fn acquire(&mut self, session: i64, links: &[String]) -> Result<(), SessionError> {
        let got = store::acquire(&self.pool, session, links).await?;
        if got.is_empty() {
            return Ok(());
        }
        // A handover is resumed from the previous owner's last poll only
        // while it is recent: an old one (a cluster stopped for a while)
        // would only make the first poll late and count skipped firings.
        let recent = self.view.settings.lease + self.view.settings.heartbeat;
        let now = Utc::now();
        let mut taken_over = 0u64;
        let own: Vec<(String, Option<DateTime<Utc>>)> = got
            .iter()
            .map(|a| {
                if a.previous.is_some() && a.released_at.is_none() {
                    taken_over += 1;
                }
                let resume = a
                    .released_at
                    .filter(|at| (now - *at).to_std().unwrap_or_default() < recent);
                (a.link.clone(), resume)
            })
            .collect();
        for a in &got {
            self.held.insert(a.link.clone());
        }
        let handovers = &self.view.handovers;
        handovers
            .acquired
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        handovers
            .taken_over
            .fetch_add(taken_over, Ordering::Relaxed);
        tracing::info!(links = got.len(), taken_over, "acquired endpoints");
        let _ = self.fleet.send(Command::Own(own)).await;
        Ok(())
    }

    /// Asks the supervisor to stop polling `links`; `None` if it has ended.
    async fn stop(&self, links: Vec<String>) -> Option<DateTime<Utc>> {
        if links.is_empty() {
            return Some(Utc::now());
        }
        let (done, stopped) = oneshot::channel();
        self.fleet
            .send(Command::Release { links, done })
            .await
            .ok()?;
        stopped.await.ok()
    }

    /// The lease is lost or about to be: stop every request now (the fence),
    /// stop the devices, and rejoin as a new session when the database
    /// answers again.
    async fn fenced(&mut self, why: &str) {
        self.view.fence.close();
        let Some(session) = self.session.take() else {
            return;
        };
        self.view.handovers.fenced.fetch_add(1, Ordering::Relaxed);
        let links: Vec<String> = std::mem::take(&mut self.held).into_iter().collect();
        tracing::error!(
            reason = why,
            links = links.len(),
            "stopped polling: this instance's cluster lease ran out; it rejoins when the database answers"
        );
        let at = self.stop(links).await.unwrap_or_else(Utc::now);
        self.stale = Some((session, at));
        self.view.update(|s| {
            s.session = None;
            s.links_owned = 0;
            s.devices_owned = 0;
        });
    }

    /// A graceful stop: release everything (polls finish first), then
    /// delete this session so the others take over at once.
    async fn leave(&mut self) {
        let links: Vec<String> = std::mem::take(&mut self.held).into_iter().collect();
        let released = links.len();
        let at = self.stop(links).await.unwrap_or_else(Utc::now);
        self.view.fence.close();
        let session = self.session.take().or(self.stale.take().map(|(s, _)| s));
        let Some(session) = session else {
            return;
        };
        let left = tokio::time::timeout(
            Duration::from_secs(5),
            store::leave(&self.pool, session, &self.view.settings.instance_id, at),
        )
        .await;
        match left {
            Ok(Ok(())) => {
                self.view
                    .handovers
                    .released
                    .fetch_add(released as u64, Ordering::Relaxed);
                tracing::info!(
                    links = released,
                    "left the cluster; the others take over now"
                );
            }
            Ok(Err(e)) => tracing::warn!(
                error = crate::db::error_text(&e),
                "cannot leave the cluster; the others take over when this instance's lease expires"
            ),
            Err(_) => tracing::warn!(
                "leaving the cluster timed out; the others take over when this instance's lease expires"
            ),
        }
    }
}
