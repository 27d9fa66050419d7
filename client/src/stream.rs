//! The `Pipeline` call below the generated client, so that answers are decoded straight from the
//! received frames.
//!
//! tonic's `Streaming` copies every received DATA frame into one buffer before decoding it, a
//! second copy of each session value after the kernel's. Here the response body's frames go to a
//! [`FramedReader`], which decodes a value lying within one frame (the daemon's frames are up
//! to [`MAX_FRAME_SIZE`](gonest_session_proto::MAX_FRAME_SIZE)) as a slice of it. The request side is encoded as tonic encodes it:
//! each message prefixed by its flag and length, the messages ready together in one DATA frame.
//!
//! The call goes through the same channel and token interceptor as the generated client, and a
//! stream ends the way tonic ends one: with the `grpc-status` the daemon sent in its headers
//! (trailers-only) or trailers, or, without one, the status its HTTP status maps to.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use gonest_session_proto::framed::FramedReader;
use gonest_session_proto::pb;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::codegen::Service;
use tonic::service::interceptor::{InterceptedService, ResponseBody};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth::ClientAuth;

/// The connection with the token interceptor in front, as the generated client has it.
pub(crate) type Connection = InterceptedService<Channel, ClientAuth>;

/// The `Pipeline` method's path, as the generated client sends it.
pub(crate) const PIPELINE_PATH: &str = "/gonest.session.v1.SessionStore/Pipeline";

/// Opens a `Pipeline` stream sending `requests`; fails if the daemon refuses it at once.
pub(crate) async fn pipeline(
    connection: &mut Connection,
    requests: impl Stream<Item = pb::PipelineRequest> + Send + 'static,
) -> Result<Answers, Status> {
    let body = RequestBody {
        requests: Box::pin(requests),
        buf: BytesMut::new(),
        done: false,
    };
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PIPELINE_PATH)
        .version(http::Version::HTTP_2)
        .header(TE, HeaderValue::from_static("trailers"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .body(tonic::body::Body::new(body))
        .expect("a constant path and headers make a valid request");
    std::future::poll_fn(|cx| connection.poll_ready(cx))
        .await
        .map_err(|err| Status::from_error(err.into()))?;
    let response = connection
        .call(request)
        .await
        .map_err(|err| Status::from_error(err.into()))?;
    Answers::new(response)
}

/// Bytes of requests gathered into one DATA frame before it is sent (tonic's figure).
const FRAME_BYTES: usize = 32 << 10;

/// The request side of a stream: each message prefixed by its flag (not compressed) and length,
/// then prost's encoding; the messages ready together sent as one DATA frame, as tonic sends
/// them.
struct RequestBody<S> {
    requests: std::pin::Pin<Box<S>>,
    buf: BytesMut,
    /// Set once `requests` has ended.
    done: bool,
}

impl<S: Stream<Item = pb::PipelineRequest>> http_body::Body for RequestBody<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        let this = self.get_mut();
        while !this.done && this.buf.len() < FRAME_BYTES {
            match this.requests.as_mut().poll_next(cx) {
                Poll::Ready(Some(request)) => encode(&request, &mut this.buf),
                Poll::Ready(None) => this.done = true,
                Poll::Pending if this.buf.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        if this.buf.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
    }
}

/// Appends one request: not compressed, its length, prost's encoding.
fn encode(request: &pb::PipelineRequest, buf: &mut BytesMut) {
    let len = request.encoded_len();
    buf.reserve(5 + len);
    // The client sends at most 256 KiB of operations in a message, and one save alone only after
    // checking it against the daemon's limits.
    gonest_session_proto::framed::put_prefix(buf, len);
    request.encode_raw(buf);
}

/// The answers of one `Pipeline` stream.
pub(crate) struct Answers<B = ResponseBody<tonic::body::Body>> {
    body: B,
    reader: FramedReader,
    /// How the stream ended, once it has.
    ended: Option<Result<(), Status>>,
}

impl<B> std::fmt::Debug for Answers<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("buffered", &self.reader.buffered())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B> Answers<B>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Unpin,
{
    fn new(response: http::Response<B>) -> Result<Self, Status> {
        // A daemon that refuses the call at once sends its status in the headers
        // ("trailers-only"); an OK there is a stream without answers.
        let ended = match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != Code::Ok => return Err(status),
            Some(_) => Some(Ok(())),
            None if response.status() != StatusCode::OK => {
                return Err(status_of_http(response.status()));
            }
            None => None,
        };
        Ok(Self {
            body: response.into_body(),
            // The client takes any answer its daemon sends: whatever it stored, the app can read
            // back (as the generated client is configured in `RemoteSessionStore`).
            reader: FramedReader::new(usize::MAX),
            ended,
        })
    }

    /// The next answer; `None` once the daemon has ended the stream with OK.
    pub(crate) async fn message(&mut self) -> Result<Option<pb::PipelineResponse>, Status> {
        loop {
            if let Some(answer) = self
                .reader
                .next_message()
                .map_err(|err| Status::internal(format!("daemon sent a bad answer: {err}")))?
            {
                return Ok(Some(answer));
            }
            if let Some(ended) = &self.ended {
                return ended.clone().map(|()| None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.reader.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return self.end(Some(&trailers));
                        }
                    }
                },
                Some(Err(status)) => {
                    self.ended = Some(Err(status.clone()));
                    return Err(status);
                }
                None => return self.end(None),
            }
        }
    }

    /// Ends the stream with the status of `trailers`.
    fn end(
        &mut self,
        trailers: Option<&HeaderMap>,
    ) -> Result<Option<pb::PipelineResponse>, Status> {
        let ended = if self.reader.buffered() > 0 {
            Err(Status::internal("session stream ended inside an answer"))
        } else {
            match trailers.and_then(Status::from_header_map) {
                Some(status) if status.code() == Code::Ok => Ok(()),
                Some(status) => Err(status),
                None => Err(Status::unknown(
                    "session stream ended without a grpc-status",
                )),
            }
        };
        self.ended = Some(ended.clone());
        ended.map(|()| None)
    }
}

