//! The connection recycler: connections passed from one call to the next without going
//! back to the pool ([`Stash`]), and which of them must be checked before use
//! ([`PoolHealth`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, Postgres};
use tokio::sync::oneshot;

use super::PostgresBackend;
use crate::error::Result;

impl PostgresBackend {
    /// A connection for one call: handed over by the call before, idle in the stash,
    /// or from the pool, whichever comes first. Pass it on with [`Lease::keep`] after a
    /// call that succeeded.
    async fn lease(&self) -> std::result::Result<Lease<'_>, sqlx::Error> {
        let lease = |conn, counted| Lease {
            conn,
            circulation: Circulation {
                stash: &self.stash,
                counted,
            },
        };
        loop {
            match self.stash.take(&self.health) {
                Leased::Ready(conn) => return Ok(lease(conn, true)),
                Leased::Pool => return Ok(lease(self.pool.acquire().await?, false)),
                Leased::Check(mut conn) => {
                    if conn.ping().await.is_ok() {
                        return Ok(lease(conn, true));
                    }
                    // Dropped: the pool closes it.
                    self.stash.forget();
                }
                Leased::Wait(handed) => {
                    let mut waiting = Waiting {
                        handed,
                        stash: &self.stash,
                    };
                    return tokio::select! {
                        biased;
                        conn = &mut waiting.handed => match conn {
                            Ok(conn) => Ok(lease(conn, true)),
                            // The stash was drained (the backend is closing).
                            Err(_) => Ok(lease(self.pool.acquire().await?, false)),
                        },
                        conn = self.pool.acquire() => Ok(lease(conn?, false)),
                    };
                }
            }
        }
    }

    /// Runs `statement` on a leased connection (see [`Stash`]) and passes the
    /// connection on after it succeeds; a failure is reported as `operation`.
    pub(super) async fn on_lease<T>(
        &self,
        operation: impl Fn() -> String,
        statement: impl AsyncFnOnce(&mut PgConnection) -> std::result::Result<T, sqlx::Error>,
    ) -> Result<T> {
        let mut conn = self.lease().await.map_err(self.fail(&operation))?;
        let out = statement(conn.as_mut())
            .await
            .map_err(self.fail(&operation))?;
        conn.keep();
        Ok(out)
    }
}

/// How long a pooled connection may have sat idle before the pool checks, with a round
/// trip, that the server still holds it up before handing it out.
///
/// sqlx checks every connection on every acquire by default, which costs each call a
/// second round trip: it doubled the time of a retrieve. A connection used within the
/// last second is handed out as it is. If the server dropped it meanwhile (a restart,
/// `pg_terminate_backend`), the call on it fails with a connection error
/// ([`Error::is_connection`](crate::Error::is_connection)), and from then on every connection that was already idle
/// when that happened is checked before it is handed out, so the next call gets a live
/// one.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// When the backend last saw a call fail for a lost connection: the other connections
/// idle at that moment may have been dropped too (a restart drops them all).
#[derive(Debug)]
pub(super) struct PoolHealth {
    start: Instant,
    /// Microseconds from `start` to the last lost connection; 0 when there was none.
    lost_at_us: AtomicU64,
}

impl Default for PoolHealth {
    fn default() -> Self {
        PoolHealth {
            start: Instant::now(),
            lost_at_us: AtomicU64::new(0),
        }
    }
}

