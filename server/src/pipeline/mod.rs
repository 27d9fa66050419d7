//! `Pipeline` calls, answered with a response body of our own instead of tonic's.
//!
//! tonic encodes every answer into one contiguous buffer, which copies each session value a Get
//! returns before the socket copies it again; at 16 KiB that copy was most of the daemon's
//! `memmove`. Here the call is decoded as tonic would (prost's decoder and the same size limit,
//! with batches over [`MAX_BATCH_OPERATIONS`] refused before they are decoded), and only the
//! answers are made and written differently:
//!
//! - [`memory`]: on the memory engine, one operation after another on the task that polls the
//!   stream, each answer produced under the connection's budget;
//! - [`concurrent`]: on a store that waits, many operations at once, in order per session
//!   ([`turns`]);
//! - [`assemble`]: answers put back into one message per request, a batch's in parts;
//! - [`body`]: the messages written as DATA frames, a Get on the memory backend straight from
//!   the stored session, large values as slices of it ([`Chunks`]), each a frame of its own.
//!
//! Every other method goes to tonic's generated server unchanged.
//!
//! [`Chunks`]: gonest_session_proto::chunked::Chunks

mod assemble;
mod body;
mod concurrent;
mod memory;
mod turns;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use gonest_session_proto::chunked::Answer;
use gonest_session_proto::codec::PipelineDecoder;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

pub(crate) use concurrent::answers_at_once;
pub(crate) use memory::MemoryAnswers;

use crate::engine::Engine;
use crate::service::SessionService;
use body::AnswerBody;

/// The answers of a `Pipeline` stream, as the daemon writes them.
pub(crate) type AnswerStream = Pin<Box<dyn Stream<Item = Result<Answer, Status>> + Send>>;

/// Completes when the daemon starts shutting down, which ends a stream's answers.
pub(crate) type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

#[cfg(doc)]
use gonest_session_proto::MAX_BATCH_OPERATIONS;

/// The path of `Pipeline` calls.
pub(crate) const PIPELINE_PATH: &str = "/gonest.session.v1.SessionStore/Pipeline";

/// tonic's generated server `inner`, with `Pipeline` calls answered by [`call`].
#[derive(Debug, Clone)]
pub(crate) struct WithPipeline<S, E> {
    inner: S,
    service: SessionService<E>,
    /// The largest request message (as the generated server's `max_decoding_message_size`).
    max_request: usize,
}

impl<S, E> WithPipeline<S, E> {
    pub(crate) fn new(inner: S, service: SessionService<E>, max_request: usize) -> Self {
        Self {
            inner,
            service,
            max_request,
        }
    }
}

impl<S: NamedService, E> NamedService for WithPipeline<S, E> {
    const NAME: &'static str = S::NAME;
}

impl<S, E, B> Service<http::Request<B>> for WithPipeline<S, E>
where
    E: Engine,
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
async fn call<E: Engine, B>(
    service: SessionService<E>,
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
    let request = tonic::Request::from_http(request.map(|body| {
        Streaming::new_request(PipelineDecoder::default(), body, None, Some(max_request))
    }));
    let budget = crate::service::answer_budget(&request);
    let answers = service.answers(request);
    let mut response = http::Response::new(Body::new(AnswerBody::new(answers, budget)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use gonest_session_proto::pb::session_store_server::SessionStoreServer;

    #[test]
    fn the_path_is_the_generated_servers() {
        assert_eq!(
            PIPELINE_PATH,
            format!(
                "/{}/Pipeline",
                SessionStoreServer::<SessionService<crate::engine::MemoryEngine>>::NAME
            )
        );
    }
}
