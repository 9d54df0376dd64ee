//! HTTP connection pools: per host, per worker. A host keeps one slot per data-path worker;
//! a worker touches its own slot, and another's only when its own has no idle connection
//! (before connecting on the shared runtime, see `take`; in any model when
//! `max_connections` is reached, see `gather_h1`), so the slot's lock is hardly ever
//! contended (one lock per checkout and per return). The pool lives in the `Host`: when a host
//! leaves its cluster (EDS, DNS, cluster removal), its idle connections close with it.
//! Connections hold only counters (`ConnGuard`), never the host, so there is no cycle.
//!
//! HTTP/1.1: idle connections are reused most-recently-used first; a connection is handed
//! back when the response body has been read to its end. HTTP/2: one multiplexed connection
//! per slot, shared by the worker's requests, with a cap on streams; a full connection
//! makes way for another.

use crate::http::body::Body;
use hyper::client::conn::{http1, http2};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Number of data-path workers (slots per host pool).
static WORKERS: AtomicUsize = AtomicUsize::new(1);
static NEXT_SHARED_WORKER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread is a per-core worker, whose client connections stay on it (see
    /// `take`). Per thread, so agents of both models can share a process (tests).
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// Sets the number of workers (before any pool is used).
pub fn set_workers(n: usize) {
    WORKERS.store(n.max(1), Ordering::Relaxed);
}

/// Sets whether this data-path thread is a per-core worker (each client connection's task
/// stays on the worker that accepted it) or a thread of the shared runtime (tasks move
/// between threads).
pub fn set_pinned(pinned: bool) {
    PINNED.with(|p| p.set(pinned));
}

/// Called on each data-path thread: which slot it uses.
pub fn set_worker_index(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// For threads of the shared runtime: takes the next index.
pub fn assign_worker_index() {
    let i = NEXT_SHARED_WORKER.fetch_add(1, Ordering::Relaxed);
    set_worker_index(i % WORKERS.load(Ordering::Relaxed));
    set_pinned(false);
}

fn worker() -> usize {
    WORKER.with(|w| w.get())
}

/// This thread's data-path worker index, and how many there are (per-worker state).
pub(crate) fn worker_slot() -> (usize, usize) {
    (worker(), WORKERS.load(Ordering::Relaxed))
}

struct Idle1 {
    tx: http1::SendRequest<Body>,
    since: Instant,
    served: u32,
}

/// A shared HTTP/2 connection and the streams open on it.
#[derive(Clone)]
pub struct H2Conn {
    pub tx: http2::SendRequest<Body>,
    pub streams: Arc<AtomicUsize>,
    pub served: Arc<AtomicUsize>,
}

/// The outcome of an HTTP/2 connect, shared with the requests that waited for it.
pub type H2Outcome = Option<Result<H2Conn, String>>;

#[derive(Default)]
struct Slot {
    h1: Vec<Idle1>,
    /// Idle connections of Plumb's own HTTP/1.1 client (requests without a body).
    /// Boxed: a connection moves between the pool, the request and its response body.
    #[allow(clippy::vec_box)]
    own: Vec<Box<crate::http::h1client::Conn>>,
    /// The next idle connection `put_own` looks at.
    sweep: usize,
    h2: Vec<H2Conn>,
    /// An HTTP/2 connect in progress: requests arriving meanwhile wait for it rather than
    /// each opening a connection (Envoy's pending requests).
    h2_connecting: Option<tokio::sync::watch::Receiver<H2Outcome>>,
}

/// What a request does for an HTTP/2 connection.
pub enum H2Take {
    /// A connection with a free stream (counted as taken).
    Ready(H2Conn),
    /// Another request is connecting: wait for its outcome.
    Wait(tokio::sync::watch::Receiver<H2Outcome>),
    /// Connect, then report with `finish_h2` (or `abandon_h2` when giving up).
    Connect(H2Ticket),
}

/// The job of connecting for one slot. The request's task may move to another thread while
/// it connects, so the ticket remembers the slot.
pub struct H2Ticket {
    slot: usize,
    tx: tokio::sync::watch::Sender<H2Outcome>,
}

/// At most this many idle HTTP/1.1 connections per host and worker.
const MAX_IDLE_H1: usize = 1024;

#[derive(Default)]
pub struct HostPool {
    slots: OnceLock<Box<[Mutex<Slot>]>>,
    /// Bumped by `drain`: a connection taken out before is not taken back.
    epoch: AtomicU64,
    /// A task closes the own client's connections idle past `idle_timeout` (`arm_reaper`).
    reaper: std::sync::atomic::AtomicBool,
    /// Wakes that task before its time: the pool was drained or dropped (so a removed
    /// host's task ends at once, not after a sleep of `idle_timeout`).
    reaper_wake: OnceLock<Arc<tokio::sync::Notify>>,
}

impl Drop for HostPool {
    fn drop(&mut self) {
        if let Some(w) = self.reaper_wake.get() {
            w.notify_one();
        }
    }
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostPool")
    }
}

/// An HTTP/1.1 connection taken from the pool, with the requests it has served and the
/// pool's epoch when it was taken (or connected).
pub struct Pooled1 {
    pub tx: http1::SendRequest<Body>,
    pub served: u32,
    pub epoch: u64,
    /// The per-SNI pool it came from (`auto_sni`); `None`: the host's own.
    pub sni_pool: Option<std::sync::Arc<HostPool>>,
}

impl HostPool {
    fn slots(&self) -> &[Mutex<Slot>] {
        self.slots.get_or_init(|| {
            (0..WORKERS.load(Ordering::Relaxed))
                .map(|_| Mutex::new(Slot::default()))
                .collect()
        })
    }

    /// This worker's slot index.
    fn index(&self) -> usize {
        worker() % self.slots().len()
    }

    /// The other workers' slot indexes, this worker's neighbours first.
    fn others(&self) -> impl Iterator<Item = usize> {
        let (i, n) = (self.index(), self.slots().len());
        (1..n).map(move |k| (i + k) % n)
    }

    fn lock_at(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.slots()[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.lock_at(self.index())
    }

    /// An idle HTTP/1.1 connection that is still open and not idle longer than `idle`. The
    /// caller awaits its readiness (it may still be finishing the previous exchange).
    /// This worker's slot first; then the others' (see `take`).
    pub fn take_h1(&self, idle: Option<Duration>) -> Option<Pooled1> {
        let c = self.take(
            |s| &mut s.h1,
            |c| idle.is_none_or(|t| c.since.elapsed() < t) && !c.tx.is_closed(),
        )?;
        Some(Pooled1 {
            tx: c.tx,
            served: c.served,
            epoch: self.epoch(),
            sni_pool: None,
        })
    }

    /// An idle connection of Plumb's own HTTP/1.1 client that is still usable and not idle
    /// longer than `idle` (the others are closed on the way): this worker's slot first,
    /// then the others' (see `take`).
    pub fn take_own(&self, idle: Option<Duration>) -> Option<Box<crate::http::h1client::Conn>> {
        self.take(
            |s| &mut s.own,
            |c| idle.is_none_or(|t| c.idle_since.elapsed() < t) && c.usable_for_request(),
        )
    }

    /// The most recently used idle connection of `list` that `usable` accepts, in this
    /// worker's slot, else in another worker's (those refused are closed on the way). The
    /// shared runtime moves a downstream connection's task between threads, so its next
    /// request may run on a worker whose slot is empty while its last connection idles in
    /// another's: reusing it costs a lock, a new connection costs a connect (and over TLS a
    /// full handshake). The other slots are looked at only when this one has none, so a
    /// busy worker still touches only its own. Per core (`set_pinned`), a task never moves
    /// and each worker has its own reactor: a worker keeps to its own slot, as Envoy's do
    /// (`gather_*` still looks further when `max_connections` is reached). One slot's lock
    /// at a time.
    fn take<T>(
        &self,
        list: fn(&mut Slot) -> &mut Vec<T>,
        usable: impl FnMut(&mut T) -> bool,
    ) -> Option<T> {
        let others = (!PINNED.with(|p| p.get())).then(|| self.others());
        let slots = std::iter::once(self.index()).chain(others.into_iter().flatten());
        self.find(slots, list, usable).0
    }

    /// The first idle connection of `list` that `usable` accepts, in the slots `slots` in
    /// turn; those it refuses are closed on the way. It, and whether one was closed. One
    /// slot's lock at a time.
    fn find<T>(
        &self,
        slots: impl Iterator<Item = usize>,
        list: fn(&mut Slot) -> &mut Vec<T>,
        mut usable: impl FnMut(&mut T) -> bool,
    ) -> (Option<T>, bool) {
        let mut closed = false;
        for j in slots {
            let mut slot = self.lock_at(j);
            while let Some(mut c) = list(&mut slot).pop() {
                if usable(&mut c) {
                    return (Some(c), closed);
                }
                closed = true;
            }
        }
        (None, closed)
    }

    /// Hands back a connection of the own client whose exchange has ended (closed instead
    /// when the pool was drained since it was taken).
    /// Each hand-back also looks at one other idle connection, in turn, and closes it if
    /// its peer closed it (or sent bytes) or it idled past `idle`: so connections an
    /// upstream closed do not keep their circuit-breaker slots while traffic flows.
    pub fn put_own(&self, c: Box<crate::http::h1client::Conn>, epoch: u64, idle: Option<Duration>) {
        if epoch != self.epoch() {
            return;
        }
        let mut slot = self.lock();
        let n = slot.own.len();
        if n > 0 {
            slot.sweep = (slot.sweep + 1) % n;
            let i = slot.sweep;
            let stale = idle.is_some_and(|t| slot.own[i].idle_since.elapsed() >= t);
            if stale || !slot.own[i].idle_usable() {
                slot.own.remove(i);
            }
        }
        if slot.own.len() < MAX_IDLE_H1 {
            slot.own.push(c);
            // Watched from now on (`sweep_own`): in the pool before its waker is left with
            // the reactor, so a close right after is swept, not missed.
            if !slot.own.last_mut().is_some_and(|c| c.idle_usable()) {
                slot.own.pop();
            }
        }
    }

    /// Makes sure a task closes the own client's idle connections once they have idled
    /// `idle` (Envoy's upstream `idle_timeout`), whether or not requests come: one task per
    /// pool while it holds idle connections, asleep until the oldest one's time, ending when
    /// none is left or the pool is gone. `what` gives the pool (weakly) and the counter of
    /// connections closed so (`upstream_cx_idle_timeout`); it runs only to start the task.
    pub fn arm_reaper(
        &self,
        idle: Duration,
        what: impl FnOnce() -> (crate::http::h1client::PoolRef, Arc<crate::stats::Counter>),
    ) {
        if self.reaper.load(Ordering::Relaxed) {
            return;
        }
        // Outside a runtime (a body read to its end by a test's executor, say), no task.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, closed) = what();
        let wake = self.reaper_wake.get_or_init(Default::default).clone();
        rt.spawn(async move {
            loop {
                let next = match pool.with(HostPool::oldest_own) {
                    Some(Some(t)) => t + idle,
                    Some(None) => {
                        // Disarmed, then looked at again: a connection handed back in
                        // between either is seen here or armed a new task.
                        let rearmed = pool.with(|p| {
                            p.reaper.store(false, Ordering::Release);
                            p.oldest_own().is_some() && !p.reaper.swap(true, Ordering::AcqRel)
                        });
                        if rearmed == Some(true) {
                            continue;
                        }
                        return;
                    }
                    None => return,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = wake.notified() => {}
                }
                match pool.with(|p| p.expire_own(idle)) {
                    Some(n) => closed.add(n as u64),
                    None => return,
                }
            }
        });
    }

    /// Since when the longest-idle connection of the own client has idled.
    fn oldest_own(&self) -> Option<Instant> {
        let slots = self.slots.get()?;
        slots
            .iter()
            .filter_map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.own.iter().map(|c| c.idle_since).min()
            })
            .min()
    }

    /// Closes the own client's connections idle for `idle` or more: how many.
    fn expire_own(&self, idle: Duration) -> usize {
        let Some(slots) = self.slots.get() else {
            return 0;
        };
        let mut closed = 0;
        for slot in slots.iter() {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.own.len();
            s.own.retain(|c| c.idle_since.elapsed() < idle);
            closed += before - s.own.len();
        }
        closed
    }

    /// Closes the idle connections of the own client that are no longer usable: one of
    /// them turned readable while idle (its upstream closed it). Called from a connection's
    /// waker, which the reactor runs outside any slot's lock: registering a waker
    /// (`idle_usable`, under a slot's lock) never runs one, as tokio defers wake-ups from
    /// inside a poll and a TLS session with buffered input is not polled.
    pub fn sweep_own(&self) {
        let Some(slots) = self.slots.get() else {
            return;
        };
        for slot in slots.iter() {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.own.retain_mut(|c| c.idle_usable());
        }
    }

    /// For a request that found no idle connection of its client and may not open one
    /// (`max_connections`): moves a usable idle connection of hyper's client from another
    /// worker's slot to this one. A per-core worker's `take` looks only in its own slot;
    /// on the shared runtime `take` has looked everywhere already, and this catches a
    /// connection handed back since. Closed or expired ones met on the way are closed.
    /// Whether one was moved.
    pub fn gather_h1(&self, idle: Option<Duration>) -> bool {
        let (moved, _) = self.gather(
            |s| &mut s.h1,
            |c| idle.is_none_or(|t| c.since.elapsed() < t) && !c.tx.is_closed(),
        );
        moved
    }

    /// The same for the own client; closing one it met on the way also counts (its slot
    /// is free at once).
    pub fn gather_own(&self, idle: Option<Duration>) -> bool {
        let (moved, closed) = self.gather(
            |s| &mut s.own,
            |c| idle.is_none_or(|t| c.idle_since.elapsed() < t) && c.idle_usable(),
        );
        moved || closed
    }

    /// Moves the first idle connection of `list` that `usable` accepts from another
    /// worker's slot to this one (see `find`). Whether one was moved, and whether one was
    /// closed.
    fn gather<T>(
        &self,
        list: fn(&mut Slot) -> &mut Vec<T>,
        usable: impl FnMut(&mut T) -> bool,
    ) -> (bool, bool) {
        let (found, closed) = self.find(self.others(), list, usable);
        let moved = found.is_some();
        if let Some(c) = found {
            list(&mut self.lock()).push(c);
        }
        (moved, closed)
    }

    /// Closes idle connections of the own client to free their circuit-breaker slots for a
    /// request that needs a connection (of either client) when `max_connections` is
    /// reached: in this worker's slot first, then in the others' (see `gather_h1`), those
    /// closed or expired, else the oldest. Whether one was closed (its slot is free at
    /// once).
    pub fn evict_own(&self, idle: Option<Duration>) -> bool {
        let here = self.index();
        std::iter::once(here).chain(self.others()).any(|j| {
            let mut slot = self.lock_at(j);
            let before = slot.own.len();
            slot.own
                .retain_mut(|c| idle.is_none_or(|t| c.idle_since.elapsed() < t) && c.idle_usable());
            if slot.own.len() == before && before > 0 {
                slot.own.remove(0);
            }
            slot.own.len() < before
        })
    }

    /// Closes the oldest idle connection of hyper's client (in this worker's slot first),
    /// for the same reason; its slot is given back when its connection task ends.
    pub fn evict_h1(&self) -> bool {
        let here = self.index();
        std::iter::once(here).chain(self.others()).any(|j| {
            let mut slot = self.lock_at(j);
            if slot.h1.is_empty() {
                return false;
            }
            slot.h1.remove(0);
            true
        })
    }

    /// The pool's epoch (see `drain`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Closes the pool's connections gracefully: idle HTTP/1.1 connections at once, busy
    /// ones when their exchange ends (they are not taken back), HTTP/2 connections when
    /// their last stream ends (no new streams; hyper then says GOAWAY). For a host that left
    /// its cluster, or failed its health check with
    /// `close_connections_on_host_health_failure`.
    pub fn drain(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(w) = self.reaper_wake.get() {
            w.notify_one();
        }
        let Some(slots) = self.slots.get() else {
            return;
        };
        for slot in slots.iter() {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.h1.clear();
            s.own.clear();
            s.h2.clear();
        }
    }

    /// Hands back an HTTP/1.1 connection whose exchange has ended (closed instead when the
    /// pool was drained since it was taken).
    pub fn put_h1(&self, tx: http1::SendRequest<Body>, served: u32, epoch: u64) {
        if tx.is_closed() || epoch != self.epoch() {
            return;
        }
        let mut slot = self.lock();
        if slot.h1.len() < MAX_IDLE_H1 {
            slot.h1.push(Idle1 {
                tx,
                since: Instant::now(),
                served,
            });
        }
    }

    /// An HTTP/2 connection with a free stream, a connect to wait for, or the job of
    /// connecting.
    pub fn take_h2(&self, max_streams: usize) -> H2Take {
        let index = self.index();
        let mut slot = self.lock_at(index);
        slot.h2.retain(|c| !c.tx.is_closed());
        for c in &slot.h2 {
            if c.streams.load(Ordering::Relaxed) < max_streams {
                c.streams.fetch_add(1, Ordering::Relaxed);
                return H2Take::Ready(c.clone());
            }
        }
        if let Some(rx) = &slot.h2_connecting {
            return H2Take::Wait(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        slot.h2_connecting = Some(rx);
        H2Take::Connect(H2Ticket { slot: index, tx })
    }

    /// Publishes the outcome of this slot's HTTP/2 connect: the new connection (its first
    /// stream counted as taken by the connecting request) or why it failed.
    pub fn finish_h2(&self, ticket: H2Ticket, outcome: Result<H2Conn, String>) {
        let mut slot = self.lock_at(ticket.slot);
        slot.h2_connecting = None;
        if let Ok(c) = &outcome {
            slot.h2.push(c.clone());
        }
        drop(slot);
        let _ = ticket.tx.send(Some(outcome));
    }

    /// The connecting request went away before finishing: the next one connects.
    pub fn abandon_h2(&self, ticket: &H2Ticket) {
        self.lock_at(ticket.slot).h2_connecting = None;
    }

    /// Forgets an HTTP/2 connection (at its request limit), in whichever slot holds it.
    pub fn retire_h2(&self, c: &H2Conn) {
        for i in 0..self.slots().len() {
            self.lock_at(i)
                .h2
                .retain(|x| !Arc::ptr_eq(&x.streams, &c.streams));
        }
    }

    /// Idle HTTP/1.1 and live HTTP/2 connections in this worker's slot (tests, admin).
    pub fn idle_counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.h1.len() + s.own.len(), s.h2.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1client::Conn;

    fn pool_of(workers: usize) -> HostPool {
        let pool = HostPool::default();
        let _ = pool
            .slots
            .set((0..workers).map(|_| Mutex::new(Slot::default())).collect());
        pool
    }

    /// An own-client connection to a peer that stays open while `peer` lives.
    fn conn() -> (Box<Conn>, tokio::io::DuplexStream) {
        let (client, peer) = tokio::io::duplex(64);
        (Conn::new(client.into(), None), peer)
    }

    /// A task of the shared runtime may run on another thread than the one whose slot its
    /// connection idled in: a request finds it there rather than connecting (a second TLS
    /// handshake), and one that may not connect must find it there (this waited for a
    /// connection forever with `max_connections: 1`).
    #[tokio::test]
    async fn idle_connections_in_other_workers_slots_are_found_when_needed() {
        let pool = pool_of(2);
        set_worker_index(0);
        let (c, _peer) = conn();
        pool.put_own(c, pool.epoch(), None);
        set_worker_index(1);
        assert!(pool.take_own(None).is_some(), "found in worker 0's slot");
        assert!(pool.take_own(None).is_none());

        // This worker's slot first: its connection, not the other worker's.
        set_worker_index(0);
        let (c, _peer0) = conn();
        pool.put_own(c, pool.epoch(), None);
        set_worker_index(1);
        let (c, _peer1) = conn();
        pool.put_own(c, pool.epoch(), None);
        assert!(pool.take_own(None).is_some());
        assert_eq!(
            (pool.lock_at(0).own.len(), pool.lock_at(1).own.len()),
            (1, 0)
        );
        assert!(pool.gather_own(None));
        assert_eq!(
            (pool.lock_at(0).own.len(), pool.lock_at(1).own.len()),
            (0, 1)
        );
        assert!(pool.take_own(None).is_some());
        assert!(!pool.gather_own(None), "nothing left to gather");

        // Per core, a worker keeps to its own slot until it may not connect.
        set_pinned(true);
        set_worker_index(0);
        let (c, _peer0) = conn();
        pool.put_own(c, pool.epoch(), None);
        set_worker_index(1);
        let found = pool.take_own(None);
        set_pinned(false);
        assert!(
            found.is_none(),
            "per core: worker 0's connection stays its own"
        );
        assert!(pool.gather_own(None));
        assert!(pool.take_own(None).is_some());

        // A closed one is closed on the way (its slot is free), and not handed out.
        set_worker_index(0);
        let (c, peer) = conn();
        pool.put_own(c, pool.epoch(), None);
        drop(peer);
        set_worker_index(1);
        assert!(pool.gather_own(None));
        assert!(pool.take_own(None).is_none());
        assert_eq!(pool.lock_at(0).own.len(), 0);

        // Eviction for the other client looks in every slot, this worker's first.
        set_worker_index(0);
        let (c, _peer0) = conn();
        pool.put_own(c, pool.epoch(), None);
        set_worker_index(1);
        assert!(pool.evict_own(None));
        assert_eq!(pool.lock_at(0).own.len(), 0);
        assert!(!pool.evict_own(None));
        assert!(!pool.evict_h1());
        set_worker_index(0);
    }

    /// The task closing connections past `idle_timeout` closes them while no request
    /// comes, and ends with its pool (a removed host's), not after its long sleep.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_connections_expire_and_the_reaper_ends_with_its_pool() {
        use crate::http::h1client::PoolRef;
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let closed = crate::stats::Store::new()
            .root_scope("test")
            .counter("idle_timeout");
        let pool = Arc::new(pool_of(1));
        // Real time: connections keep std's clock (tokio's paused clock would not move it).
        let idle = Duration::from_millis(100);
        let (c, _peer) = conn();
        pool.put_own(c, pool.epoch(), Some(idle));
        let arm = |pool: &Arc<HostPool>| {
            let r = PoolRef::pool(pool);
            let closed = closed.clone();
            pool.arm_reaper(idle, move || (r, closed));
        };
        arm(&pool);
        arm(&pool);
        assert_eq!(alive(), 1, "one task per pool");
        let deadline = Instant::now() + Duration::from_secs(10);
        while closed.value() == 0 {
            assert!(Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(closed.value(), 1);
        assert_eq!(pool.lock().own.len(), 0);
        // No idle connection left: the task ended.
        tokio::task::yield_now().await;
        assert_eq!(alive(), 0);

        let (c, _peer) = conn();
        pool.put_own(c, pool.epoch(), Some(idle));
        let idle = Duration::from_secs(3600);
        let r = PoolRef::pool(&pool);
        let closed2 = closed.clone();
        pool.arm_reaper(idle, move || (r, closed2));
        assert_eq!(alive(), 1, "armed again, asleep for an hour");
        tokio::task::yield_now().await;
        drop(pool);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(alive(), 0, "ended with its pool");
    }
}
