//! Reads gRPC messages out of received HTTP/2 DATA frames without first copying them together.
//!
//! tonic's `Streaming` copies every received frame into one buffer and decodes from there, so a
//! session value is copied once by the kernel and once more by tonic. Here the frames are kept
//! as they came and a message is decoded straight from them: a `bytes` field that lies within
//! one frame (as a daemon sends any value of [`LARGE_VALUE`](crate::chunked::LARGE_VALUE) bytes
//! or more) becomes a slice of that frame, and only a field split across frames is copied.
//!
//! What it is worth, measured on 2026-12-06 (commit c8c89dd, 2 cores; the daemon under
//! `taskset -c 1`, the load generator under `taskset -c 0`): `gonest-session-bench throughput
//! --clients 50 --duration 8s`, this reader against one that first copies each message into one
//! buffer as tonic does, alternating, three runs each. At `--size 16384` the client spent 10.78,
//! 11.43 and 11.12 µs of CPU per operation here, 12.43, 10.76 and 12.23 µs copying (6 % more on
//! average, with the noise of one run in three reversed); at `--size 1024` there is no
//! difference (3.32, 3.72, 3.60 against 3.16, 3.80, 3.58 µs: such values are never frames of
//! their own). It pays for large values, where the client's CPU is what a caller waits on, so it
//! stays.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Writes the 5-byte prefix of a gRPC message of `len` bytes: not compressed, then its length.
pub fn put_prefix(buf: &mut impl BufMut, len: usize) {
    buf.put_u8(0);
    // Answers and requests are bounded far below this by the limits both sides check.
    buf.put_u32(u32::try_from(len).expect("a gRPC message is under 4 GiB"));
}

/// Why the frames do not hold a well-formed message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramedError {
    /// The message is compressed (flag 1), which the reader never asked for, or the flag is
    /// neither 0 nor 1.
    #[error("message with compression flag {0}; none was asked for")]
    Compressed(u8),
    /// The length prefix is over the reader's limit.
    #[error("message of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// The length the prefix gave.
        len: usize,
        /// The reader's limit.
        limit: usize,
    },
    /// The protobuf encoding does not decode.
    #[error("malformed protobuf message: {0}")]
    Malformed(String),
}

/// Received frames not yet decoded into messages.
#[derive(Debug)]
pub struct FramedReader {
    frames: VecDeque<Bytes>,
    /// Bytes in `frames`.
    buffered: usize,
    /// The largest message read.
    limit: usize,
}

impl FramedReader {
    /// A reader of messages of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            buffered: 0,
            limit,
        }
    }

    /// Adds a received frame.
    pub fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.buffered += frame.len();
            self.frames.push_back(frame);
        }
    }

    /// Bytes received and not yet decoded: part of a message, when the stream ends.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The next whole message, or `None` until more frames come. A message over the limit is
    /// an error as soon as its prefix is here, before its bytes are.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FramedError> {
        let Some(prefix) = self.prefix() else {
            return Ok(None);
        };
        let flag = prefix[0];
        if flag != 0 {
            return Err(FramedError::Compressed(flag));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(FramedError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if self.buffered < 5 + len {
            return Ok(None);
        }
        let front = self
            .frames
            .front_mut()
            .expect("the frames hold the message");
        if front.len() >= 5 + len {
            // All of it in one frame, as most answers are: decode from a slice of the frame.
            front.advance(5);
            let bytes = front.split_to(len);
            if front.is_empty() {
                self.frames.pop_front();
            }
            self.buffered -= 5 + len;
            return M::decode(bytes)
                .map(Some)
                .map_err(|err| FramedError::Malformed(err.to_string()));
        }
        let mut message = MessageBytes {
            frames: &mut self.frames,
            remaining: 5 + len,
        };
        message.advance(5);
        let decoded = M::decode(&mut message);
        // prost reads a message to its end, or stops at an error: skip what it left.
        let left = message.remaining;
        message.advance(left);
        self.buffered -= 5 + len;
        decoded
            .map(Some)
            .map_err(|err| FramedError::Malformed(err.to_string()))
    }

    /// The 5-byte prefix of the next message, when all of it is here.
    fn prefix(&self) -> Option<[u8; 5]> {
        if self.buffered < 5 {
            return None;
        }
        let mut prefix = [0u8; 5];
        let mut at = 0;
        for frame in &self.frames {
            let take = frame.len().min(5 - at);
            prefix[at..at + take].copy_from_slice(&frame[..take]);
            at += take;
            if at == 5 {
                break;
            }
        }
        Some(prefix)
    }
}

/// One message's bytes, at the front of the frames.
struct MessageBytes<'a> {
    frames: &'a mut VecDeque<Bytes>,
    remaining: usize,
}

