//! The body of a `Pipeline` response: its answers as gRPC messages, then the status.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gonest_session_proto::chunked::{Answer, Chunks};
use http_body::Frame;
use tonic::Status;

use super::AnswerStream;

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
}

impl AnswerBody {
    pub(super) fn new(answers: AnswerStream) -> Self {
        Self {
            answers: Some(answers),
            taken: Vec::new(),
            taken_len: 0,
            chunks: Chunks::default(),
            trailers: None,
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
            this.chunks.push_answers(&this.taken);
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
