//! What shutdown waits for, and what it closes: the calls in progress, and the store's writes.

use std::sync::RwLock;

/// The calls in progress, which shutdown waits for: each holds a [`Call`] until it has answered
/// (a `Pipeline` call until its response stream is dropped). Shutdown closes it and waits.
pub(crate) type InFlight = tokio_util::task::TaskTracker;

/// One call in progress, counted until dropped.
pub(crate) type Call = tokio_util::task::task_tracker::TaskTrackerToken;

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

    #[test]
    fn a_closed_gate_runs_no_write() {
        let gate = WriteGate::default();
        assert_eq!(gate.pass(|| 1), Some(1));
        gate.close();
        assert_eq!(gate.pass(|| 2), None);
    }
}