/// The status a response without `grpc-status` and with this HTTP status stands for, as gRPC
/// maps them.
fn status_of_http(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("daemon answered HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn the_path_is_the_generated_clients() {
        // The generated server routes by this name; a renamed service or method fails here.
        assert_eq!(
            PIPELINE_PATH,
            format!("/{}/Pipeline", pb::session_store_server::SERVICE_NAME)
        );
    }

    fn get(tag: u64, id_len: usize) -> pb::PipelineRequest {
        pb::PipelineRequest {
            tag,
            op: Some(pb::pipeline_request::Op::Get(pb::GetRequest {
                id: "i".repeat(id_len),
            })),
            batch: Vec::new(),
        }
    }

    fn body_of(
        requests: impl Stream<Item = pb::PipelineRequest> + 'static,
    ) -> RequestBody<impl Stream<Item = pb::PipelineRequest>> {
        RequestBody {
            requests: Box::pin(requests),
            buf: BytesMut::new(),
            done: false,
        }
    }

    fn decode_all(frames: &[Bytes]) -> Vec<pb::PipelineRequest> {
        let mut reader = FramedReader::new(usize::MAX);
        let mut read = Vec::new();
        for frame in frames {
            reader.push(frame.clone());
            while let Some(request) = reader.next_message().unwrap() {
                read.push(request);
            }
        }
        assert_eq!(reader.buffered(), 0, "frames end on a message's end");
        read
    }

    async fn data(body: &mut RequestBody<impl Stream<Item = pb::PipelineRequest>>) -> Bytes {
        body.frame().await.unwrap().unwrap().into_data().unwrap()
    }

    #[tokio::test]
    async fn requests_ready_together_go_in_one_frame_and_wait_for_no_more() {
        let (queue, queued) = tokio::sync::mpsc::unbounded_channel();
        let mut body = body_of(tokio_stream::wrappers::UnboundedReceiverStream::new(queued));
        let sent = vec![get(1, 3), get(2, 0), get(3, 100)];
        for request in &sent {
            queue.send(request.clone()).unwrap();
        }
        let frame = data(&mut body).await;
        assert_eq!(decode_all(&[frame]), sent);
        // Nothing more is queued: the body waits instead of sending an empty frame.
        assert!(futures_util::FutureExt::now_or_never(body.frame()).is_none());
        queue.send(get(4, 1)).unwrap();
        assert_eq!(decode_all(&[data(&mut body).await]), [get(4, 1)]);
        drop(queue);
        assert!(body.frame().await.is_none(), "ends with its requests");
    }

    #[tokio::test]
    async fn a_frame_closes_once_it_holds_32_kib() {
        let sent: Vec<_> = (1..=40).map(|tag| get(tag, 1000)).collect();
        let mut body = body_of(futures_util::stream::iter(sent.clone()));
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames.len(), 2);
        assert!(frames[0].len() >= FRAME_BYTES && frames[0].len() < FRAME_BYTES + 1100);
        assert_eq!(decode_all(&frames), sent);
    }

    /// A response with `headers` whose body is `frames` (data, then trailers if given).
    fn response(
        headers: &[(&'static str, &'static str)],
        http_status: StatusCode,
        data: Vec<Bytes>,
        trailers: Option<&[(&'static str, &'static str)]>,
    ) -> http::Response<tonic::body::Body> {
        let mut frames: Vec<Result<Frame<Bytes>, Status>> =
            data.into_iter().map(|data| Ok(Frame::data(data))).collect();
        if let Some(trailers) = trailers {
            let mut map = HeaderMap::new();
            for (name, value) in trailers {
                map.insert(*name, HeaderValue::from_static(value));
            }
            frames.push(Ok(Frame::trailers(map)));
        }
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut response = http::Response::new(tonic::body::Body::new(body));
        *response.status_mut() = http_status;
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    fn answer(tag: u64) -> pb::PipelineResponse {
        pb::PipelineResponse {
            tag,
            result: Some(pb::pipeline_response::Result::Destroy(
                pb::DestroyResponse { existed: true },
            )),
            batch: Vec::new(),
        }
    }

    fn framed(answers: &[pb::PipelineResponse]) -> Bytes {
        let mut buf = BytesMut::new();
        for answer in answers {
            buf.put_u8(0);
            buf.put_u32(answer.encoded_len() as u32);
            answer.encode_raw(&mut buf);
        }
        buf.freeze()
    }

    async fn read_all(
        response: http::Response<tonic::body::Body>,
    ) -> (Vec<pb::PipelineResponse>, Result<(), Status>) {
        let mut answers = match Answers::new(response) {
            Ok(answers) => answers,
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut read = Vec::new();
        loop {
            match answers.message().await {
                Ok(Some(answer)) => read.push(answer),
                Ok(None) => break,
                Err(status) => {
                    // Asked again, the stream says the same.
                    let again = answers.message().await.unwrap_err();
                    assert_eq!(again.code(), status.code());
                    return (read, Err(status));
                }
            }
        }
        assert!(matches!(answers.message().await, Ok(None)), "stays ended");
        (read, Ok(()))
    }

    #[tokio::test]
    async fn answers_then_the_trailers_status() {
        let bytes = framed(&[answer(1), answer(2)]);
        // Split inside the second answer.
        let (head, tail) = (bytes.slice(..9), bytes.slice(9..));
        let ok = response(
            &[],
            StatusCode::OK,
            vec![head, tail],
            Some(&[("grpc-status", "0")]),
        );
        assert_eq!(read_all(ok).await.0, [answer(1), answer(2)]);

        let denied = response(
            &[],
            StatusCode::OK,
            vec![framed(&[answer(1)])],
            Some(&[("grpc-status", "7"), ("grpc-message", "revoked")]),
        );
        let (read, end) = read_all(denied).await;
        assert_eq!(read, [answer(1)]);
        let status = end.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "revoked")
        );
    }

    #[tokio::test]
    async fn a_status_in_the_headers_ends_the_stream_before_any_answer() {
        let empty = response(&[("grpc-status", "0")], StatusCode::OK, Vec::new(), None);
        let (read, end) = read_all(empty).await;
        assert!(read.is_empty() && end.is_ok(), "{end:?}");
        let refused = response(&[("grpc-status", "16")], StatusCode::OK, Vec::new(), None);
        assert_eq!(
            read_all(refused).await.1.unwrap_err().code(),
            Code::Unauthenticated
        );
        let http = response(&[], StatusCode::SERVICE_UNAVAILABLE, Vec::new(), None);
        assert_eq!(
            read_all(http).await.1.unwrap_err().code(),
            Code::Unavailable
        );
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error() {
        let bytes = framed(&[answer(1), answer(2)]);
        let cut = response(
            &[],
            StatusCode::OK,
            vec![bytes.slice(..bytes.len() - 1)],
            None,
        );
        let (read, end) = read_all(cut).await;
        assert_eq!(read, [answer(1)]);
        assert_eq!(end.unwrap_err().code(), Code::Internal);
        let no_status = response(&[], StatusCode::OK, vec![framed(&[answer(1)])], None);
        let (read, end) = read_all(no_status).await;
        assert_eq!(read, [answer(1)]);
        assert_eq!(end.unwrap_err().code(), Code::Unknown);
    }

    #[test]
    fn http_statuses_map_as_grpc_maps_them() {
        assert_eq!(
            status_of_http(StatusCode::UNAUTHORIZED).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            status_of_http(StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(
            status_of_http(StatusCode::IM_A_TEAPOT).code(),
            Code::Unknown
        );
    }
}
