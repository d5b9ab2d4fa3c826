//! Work under way that others wait for, numbered in the order it began.
//!
//! - A [`Kind::Write`] lasts from before the authoritative side commits a write with its
//!   journal record until its copy to the other side has ended. A repair that read a
//!   record from the journal waits for the writes that began before that read: one of
//!   them wrote the record if its copy is still under way, and it then ends delivered
//!   (nothing to replay) or owed (replayed once, by the repair alone).
//! - A [`Kind::Clear`] lasts while journal records of copies that arrived are out of the
//!   shared list, on their way to being deleted. A flush waits for the clears that began
//!   before it, so that when it returns the records of every copy that arrived before it
//!   was called are gone (or a clear failed and they are back in the list).
//!
//! A waiter gives up after a deadline: a write is bounded by the side timeouts, and
//! waiting longer only delays a repair that is harmless to run anyway.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::lock;
use crate::record::AgentId;

/// What a ticket stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A write from its commit to the end of its copy.
    Write,
    /// Journal records taken out of the shared list to be deleted.
    Clear,
}

/// The open tickets.
#[derive(Default)]
pub(super) struct Tickets {
    state: Mutex<State>,
    closed: Notify,
}

#[derive(Default)]
struct State {
    next: u64,
    open: BTreeMap<u64, (Kind, Option<AgentId>)>,
}

/// One piece of work under way, until dropped (also when the call doing it is
/// cancelled).
pub(super) struct Ticket<'a> {
    tickets: &'a Tickets,
    number: u64,
}

impl Tickets {
    /// Opens a ticket for work of `kind` (for `agent`, when it concerns one).
    pub(super) fn open(&self, kind: Kind, agent: Option<&AgentId>) -> Ticket<'_> {
        let mut state = lock(&self.state);
        let number = state.next;
        state.next += 1;
        state.open.insert(number, (kind, agent.cloned()));
        Ticket {
            tickets: self,
            number,
        }
    }

    /// A mark to wait on: every ticket opened before now is below it.
    pub(super) fn mark(&self) -> u64 {
        lock(&self.state).next
    }

    /// Waits until no ticket of `kind` opened before `mark` (for `agent`, when given)
    /// is open, or until `give_up`; returns whether they all closed.
    pub(super) async fn wait_before(
        &self,
        mark: u64,
        kind: Kind,
        agent: Option<&AgentId>,
        give_up: Instant,
    ) -> bool {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before looking, so a ticket closed right after is not missed.
            closed.as_mut().enable();
            let waiting = lock(&self.state).open.range(..mark).any(|(_, (k, a))| {
                *k == kind && agent.is_none_or(|agent| a.as_ref() == Some(agent))
            });
            if !waiting {
                return true;
            }
            if tokio::time::timeout_at(give_up, closed).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.tickets.state).open.remove(&self.number);
        self.tickets.closed.notify_waiters();
    }
}
