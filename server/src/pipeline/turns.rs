//! The order of one `Pipeline` stream's operations on each session, when they run at once.
//!
//! On a Redis backend a stream's operations go to Redis without waiting for the ones before
//! them, so that a stream is not held to one Redis round trip (and two context switches) per
//! operation. Only operations on the same session must keep the order they came in: each waits
//! for the stream's previous operation on its session id to finish. Operations on different
//! sessions commute (a Get of one session cannot see a Save of another).

use std::collections::HashMap;

use gonest_session_proto::pb;
use tokio::sync::oneshot;

/// An operation's place in line: it starts once `before` (the stream's previous operation on
/// the same session) has finished, and the next one starts once this is dropped.
#[derive(Debug)]
pub(crate) struct Turn {
    before: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    /// Waits until the operation before this one on its session has finished (or was dropped).
    pub(crate) async fn wait(&mut self) {
        if let Some(before) = &mut self.before {
            // Dropped without a value: that operation is over, one way or the other.
            let _ = before.await;
            self.before = None;
        }
    }
}

/// Hands out [`Turn`]s to a stream's operations in the order they arrive.
#[derive(Debug)]
pub(crate) struct SessionOrder {
    /// For each session id, the end of the last operation handed a turn.
    last: HashMap<String, oneshot::Receiver<()>>,
    /// When `last` reaches this size, ids whose operations have all finished are dropped.
    prune_at: usize,
}

/// The fewest ids `SessionOrder` keeps before it looks for finished ones to drop.
const PRUNE_AT_LEAST: usize = 1024;

impl Default for SessionOrder {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            prune_at: PRUNE_AT_LEAST,
        }
    }
}

impl SessionOrder {
    /// The turn of `op`, behind the operations on its session handed a turn before it (`None`
    /// for no operation, or one without a session id: nothing to order).
    pub(crate) fn turn(&mut self, op: Option<&pb::pipeline_request::Op>) -> Option<Turn> {
        use pb::pipeline_request::Op;
        let id = match op? {
            Op::Get(op) => &op.id,
            Op::Destroy(op) => &op.id,
            Op::Touch(op) => &op.id,
            Op::Save(op) => &op.session.as_ref()?.id,
        };
        let (done, end) = oneshot::channel();
        let before = match self.last.get_mut(id.as_str()) {
            Some(last) => Some(std::mem::replace(last, end)),
            None => {
                self.last.insert(id.clone(), end);
                self.prune();
                None
            }
        };
        Some(Turn {
            before,
            _done: done,
        })
    }

    /// Forgets ids whose last operation has finished, once there are many.
    fn prune(&mut self) {
        if self.last.len() < self.prune_at {
            return;
        }
        self.last
            .retain(|_, end| matches!(end.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        self.prune_at = (self.last.len() * 2).max(PRUNE_AT_LEAST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn get(id: &str) -> pb::pipeline_request::Op {
        pb::pipeline_request::Op::Get(pb::GetRequest { id: id.into() })
    }

    #[test]
    fn an_operation_waits_only_for_the_one_before_it_on_its_session() {
        let mut order = SessionOrder::default();
        let mut first_a = order.turn(Some(&get("a"))).unwrap();
        let mut first_b = order.turn(Some(&get("b"))).unwrap();
        let mut second_a = order.turn(Some(&get("a"))).unwrap();
        assert!(first_a.wait().now_or_never().is_some());
        assert!(first_b.wait().now_or_never().is_some(), "b waits for no a");
        assert!(
            second_a.wait().boxed().now_or_never().is_none(),
            "the second a waits for the first"
        );
        drop(first_a);
        assert!(second_a.wait().now_or_never().is_some());
        assert!(order.turn(None).is_none());
    }

    #[test]
    fn finished_sessions_are_forgotten_and_running_ones_kept() {
        let mut order = SessionOrder::default();
        let mut running = Vec::new();
        for i in 0..5000 {
            let turn = order.turn(Some(&get(&format!("s{i}")))).unwrap();
            // Every hundredth operation is still running; the rest are done at once.
            if i % 100 == 0 {
                running.push(turn);
            }
        }
        assert!(
            order.last.len() < 2 * PRUNE_AT_LEAST,
            "{}",
            order.last.len()
        );
        assert!(order.last.contains_key("s4900"));
        let mut next = order.turn(Some(&get("s4900"))).unwrap();
        assert!(
            next.wait().boxed().now_or_never().is_none(),
            "still ordered"
        );
        drop(running);
        assert!(next.wait().now_or_never().is_some());
    }
}
