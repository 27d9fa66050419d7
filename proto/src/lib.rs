//! The `gonest.session.v1` gRPC contract: the generated tonic client and server ([`pb`]), the
//! descriptor set for server reflection, and conversions between wire and core types.
//!
//! The contract itself is `proto/gonest/session/v1/session.proto` in this crate; apps in other
//! languages generate their clients from that file.
//!
//! ```no_run
//! use gonest_session_proto::pb::{GetRequest, session_store_client::SessionStoreClient};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = SessionStoreClient::connect("http://127.0.0.1:7070").await?;
//! let response = client.get(GetRequest { id: "abc123".into() }).await?;
//! println!("found: {}", response.into_inner().session.is_some());
//! # Ok(())
//! # }
//! ```

pub mod chunked;
pub mod codec;
mod convert;
pub mod framed;
mod limits;
mod token_file;

pub use convert::{
    ERROR_DOMAIN, TRACKING_UNAVAILABLE, batch_too_large, code_name, duration_from_pb,
    duration_to_pb, error_from_pb, error_from_status, error_to_pb, is_tracking_unavailable,
    record_from_pb, record_to_pb, save_from_pb, save_to_pb, status_from_error, timestamp_from_pb,
    timestamp_to_pb, tracking_unavailable,
};
pub use limits::{FRAMING_ALLOWANCE, MAX_BATCH_OPERATIONS, batch_operations, message_limit};
pub use token_file::{TokenFileError, parse_token_file};

/// Generated messages, client and server of `gonest.session.v1`. `bytes` fields are
/// [`bytes::Bytes`]; in a `Pipeline` message, a Save operation and a Get answer are boxed
/// (`Op::Save(Box<SaveRequest>)`, `Result::Get(Box<GetResponse>)`), so the operation and answer
/// enums stay small as they move between tasks.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("gonest.session.v1");
}

/// The largest HTTP/2 DATA frame `gonest-session-client` accepts (its SETTINGS_MAX_FRAME_SIZE;
/// HTTP/2's default is 16 KiB). h2 writes each frame with a system call of its own, so the
/// daemon's answers ready together go out in one write up to this size, where 16 KiB frames
/// would take one write per 16 KiB.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;

/// The encoded file descriptor set of `gonest.session.v1`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/gonest_session_v1_descriptor.bin"
));