impl PoolHealth {
    /// Records that a call just failed for a lost connection.
    pub(super) fn lost_connection(&self) {
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.lost_at_us.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether a connection idle for `idle_for` must be checked before use: idle for
    /// over [`CHECK_IDLE_AFTER`], or idle since before the last lost connection.
    pub(super) fn must_check(&self, idle_for: Duration) -> bool {
        if idle_for > CHECK_IDLE_AFTER {
            return true;
        }
        match self.lost_at_us.load(Ordering::Relaxed) {
            0 => false,
            lost => self.start.elapsed().saturating_sub(idle_for) <= Duration::from_micros(lost),
        }
    }
}

/// Connections passed from one call to the next without going back to the pool.
///
/// sqlx's pool pings every connection as it comes back, a round trip per call that
/// cannot be turned off and that costs the client and the server about as much CPU as a
/// short statement. A call that succeeded hands its connection straight to the call
/// that has waited longest, or keeps it here for the next one, skipping that round trip.
/// All but one of the pool's connections may circulate this way; the last always goes
/// back to the pool after its call, so statements that use the pool directly (searches,
/// index builds, callers of [`PostgresBackend::pool`]) keep getting turns in the pool's
/// own order.
///
/// Generic over the connection (`C`) only so that its unit tests can count tokens.
#[derive(Debug)]
pub(super) struct Stash<C = PoolConnection<Postgres>> {
    state: Mutex<StashState<C>>,
    cap: usize,
}

#[derive(Debug)]
struct StashState<C> {
    /// Connections no call holds, most recently used last, with when they came back.
    idle: Vec<(C, Instant)>,
    /// Calls waiting for a connection, longest first.
    waiters: VecDeque<oneshot::Sender<C>>,
    /// Connections in circulation: idle here, or held by a call that took one from here.
    circulating: usize,
    /// Set by [`Stash::drain`] when the backend closes: from then on every connection
    /// goes back to the pool, so that closing the pool does not wait for one kept here.
    closed: bool,
}

impl<C> Default for StashState<C> {
    fn default() -> Self {
        StashState {
            idle: Vec::new(),
            waiters: VecDeque::new(),
            circulating: 0,
            closed: false,
        }
    }
}

/// Where a leased connection came from.
#[derive(Debug)]
enum Leased<C> {
    /// A connection that had a use within [`CHECK_IDLE_AFTER`] (or passed a check).
    Ready(C),
    /// A stashed connection idle too long, or idle since a lost connection: check it.
    Check(C),
    /// None to be had: wait for a hand-over or for the pool.
    Wait(oneshot::Receiver<C>),
    /// The backend is closing: ask the pool.
    Pool,
}

impl<C> Stash<C> {
    pub(super) fn new(max_connections: u32) -> Self {
        Stash {
            state: Mutex::new(StashState::default()),
            cap: usize::try_from(max_connections.saturating_sub(1)).unwrap_or(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StashState<C>> {
        // Every change under this lock leaves the state whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or a place in the queue of waiting calls.
    fn take(&self, health: &PoolHealth) -> Leased<C> {
        let mut state = self.lock();
        if state.closed {
            return Leased::Pool;
        }
        state.waiters.retain(|waiter| !waiter.is_closed());
        if state.waiters.is_empty()
            && let Some((conn, since)) = state.idle.pop()
        {
            return match health.must_check(since.elapsed()) {
                true => Leased::Check(conn),
                false => Leased::Ready(conn),
            };
        }
        let (sender, receiver) = oneshot::channel();
        state.waiters.push_back(sender);
        Leased::Wait(receiver)
    }

    /// Takes `conn`, after a call that succeeded, into circulation (when `circulating`,
    /// it already is): hands it to the longest waiting call, or keeps it idle. A
    /// connection from the pool beyond the stash's share goes back to the pool.
    fn put(&self, mut conn: C, circulating: bool) {
        let mut state = self.lock();
        if state.closed {
            return; // dropped: back to the pool
        }
        if !circulating {
            if state.circulating >= self.cap {
                drop(state);
                return; // dropped: back to the pool
            }
            state.circulating += 1;
        }
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                // That call got one from the pool meanwhile, or gave up.
                Err(back) => conn = back,
            }
        }
        state.idle.push((conn, Instant::now()));
    }

    /// A circulating connection leaves circulation (its call failed, or its check).
    fn forget(&self) {
        let mut state = self.lock();
        state.circulating = state.circulating.saturating_sub(1);
    }

    /// Returns every idle connection to the pool, lets the waiting calls go to it, and
    /// sends every connection there from now on.
    pub(super) fn drain(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.circulating = state.circulating.saturating_sub(state.idle.len());
        state.idle.clear();
        state.waiters.clear();
    }
}

/// A call's place in the stash's queue. Dropped (the call got a connection from the
/// pool, or was cancelled), it passes on a connection handed over meanwhile.
struct Waiting<'a, C> {
    handed: oneshot::Receiver<C>,
    stash: &'a Stash<C>,
}

impl<C> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        self.handed.close();
        if let Ok(conn) = self.handed.try_recv() {
            self.stash.put(conn, true);
        }
    }
}

