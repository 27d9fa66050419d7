//! What shutdown waits for, and what it closes: the calls in progress, and the store's writes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

/// Counts the `SessionStore` calls in progress: unary calls while their handler runs, and
/// `Pipeline` streams until their response ends. Idle connections and health `Watch` streams
/// are not calls, so they never hold shutdown up.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    calls: AtomicUsize,
    idle: Notify,
}

/// One call in progress; dropping it ends the call.
#[derive(Debug)]
pub(crate) struct Call(Arc<InFlight>);

impl InFlight {
    /// Counts a call until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Call {
        self.calls.fetch_add(1, Ordering::AcqRel);
        Call(self.clone())
    }

    /// Completes once no call is in progress.
    pub(crate) async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.calls.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Lets writes to the store through until shutdown closes it. Closing waits for the writes
/// being applied, so once [`close`](Self::close) returns no write can land any more, and the
/// final snapshot holds every write that was acknowledged.
#[derive(Debug)]
pub(crate) struct WriteGate(RwLock<bool>);

impl Default for WriteGate {
    fn default() -> Self {
        Self(RwLock::new(true))
    }
}

impl WriteGate {
    /// Runs `write` if the gate is open; `None` once it is closed.
    pub(crate) fn pass<T>(&self, write: impl FnOnce() -> T) -> Option<T> {
        let open = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.then(write)
    }

    /// Closes the gate, after the writes under way.
    pub(crate) fn close(&self) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_call() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.idle().await;
        let (first, second) = (in_flight.start(), in_flight.start());
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.idle().await })
        };
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
    }

    #[test]
    fn a_closed_gate_runs_no_write() {
        let gate = WriteGate::default();
        assert_eq!(gate.pass(|| 1), Some(1));
        gate.close();
        assert_eq!(gate.pass(|| 2), None);
    }
}
