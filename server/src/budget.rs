//! Bounds the answers a connection has produced and its peer has not yet taken off the socket.
//!
//! HTTP/2 flow control does not bound them: an answer handed to hyper is buffered whole, sent
//! or not, so a peer that asks and never reads could make the daemon hold answer after answer
//! (a thousand 1 MiB sessions, a gigabyte). Instead each connection has a budget of answer bytes:
//! an answer is counted against it when produced and paid back as bytes are written to the
//! socket. A call that finds the budget spent waits before it produces its answer, and a
//! `Pipeline` stream waiting so reads no further requests, so what such a peer costs the daemon
//! is the budget and one answer, whatever it sends.
//!
//! An answer is counted as its bytes as a gRPC message when produced. The `Pipeline` body then
//! copies the answers ready together into one buffer of exactly their size
//! (`Chunks::push_answers_sealed`), not a buffer grown by doubling, and counts as well what the
//! allocator sets aside beyond it ([`allocated_len`]), paid back when the buffer is freed: the
//! budget counts the memory the answers hold, not only their bytes. The budget is
//! `--max-unsent-answer-bytes` (default [`ANSWER_BYTES_IN_FLIGHT`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Answer bytes a connection may have produced and not yet written, beyond the one answer that
/// goes over it, unless `--max-unsent-answer-bytes` says otherwise.
pub(crate) const ANSWER_BYTES_IN_FLIGHT: usize = 4 << 20;

/// Operations one connection may have in progress at once on a backend that waits (Redis):
/// each holds its answer until it is handed on, so this bounds those answers too (32 sessions).
pub(crate) const OPS_IN_PROGRESS: usize = 32;

/// Bytes the daemon's allocator (mimalloc) sets aside for a buffer of `len` bytes. Up to eight
/// words it rounds to a word; then to one of four size classes per power of two (`mi_bin`:
/// a quarter of the power of two below the size in words, so at most 25% more); past its
/// largest class (64 KiB) to its 64 KiB slices.
pub(crate) fn allocated_len(len: usize) -> usize {
    const WORD: usize = 8;
    const LARGEST_CLASS: usize = 64 << 10;
    const SLICE: usize = 64 << 10;
    if len > LARGEST_CLASS {
        return len.next_multiple_of(SLICE);
    }
    let words = len.div_ceil(WORD).max(1);
    if words <= 8 {
        return words * WORD;
    }
    let power = usize::BITS - 1 - (words - 1).leading_zeros();
    words.next_multiple_of(1 << (power - 2)) * WORD
}

/// One connection's budget; see the module docs.
#[derive(Debug)]
pub(crate) struct AnswerBudget {
    limit: usize,
    /// [`OPS_IN_PROGRESS`] permits, for operations started before their answers are counted.
    ops: tokio::sync::Semaphore,
    /// Answer bytes produced and not yet written. Writes of anything else (headers, health
    /// answers) pay it back too, which only ever errs towards letting answers through.
    in_flight: AtomicUsize,
    /// Serialises producing an answer against the check of the budget, so only one answer at a
    /// time can go over it.
    producing: Mutex<()>,
    /// Wakes producers waiting for the budget when bytes are written.
    written: Notify,
}

impl AnswerBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            ops: tokio::sync::Semaphore::new(OPS_IN_PROGRESS),
            in_flight: AtomicUsize::new(0),
            producing: Mutex::new(()),
            written: Notify::new(),
        }
    }

    /// Waits until the connection's answers in flight are under the limit, then calls `answer`
    /// and counts the size it reports.
    pub(crate) async fn produce<T, F: FnOnce() -> (T, usize)>(&self, mut answer: F) -> T {
        loop {
            // Created before the check, so a write between the check and the wait still wakes it.
            let written = self.written.notified();
            match self.try_produce(answer) {
                Ok(value) => return value,
                Err(back) => answer = back,
            }
            written.await;
        }
    }

    /// Calls `answer` and counts the size it reports if the connection's answers in flight are
    /// under the limit; else gives `answer` back uncalled (then [`wait`](Self::wait)).
    pub(crate) fn try_produce<T, F: FnOnce() -> (T, usize)>(&self, answer: F) -> Result<T, F> {
        let _producing = self
            .producing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.in_flight.load(Ordering::Acquire) >= self.limit {
            return Err(answer);
        }
        let (value, bytes) = answer();
        self.in_flight.fetch_add(bytes, Ordering::AcqRel);
        Ok(value)
    }

    /// Waits until the connection's answers in flight are under the limit, for an answer that
    /// must be awaited before its size is known ([`produced`](Self::produced) counts it).
    pub(crate) async fn wait(&self) {
        loop {
            let written = self.written.notified();
            if self.in_flight.load(Ordering::Acquire) < self.limit {
                return;
            }
            written.await;
        }
    }

    /// A place among the connection's [`OPS_IN_PROGRESS`] operations, given in the order asked.
    pub(crate) async fn op_permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.ops.acquire().await.expect("never closed")
    }

    /// Counts an answer of `bytes` produced after [`wait`](Self::wait).
    pub(crate) fn produced(&self, bytes: usize) {
        self.in_flight.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Pays back `bytes` written to the socket.
    pub(crate) fn written(&self, bytes: usize) {
        let before = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            })
            .unwrap_or_default();
        if before >= self.limit {
            self.written.notify_waiters();
        }
    }

    /// Pays back `bytes` counted for memory that is freed without being written (what the
    /// allocator set aside beyond an answer buffer's bytes).
    pub(crate) fn released(&self, bytes: usize) {
        self.written(bytes);
    }

    /// Answer bytes produced and not yet written.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn allocated_len_is_mimallocs_size_class() {
        // mimalloc's classes: exact words up to 64 bytes, then four per power of two.
        let classes = [
            (0, 8),
            (1, 8),
            (64, 64),
            (65, 80),
            (100, 112),
            (1024, 1024),
            (1025, 1280),
            (1120, 1280),
            (4130, 5120),
            (28_910, 32_768),
            (32_768, 32_768),
            (33_040, 40_960),
            (65_536, 65_536),
            (65_537, 131_072),
        ];
        for (len, class) in classes {
            assert_eq!(super::allocated_len(len), class, "{len} bytes");
        }
        for len in 0..=65_536 {
            let class = super::allocated_len(len);
            assert!(
                class >= len && class <= (len * 5 / 4).max(8) + 8,
                "{len} bytes: {class}"
            );
        }
    }

    use super::*;

    #[tokio::test]
    async fn answers_wait_while_the_budget_is_spent_and_go_on_as_bytes_are_written() {
        let budget = Arc::new(AnswerBudget::new(100));
        // Under the limit: goes at once, even if it takes the total over.
        assert_eq!(budget.produce(|| ("first", 150)).await, "first");
        assert_eq!(budget.in_flight(), 150);
        let produced = Arc::new(AtomicUsize::new(0));
        let waiting = {
            let (budget, produced) = (budget.clone(), produced.clone());
            tokio::spawn(async move {
                budget
                    .produce(|| {
                        produced.fetch_add(1, Ordering::SeqCst);
                        ((), 10)
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            produced.load(Ordering::SeqCst),
            0,
            "over budget: not produced"
        );
        budget.written(40);
        tokio::task::yield_now().await;
        assert_eq!(produced.load(Ordering::SeqCst), 0, "110 still in flight");
        budget.written(20);
        waiting.await.unwrap();
        assert_eq!(produced.load(Ordering::SeqCst), 1);
        assert_eq!(budget.in_flight(), 100);
        budget.written(1000);
        assert_eq!(budget.in_flight(), 0, "never below zero");
    }
}
