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

/// Answers written and not yet sent beyond which the body stops taking answers from the stream
/// and hands them on (tonic's own yield threshold).
const YIELD_BYTES: usize = 32 << 10;

/// The answers of one `Pipeline` call as gRPC messages, then the status as trailers.
pub(super) struct AnswerBody {
    answers: Option<AnswerStream>,
    /// Answers taken from the stream and not yet written into `chunks`.
    taken: Vec<Answer>,
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
        // Takes every answer ready, up to YIELD_BYTES, so answers produced together are sent
        // together, written into one buffer of exactly their size.
        while let Some(answers) = this.answers.as_mut()
            && this.chunks.len() + this.taken_len < YIELD_BYTES
        {
            match answers.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(answer))) => {
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
            result: Some(pb::pipeline_response::Result::Get(Box::new(
                pb::GetResponse {
                    session: Some(session),
                },
            ))),
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