/// A connection taken for one call. Dropped, it goes back to the pool (which checks
/// it); [`keep`](Lease::keep) passes it on to the next call instead.
struct Lease<'a> {
    conn: PoolConnection<Postgres>,
    circulation: Circulation<'a>,
}

/// Takes a dropped lease's connection out of the stash's circulation.
struct Circulation<'a, C = PoolConnection<Postgres>> {
    stash: &'a Stash<C>,
    /// Whether the connection counts in the stash's circulation.
    counted: bool,
}

impl<C> Drop for Circulation<'_, C> {
    fn drop(&mut self) {
        if self.counted {
            self.stash.forget();
        }
    }
}

impl Lease<'_> {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Passes the connection on: only after a call that succeeded, so a connection in
    /// doubt always goes back through the pool's check.
    fn keep(self) {
        let Lease {
            conn,
            mut circulation,
        } = self;
        let counted = std::mem::replace(&mut circulation.counted, false);
        circulation.stash.put(conn, counted);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A connection token that records, when dropped, that it went back to the pool.
    #[derive(Debug)]
    struct Conn {
        id: u32,
        returned: Arc<Mutex<Vec<u32>>>,
    }

    impl Drop for Conn {
        fn drop(&mut self) {
            self.returned.lock().unwrap().push(self.id);
        }
    }

    /// A stash for a pool of `max_connections`, and tokens that report their return.
    struct Fixture {
        stash: Stash<Conn>,
        health: PoolHealth,
        returned: Arc<Mutex<Vec<u32>>>,
    }

    impl Fixture {
        fn new(max_connections: u32) -> Self {
            Fixture {
                stash: Stash::new(max_connections),
                health: PoolHealth::default(),
                returned: Arc::default(),
            }
        }

        fn conn(&self, id: u32) -> Conn {
            Conn {
                id,
                returned: self.returned.clone(),
            }
        }

        fn returned(&self) -> Vec<u32> {
            self.returned.lock().unwrap().clone()
        }

        /// (connections in circulation, of which idle in the stash).
        fn counts(&self) -> (usize, usize) {
            let state = self.stash.lock();
            (state.circulating, state.idle.len())
        }

        fn take(&self) -> Leased<Conn> {
            self.stash.take(&self.health)
        }
    }

    fn ready(leased: Leased<Conn>) -> u32 {
        match leased {
            Leased::Ready(conn) => {
                let id = conn.id;
                std::mem::forget(conn);
                id
            }
            other => panic!("expected a ready connection, got {other:?}"),
        }
    }

    #[test]
    fn all_but_one_connection_circulate() {
        let f = Fixture::new(3);
        for id in 1..=3 {
            f.stash.put(f.conn(id), false);
        }
        assert_eq!(f.returned(), [3], "the third goes back to the pool");
        assert_eq!(f.counts(), (2, 2));
        // The most recently used first.
        assert_eq!(ready(f.take()), 2);
        assert_eq!(ready(f.take()), 1);
        assert_eq!(f.counts(), (2, 0), "taken connections still circulate");
        assert!(matches!(f.take(), Leased::Wait(_)), "none idle: wait");

        let single = Fixture::new(1);
        single.stash.put(single.conn(1), false);
        assert_eq!(single.returned(), [1], "a pool of one never stashes");
        assert_eq!(single.counts(), (0, 0));
    }

    #[test]
    fn a_connection_goes_to_the_longest_waiting_call() {
        let f = Fixture::new(4);
        let Leased::Wait(mut first) = f.take() else {
            panic!("nothing idle: the call waits");
        };
        let Leased::Wait(mut second) = f.take() else {
            panic!("nothing idle: the call waits");
        };
        f.stash.put(f.conn(1), false);
        let held = first.try_recv().expect("handed over");
        assert_eq!(held.id, 1);
        assert!(second.try_recv().is_err(), "the second call still waits");
        assert_eq!(f.counts(), (1, 0));
        // A call that gave up is skipped; the connection stays for the next one.
        drop(second);
        f.stash.put(f.conn(2), false);
        assert_eq!(f.counts(), (2, 1));
        assert_eq!(ready(f.take()), 2);
        assert!(f.returned().is_empty());
        drop(held);
    }

    #[test]
    fn a_cancelled_waiter_passes_a_handed_connection_on() {
        let f = Fixture::new(4);
        let Leased::Wait(handed) = f.take() else {
            panic!("nothing idle: the call waits");
        };
        f.stash.put(f.conn(1), false);
        // The call got a connection from the pool meanwhile and drops its place.
        drop(Waiting {
            handed,
            stash: &f.stash,
        });
        assert_eq!(f.counts(), (1, 1), "kept, not lost or counted twice");
        assert_eq!(ready(f.take()), 1);
    }

    #[test]
    fn connections_idle_since_a_lost_connection_are_checked() {
        let f = Fixture::new(4);
        f.stash.put(f.conn(1), false);
        std::thread::sleep(Duration::from_millis(2));
        f.health.lost_connection();
        let Leased::Check(conn) = f.take() else {
            panic!("idle since before the loss: check it");
        };
        std::thread::sleep(Duration::from_millis(2));
        // It passed its check and its call: back, idle since after the loss.
        f.stash.put(conn, true);
        assert_eq!(ready(f.take()), 1);
        assert_eq!(f.counts(), (1, 0));
    }

    #[test]
    fn connections_idle_past_the_limit_are_checked() {
        let f = Fixture::new(4);
        f.stash.put(f.conn(1), false);
        assert!(!f.health.must_check(Duration::ZERO));
        assert!(
            f.health
                .must_check(CHECK_IDLE_AFTER + Duration::from_millis(1))
        );
        std::thread::sleep(CHECK_IDLE_AFTER + Duration::from_millis(50));
        assert!(matches!(f.take(), Leased::Check(_)));
    }

    #[test]
    fn failures_leave_circulation_and_a_drained_stash_returns_everything() {
        let f = Fixture::new(4);
        f.stash.put(f.conn(1), false);
        f.stash.put(f.conn(2), false);
        // A call on 2 failed: its connection goes back to the pool, out of circulation.
        let Leased::Ready(failed) = f.take() else {
            panic!("a recently used connection is ready");
        };
        drop(Circulation {
            stash: &f.stash,
            counted: true,
        });
        drop(failed);
        assert_eq!(f.counts(), (1, 1));
        // A connection from the pool that never circulated leaves nothing to forget.
        drop(Circulation {
            stash: &f.stash,
            counted: false,
        });
        assert_eq!(f.counts(), (1, 1));

        let Leased::Ready(held) = f.take() else {
            panic!("a recently used connection is ready");
        };
        let Leased::Wait(mut waiting) = f.take() else {
            panic!("nothing idle: the call waits");
        };
        f.stash.put(f.conn(3), false);
        assert_eq!(waiting.try_recv().expect("handed over").id, 3);
        let Leased::Wait(mut waiting) = f.take() else {
            panic!("nothing idle: the call waits");
        };
        f.stash.drain();
        assert!(
            waiting.try_recv().is_err(),
            "a waiting call is sent to the pool"
        );
        assert!(matches!(f.take(), Leased::Pool));
        f.stash.put(held, true);
        assert_eq!(
            f.returned(),
            [2, 3, 1],
            "every connection goes back to the pool"
        );
        assert_eq!(f.counts(), (2, 0));
    }
}