impl Buf for MessageBytes<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        match self.frames.front() {
            Some(frame) => &frame[..frame.len().min(self.remaining)],
            None => &[],
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the message's end");
        self.remaining -= cnt;
        if let Some(frame) = self.frames.front_mut()
            && cnt < frame.len()
        {
            frame.advance(cnt);
            return;
        }
        while cnt > 0 {
            let frame = self
                .frames
                .front_mut()
                .expect("the frames hold the message");
            let step = frame.len().min(cnt);
            frame.advance(step);
            cnt -= step;
            if frame.is_empty() {
                self.frames.pop_front();
            }
        }
    }

    /// A slice of the frame when the bytes lie within one; a copy otherwise.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.remaining, "copy past the message's end");
        if let Some(frame) = self.frames.front_mut()
            && frame.len() >= len
        {
            let bytes = frame.split_to(len);
            if frame.is_empty() {
                self.frames.pop_front();
            }
            self.remaining -= len;
            return bytes;
        }
        let mut bytes = BytesMut::with_capacity(len);
        bytes.put((&mut *self).take(len));
        bytes.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::tests::framed;
    use crate::chunked::{Chunks, LARGE_VALUE};
    use crate::pb;

    fn get(tag: u64, values: &[(&str, Bytes)]) -> pb::PipelineResponse {
        pb::PipelineResponse {
            tag,
            result: Some(pb::pipeline_response::Result::Get(Box::new(
                pb::GetResponse {
                    session: Some(pb::Session {
                        id: format!("s{tag}"),
                        data: values
                            .iter()
                            .map(|(key, value)| ((*key).to_owned(), value.clone()))
                            .collect(),
                        version: tag,
                        ..Default::default()
                    }),
                },
            ))),
            batch: Vec::new(),
        }
    }

    fn read_all(reader: &mut FramedReader) -> Vec<pb::PipelineResponse> {
        std::iter::from_fn(|| reader.next_message().unwrap()).collect()
    }

    #[test]
    fn messages_split_anywhere_come_back_whole() {
        let answers = vec![
            get(1, &[("a", Bytes::from(vec![1u8; 3000]))]),
            pb::PipelineResponse::default(),
            get(2, &[("b", Bytes::from_static(b"x")), ("", Bytes::new())]),
        ];
        let bytes = framed(&answers);
        for size in [1, 2, 4, 5, 6, 7, 100, 1000, bytes.len()] {
            let mut reader = FramedReader::new(usize::MAX);
            let mut read = Vec::new();
            for piece in bytes.chunks(size) {
                reader.push(Bytes::copy_from_slice(piece));
                read.extend(read_all(&mut reader));
            }
            assert_eq!(read, answers, "frames of {size} bytes");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn a_value_within_one_frame_is_a_slice_of_it() {
        let large = Bytes::from(vec![7u8; LARGE_VALUE + 10]);
        let answer = get(
            1,
            &[("big", large.clone()), ("small", Bytes::from_static(b"s"))],
        );
        let mut chunks = Chunks::default();
        chunks.push_answer(&crate::chunked::Answer::from(answer.clone()));
        let frames: Vec<Bytes> = std::iter::from_fn(|| chunks.next_chunk()).collect();
        // As received: a copy of each frame the daemon sent.
        let received: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        let value_frame = received
            .iter()
            .find(|frame| frame.len() == large.len())
            .expect("the value is a frame of its own")
            .clone();

        let mut reader = FramedReader::new(usize::MAX);
        for frame in received {
            reader.push(frame);
        }
        let read: pb::PipelineResponse = reader.next_message().unwrap().unwrap();

        assert_eq!(read, answer);
        let Some(pb::pipeline_response::Result::Get(get)) = read.result else {
            panic!("a Get");
        };
        let value = &get.session.unwrap().data["big"];
        assert_eq!(value.as_ptr(), value_frame.as_ptr(), "not copied");
    }

    #[test]
    fn a_message_waits_for_its_last_byte() {
        let bytes = framed(&[get(1, &[("a", Bytes::from_static(b"abc"))])]);
        let mut reader = FramedReader::new(usize::MAX);
        reader.push(Bytes::copy_from_slice(&bytes[..bytes.len() - 1]));
        assert_eq!(reader.next_message::<pb::PipelineResponse>(), Ok(None));
        assert_eq!(reader.buffered(), bytes.len() - 1);
        reader.push(Bytes::copy_from_slice(&bytes[bytes.len() - 1..]));
        assert!(
            reader
                .next_message::<pb::PipelineResponse>()
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_prefix_over_the_limit_is_refused_before_its_bytes_come() {
        let mut reader = FramedReader::new(1 << 20);
        reader.push(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(
            reader.next_message::<pb::PipelineResponse>(),
            Err(FramedError::TooLarge {
                len: u32::MAX as usize,
                limit: 1 << 20
            })
        );
    }

    #[test]
    fn compressed_and_malformed_messages_are_errors() {
        let mut reader = FramedReader::new(usize::MAX);
        reader.push(Bytes::from_static(&[1, 0, 0, 0, 0]));
        assert_eq!(
            reader.next_message::<pb::PipelineResponse>(),
            Err(FramedError::Compressed(1))
        );

        let mut reader = FramedReader::new(usize::MAX);
        // Field 1 as a varint that never ends.
        reader.push(Bytes::from_static(&[0, 0, 0, 0, 3, 0x08, 0xff, 0xff]));
        assert!(matches!(
            reader.next_message::<pb::PipelineResponse>(),
            Err(FramedError::Malformed(_))
        ));
        assert_eq!(reader.buffered(), 0, "the malformed message is skipped");
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_split_reads_back_what_was_sent(
                sizes in proptest::collection::vec(0..3 * LARGE_VALUE, 1..5),
                cuts in proptest::collection::vec(1..20_000usize, 1..40),
            ) {
                let answers: Vec<pb::PipelineResponse> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &size)| get(i as u64 + 1, &[("v", Bytes::from(vec![i as u8; size]))]))
                    .collect();
                let bytes = framed(&answers);
                let mut reader = FramedReader::new(usize::MAX);
                let mut read = Vec::new();
                let mut at = 0;
                for cut in cuts.iter().cycle() {
                    if at == bytes.len() {
                        break;
                    }
                    let end = (at + cut).min(bytes.len());
                    reader.push(Bytes::copy_from_slice(&bytes[at..end]));
                    read.extend(read_all(&mut reader));
                    at = end;
                }
                prop_assert_eq!(read, answers);
                prop_assert_eq!(reader.buffered(), 0);
            }
        }
    }
}
