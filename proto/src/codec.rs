//! The protobuf codec of the generated client and server: prost's, except that
//! - a message that does not decode is `INVALID_ARGUMENT` (the sender's fault, said to the
//!   sender) instead of `INTERNAL`;
//! - a message is encoded into room reserved for all of it at once: prost writes field by field,
//!   and a 16 KiB session would otherwise grow the buffer, copying what was written, as it goes.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Encodes `T` and decodes `U` with prost.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(ProstEncoder::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(ProstDecoder::default())
    }
}

/// prost's encoder, reserving the message's whole length before writing it.
#[derive(Debug)]
pub struct ReservingEncoder<T>(ProstEncoder<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // `encode` would measure the message again to check the room it was just given.
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The daemon's decoder of `Pipeline` requests: [`CheckedDecoder`]'s, after counting the
/// operations a message carries on the wire: one carrying more than
/// [`MAX_BATCH_OPERATIONS`](crate::MAX_BATCH_OPERATIONS) is refused before anything of it is
/// decoded (see [`batch_operations`](crate::batch_operations)).
#[derive(Debug)]
pub struct PipelineDecoder(CheckedDecoder<crate::pb::PipelineRequest>);

impl Default for PipelineDecoder {
    fn default() -> Self {
        Self(CheckedDecoder(ProstDecoder::default()))
    }
}

impl Decoder for PipelineDecoder {
    type Item = crate::pb::PipelineRequest;
    type Error = Status;

    fn decode(
        &mut self,
        buf: &mut DecodeBuf<'_>,
    ) -> Result<Option<crate::pb::PipelineRequest>, Status> {
        use bytes::Buf;
        let limit = crate::MAX_BATCH_OPERATIONS;
        // tonic hands a decoder one whole message in one buffer; were it ever in pieces, it is
        // gathered first, so that the count reads all of it.
        if buf.chunk().len() < buf.remaining() {
            let message = buf.copy_to_bytes(buf.remaining());
            if crate::batch_operations(&message, limit) > limit {
                return Err(crate::batch_too_large(limit));
            }
            return crate::pb::PipelineRequest::decode(message)
                .map(Some)
                .map_err(|err| malformed(&err));
        }
        if crate::batch_operations(buf.chunk(), limit) > limit {
            return Err(crate::batch_too_large(limit));
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// A message that does not decode, for `why`: `INVALID_ARGUMENT`, the sender's fault.
fn malformed(why: &dyn std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed protobuf message: {why}"))
}

/// prost's decoder, answering a malformed message `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|status| malformed(&status.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
