//! `Pipeline` calls, answered with a response body of our own instead of tonic's.
//!
//! tonic encodes every answer into one contiguous buffer, which copies each session value a Get
//! returns before the socket copies it again; at 16 KiB that copy was most of the daemon's
//! `memmove`. Here the call is decoded and served as tonic would (prost's decoder and the same
//! size limit, with batches over [`MAX_BATCH_OPERATIONS`] refused before they are decoded; the
//! same answers as the generated server's `pipeline`, from [`SessionService::answers`]), and
//! only the answers are written differently: a Get on the memory backend is written straight
//! from the stored session, and [`Chunks`] leaves large values as slices of the stored sessions,
//! each sent as a DATA frame of its own. Every other method goes to tonic's generated server
//! unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gonest_session_proto::chunked::Chunks;
use gonest_session_proto::codec::PipelineDecoder;
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use crate::service::{AnswerStream, SessionService};

#[cfg(doc)]
use gonest_session_proto::MAX_BATCH_OPERATIONS;

/// The path of `Pipeline` calls.
pub(crate) const PIPELINE_PATH: &str = "/gonest.session.v1.SessionStore/Pipeline";

/// Answers written and not yet sent beyond which the body stops taking answers from the stream
/// and hands them on (tonic's own yield threshold).
const YIELD_BYTES: usize = 32 << 10;

/// tonic's generated server `inner`, with `Pipeline` calls answered by [`call`].
#[derive(Debug, Clone)]
pub(crate) struct WithPipeline<S> {
    inner: S,
    service: SessionService,
    /// The largest request message (as the generated server's `max_decoding_message_size`).
    max_request: usize,
}

impl<S> WithPipeline<S> {
    pub(crate) fn new(inner: S, service: SessionService, max_request: usize) -> Self {
        Self {
            inner,
            service,
            max_request,
        }
    }
}

impl<S: NamedService> NamedService for WithPipeline<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for WithPipeline<S>
where
    S: Service<
            http::Request<B>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        >,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PIPELINE_PATH {
            return self.inner.call(request);
        }
        let (service, max_request) = (self.service.clone(), self.max_request);
        Box::pin(async move { Ok(call(service, request, max_request).await) })
    }
}

/// Serves one `Pipeline` call as tonic's generated server does, with an [`AnswerBody`].
async fn call<B>(
    service: SessionService,
    request: http::Request<B>,
    max_request: usize,
) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    // No compression is offered (as by the generated server, configured without any).
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        return Status::unimplemented(format!(
            "Content is compressed with `{encoding}` which isn't supported"
        ))
        .into_http();
    }
    let request = request.map(|body| {
        Streaming::new_request(PipelineDecoder::default(), body, None, Some(max_request))
    });
    let answers = service.answers(tonic::Request::from_http(request));
    let mut response = http::Response::new(Body::new(AnswerBody::new(answers)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The answers of one `Pipeline` call as gRPC messages, then the status as trailers.
struct AnswerBody {
    answers: Option<AnswerStream>,
    chunks: Chunks,
    trailers: Option<http::HeaderMap>,
}

impl AnswerBody {
    fn new(answers: AnswerStream) -> Self {
        Self {
            answers: Some(answers),
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
        // together.
        while let Some(answers) = this.answers.as_mut()
            && this.chunks.len() < YIELD_BYTES
        {
            match answers.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(answer))) => this.chunks.push_answer(&answer),
                Poll::Ready(Some(Err(status))) => this.end(&status),
                Poll::Ready(None) => this.end(&Status::ok("")),
                Poll::Pending if this.chunks.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use gonest_session_proto::pb::session_store_server::SessionStoreServer;

    #[test]
    fn the_path_is_the_generated_servers() {
        assert_eq!(
            PIPELINE_PATH,
            format!("/{}/Pipeline", SessionStoreServer::<SessionService>::NAME)
        );
    }
}
