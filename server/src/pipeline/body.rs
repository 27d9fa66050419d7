//! The body of a `Pipeline` response: its answers as gRPC messages, then the status.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use gonest_session_proto::chunked::{Answer, Chunks};
use http_body::Frame;
use tonic::Status;

use super::AnswerStream;
use crate::budget::{AnswerBudget, allocated_len};

/// Bytes of answers beyond which the body stops taking answers from the stream and hands them on
/// (tonic's own yield threshold). One buffer holds at most this, unless one answer alone is
/// larger: an answer that would take it over starts the next (32 KiB is one of the allocator's
/// size classes, so a full buffer wastes at most what the next answer did not fit into).
const YIELD_BYTES: usize = 32 << 10;

/// The answers of one `Pipeline` call as gRPC messages, then the status as trailers.
pub(super) struct AnswerBody {
    answers: Option<AnswerStream>,
    /// Answers taken from the stream and not yet written into `chunks`.
    taken: Vec<Answer>,
    /// An answer taken that would have made the run over YIELD_BYTES: the next run's first.
    carried: Option<Answer>,
    /// Bytes `taken` will add to `chunks`.
    taken_len: usize,
    chunks: Chunks,
    trailers: Option<http::HeaderMap>,
    /// The connection's answer budget, which also counts the room the allocator gives each
    /// buffer beyond its bytes (none when called in process).
    budget: Option<Arc<AnswerBudget>>,
}

impl AnswerBody {
    pub(super) fn new(answers: AnswerStream, budget: Option<Arc<AnswerBudget>>) -> Self {
        Self {
            answers: Some(answers),
            taken: Vec::new(),
            carried: None,
            taken_len: 0,
            chunks: Chunks::default(),
            trailers: None,
            budget,
        }
    }

    /// Ends the answers with `status`, sent as the trailers once the chunks before it are.
    fn end(&mut self, status: &Status) {
        self.answers = None;
        let mut trailers = http::HeaderMap::new();
        // Only an unrepresentable status fails to become headers; tonic answers that INTERNAL.
        if status.add_header(&mut trailers).is_err() {
            let _ = Status::internal("the status could not be sent").add_header(&mut trailers);
        }
        self.trailers = Some(trailers);
    }
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(answer) = this.carried.take() {
            this.taken_len += answer.framed_len();
            this.taken.push(answer);
        }
        // Takes every answer ready, up to YIELD_BYTES, so answers produced together are sent
        // together, written into one buffer of exactly their size.
        while let Some(answers) = this.answers.as_mut()
            && this.chunks.len() + this.taken_len < YIELD_BYTES
        {
            match answers.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(answer))) => {
                    if !this.taken.is_empty()
                        && this.chunks.len() + this.taken_len + answer.framed_len() > YIELD_BYTES
                    {
                        this.carried = Some(answer);
                        break;
                    }
                    this.taken_len += answer.framed_len();
                    this.taken.push(answer);
                }
                Poll::Ready(Some(Err(status))) => this.end(&status),
                Poll::Ready(None) => this.end(&Status::ok("")),
                Poll::Pending if this.chunks.is_empty() && this.taken.is_empty() => {
                    return Poll::Pending;
                }
                Poll::Pending => break,
            }
        }
        if !this.taken.is_empty() {
            let budget = &this.budget;
            this.chunks
                .push_answers_sealed(&this.taken, |chunk, copied| {
                    let slack = allocated_len(copied) - copied;
                    match budget {
                        Some(budget) if slack > 0 => {
                            budget.produced(slack);
                            Bytes::from_owner(Held {
                                chunk,
                                budget: budget.clone(),
                                slack,
                            })
                        }
                        _ => chunk,
                    }
                });
            this.taken.clear();
            this.taken_len = 0;
        }
        if let Some(chunk) = this.chunks.next_chunk() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(
            this.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.answers.is_none() && self.chunks.is_empty() && self.trailers.is_none()
    }
}

/// The last chunk of an answer buffer, which pays the budget back the room the allocator gave the
/// buffer beyond its bytes when it is dropped (the buffer is then freed).
struct Held {
    chunk: Bytes,
    budget: Arc<AnswerBudget>,
    slack: usize,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.chunk
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.released(self.slack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gonest_session_proto::pb;
    use http_body::Body as _;

    /// A `Pipeline` answer to a Get of a session holding one value of `len` bytes.
    fn get_answer(tag: u64, len: usize) -> Answer {
        let session = pb::Session {
            id: "s".repeat(43),
            data: [("k".to_owned(), Bytes::from(vec![b'v'; len]))].into(),
            ..Default::default()
        };
        Answer::from(pb::PipelineResponse {
            tag,
            result: Some(pb::pipeline_response::Result::Get(pb::GetResponse {
                session: Some(session),
            })),
            batch: Vec::new(),
        })
    }

    fn body_of(answers: Vec<Answer>, budget: Option<Arc<AnswerBudget>>) -> AnswerBody {
        let answers = futures_util::stream::iter(answers.into_iter().map(Ok));
        AnswerBody::new(Box::pin(answers), budget)
    }

    /// The data frames of `body` until its trailers.
    async fn data_frames(body: &mut AnswerBody) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        {
            match frame.unwrap().into_data() {
                Ok(data) => frames.push(data),
                Err(_trailers) => break,
            }
        }
        frames
    }

    #[tokio::test]
    async fn a_buffer_holds_at_most_yield_bytes_unless_one_answer_alone_is_larger() {
        let mut answers: Vec<Answer> = (1..=20).map(|tag| get_answer(tag, 4000)).collect();
        answers.push(get_answer(21, 40_000));
        answers.extend((22..=30).map(|tag| get_answer(tag, 1000)));
        let sent: usize = answers.iter().map(Answer::framed_len).sum();
        let (small, large) = (answers[0].framed_len(), answers[20].framed_len());
        let frames = data_frames(&mut body_of(answers, None)).await;
        assert_eq!(frames.iter().map(Bytes::len).sum::<usize>(), sent);
        for frame in &frames {
            assert!(
                frame.len() <= YIELD_BYTES || frame.len() == large,
                "a frame of {} bytes",
                frame.len()
            );
        }
        // 20 answers of about 4 KiB: as many to a buffer as fit in YIELD_BYTES (the next would
        // take it over).
        let fit = YIELD_BYTES / small;
        assert_eq!(
            (fit, frames[0].len(), frames[1].len()),
            (8, fit * small, fit * small)
        );
        assert!(frames.iter().any(|frame| frame.len() == large));
    }

    #[tokio::test]
    async fn the_budget_counts_the_room_the_allocator_gives_a_buffer_until_it_is_freed() {
        let budget = Arc::new(AnswerBudget::new(1 << 20));
        let answers: Vec<Answer> = (1..=3).map(|tag| get_answer(tag, 1000)).collect();
        let copied: usize = answers.iter().map(Answer::copied_len).sum();
        let mut body = body_of(answers, Some(budget.clone()));
        let frames = data_frames(&mut body).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), copied);
        let slack = allocated_len(copied) - copied;
        assert!(
            slack > 0,
            "{copied} bytes fill their class: pick another size"
        );
        // The answers themselves were not produced under this budget: only the room is counted.
        assert_eq!(budget.in_flight(), slack);
        let part = frames[0].slice(10..20);
        drop(frames);
        assert_eq!(
            budget.in_flight(),
            slack,
            "a part of the buffer is still held"
        );
        drop(part);
        assert_eq!(budget.in_flight(), 0);
    }
}
