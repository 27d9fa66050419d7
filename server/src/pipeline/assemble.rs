//! Putting a `Pipeline` stream's answers back into messages: one per request message, a
//! batch's answers in parts of about [`BATCH_PART_BYTES`].

use gonest_session_core::StoreError;
use gonest_session_proto::chunked::{Answer, Outcome};
use gonest_session_proto::{error_to_pb, pb};
use tonic::Status;

use crate::engine::Engine;
use crate::service::SessionService;

/// A batch's answers go back in messages of about this many bytes: however many operations a
/// batch holds, and however large the sessions they read, no answer the daemon holds is larger
/// than that and one session.
pub(crate) const BATCH_PART_BYTES: usize = 1 << 20;

/// One applied operation: its answer, and where that goes.
pub(super) struct Piece {
    /// The tag of the message it came in.
    pub(super) message: u64,
    /// Whether it is the message's own operation (else one of its batch).
    pub(super) own: bool,
    /// Whether it is the message's last.
    pub(super) last: bool,
    pub(super) answer: Answer,
}

/// Puts answers back into messages, for both engines.
#[derive(Default)]
pub(super) struct Assembler {
    /// The message being put together, and the bytes of its batch answers so far.
    part: Option<(Answer, usize)>,
}

impl Assembler {
    /// Adds `piece`; returns a message once one is complete.
    pub(super) fn add(&mut self, piece: Piece) -> Option<Answer> {
        let (response, bytes) = self.part.get_or_insert_with(|| {
            let header = Answer {
                tag: piece.message,
                ..Default::default()
            };
            (header, 0)
        });
        if piece.own {
            let batch = std::mem::take(&mut response.batch);
            *response = piece.answer;
            response.batch = batch;
        } else {
            *bytes += piece.answer.encoded_len();
            response.batch.push(piece.answer);
        }
        if piece.last || *bytes >= BATCH_PART_BYTES {
            return self.part.take().map(|(response, _)| response);
        }
        None
    }

    /// The message being put together as it stands (a bare answer with `tag` if none).
    pub(super) fn take(&mut self, tag: u64) -> Answer {
        self.part.take().map_or_else(
            || Answer {
                tag,
                ..Default::default()
            },
            |(part, _)| part,
        )
    }
}

/// The answer of operation `tag`: its result, or a failure as an inline `Error`.
pub(super) fn answer(tag: u64, result: Result<Outcome, Status>) -> Answer {
    let result = result.unwrap_or_else(|status| {
        Outcome::Message(pb::pipeline_response::Result::Error(error_to_pb(&status)))
    });
    Answer {
        tag,
        result: Some(result),
        batch: Vec::new(),
    }
}

/// A result as prost's message holds it.
pub(super) fn message<T>(
    result: Result<T, Status>,
    done: impl FnOnce(T) -> pb::pipeline_response::Result,
) -> Result<Outcome, Status> {
    result.map(|answer| Outcome::Message(done(answer)))
}

impl<E: Engine> SessionService<E> {
    /// The answer to a batch nested in a batch, or to a message with no operation.
    pub(super) fn refuse(&self, tag: u64, why: &'static str) -> Answer {
        let refused =
            self.observed::<Outcome>("pipeline", self.started(), Err(StoreError::invalid(why)));
        answer(tag, refused)
    }
}

/// Why a batch nested in a batch is refused.
pub(super) const NESTED: &str = "batches do not nest";
/// Why a message with no operation is refused.
pub(super) const NO_OPERATION: &str = "pipeline request has no operation";
