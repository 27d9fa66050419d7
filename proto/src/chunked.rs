//! Encodes `Pipeline` answers as gRPC messages without copying large session values.
//!
//! tonic encodes each message into one contiguous buffer, so every value a Get answers is copied
//! into it before the socket copies it again. Here a message is written as prost writes it, byte
//! for byte, except that a value of at least [`LARGE_VALUE`] bytes in a Get's session is not
//! copied: the bytes before it become one chunk, the value (a slice of the stored session)
//! another, and writing continues in a fresh buffer. Sent as separate HTTP/2 DATA frames, such a
//! value goes from the table to the socket with the kernel's copy only.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::pb;

/// The smallest value sent as a chunk of its own. Each chunk is an HTTP/2 frame with a 9-byte
/// header and a frame for the receiver to read; below this the copy costs less than that.
pub const LARGE_VALUE: usize = 8 << 10;

/// gRPC messages being written, as chunks ready to send and the one still being written.
#[derive(Debug, Default)]
pub struct Chunks {
    ready: VecDeque<Bytes>,
    /// Bytes in `ready`.
    ready_len: usize,
    open: BytesMut,
}

impl Chunks {
    /// Appends `message` as one gRPC message: the 5-byte prefix (not compressed, its length),
    /// then its protobuf encoding.
    pub fn push(&mut self, message: &pb::PipelineResponse) {
        let len = message.encoded_len();
        self.open.reserve(5 + len.min(LARGE_VALUE));
        self.open.put_u8(0);
        self.open
            .put_u32(u32::try_from(len).expect("an answer is under 4 GiB"));
        self.response(message);
    }

    /// Bytes written and not yet taken.
    pub fn len(&self) -> usize {
        self.ready_len + self.open.len()
    }

    /// Whether nothing is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next chunk to send, ending the one being written if no other is ready.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ready.is_empty() {
            self.close();
        }
        let chunk = self.ready.pop_front()?;
        self.ready_len -= chunk.len();
        Some(chunk)
    }

    /// Ends the chunk being written.
    fn close(&mut self) {
        if !self.open.is_empty() {
            let chunk = self.open.split().freeze();
            self.ready_len += chunk.len();
            self.ready.push_back(chunk);
        }
    }

    fn response(&mut self, message: &pb::PipelineResponse) {
        if message.tag != 0 {
            prost::encoding::uint64::encode(1, &message.tag, &mut self.open);
        }
        match &message.result {
            Some(pb::pipeline_response::Result::Get(get)) => {
                nested(2, get.encoded_len(), &mut self.open);
                if let Some(session) = &get.session {
                    nested(1, session.encoded_len(), &mut self.open);
                    self.session(session);
                }
            }
            Some(other) => other.encode(&mut self.open),
            None => {}
        }
        for part in &message.batch {
            nested(7, part.encoded_len(), &mut self.open);
            self.response(part);
        }
    }

    /// Writes a session as prost does (fields in order, defaults left out, a map entry's default
    /// key or value left out), its large values as chunks of their own.
    fn session(&mut self, session: &pb::Session) {
        use prost::encoding::{bytes, message, string, uint64};
        if !session.id.is_empty() {
            string::encode(1, &session.id, &mut self.open);
        }
        for (key, value) in &session.data {
            let key_len = match key.is_empty() {
                true => 0,
                false => string::encoded_len(1, key),
            };
            let value_len = match value.is_empty() {
                true => 0,
                false => bytes::encoded_len(2, value),
            };
            nested(2, key_len + value_len, &mut self.open);
            if !key.is_empty() {
                string::encode(1, key, &mut self.open);
            }
            if value.len() >= LARGE_VALUE {
                nested(2, value.len(), &mut self.open);
                self.close();
                self.ready_len += value.len();
                self.ready.push_back(value.clone());
            } else if !value.is_empty() {
                bytes::encode(2, value, &mut self.open);
            }
        }
        if let Some(created_at) = &session.created_at {
            message::encode(3, created_at, &mut self.open);
        }
        if let Some(expires_at) = &session.expires_at {
            message::encode(4, expires_at, &mut self.open);
        }
        if session.version != 0 {
            uint64::encode(5, &session.version, &mut self.open);
        }
        if !session.owner.is_empty() {
            string::encode(6, &session.owner, &mut self.open);
        }
    }
}

/// The key and length of a nested message, a map entry or a `bytes` field.
fn nested(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn session(values: &[(&str, Bytes)]) -> pb::Session {
        pb::Session {
            id: "s1".into(),
            data: values
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_003_600,
                nanos: 0,
            }),
            version: 3,
            owner: "user 42".into(),
        }
    }

    fn get(tag: u64, session: Option<pb::Session>) -> pb::PipelineResponse {
        pb::PipelineResponse {
            tag,
            result: Some(pb::pipeline_response::Result::Get(pb::GetResponse {
                session,
            })),
            batch: Vec::new(),
        }
    }

    fn chunks_of(messages: &[pb::PipelineResponse]) -> Vec<Bytes> {
        let mut chunks = Chunks::default();
        for message in messages {
            chunks.push(message);
        }
        let len = chunks.len();
        let taken: Vec<Bytes> = std::iter::from_fn(|| chunks.next_chunk()).collect();
        assert_eq!(taken.iter().map(Bytes::len).sum::<usize>(), len);
        assert!(chunks.is_empty());
        taken
    }

    /// What tonic sends: each message's prefix and prost's encoding.
    pub(crate) fn framed(messages: &[pb::PipelineResponse]) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            out.push(0);
            out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
            message.encode(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn the_chunks_are_prosts_encoding_and_large_values_are_not_copied() {
        let large = Bytes::from(vec![7u8; LARGE_VALUE]);
        let small = Bytes::from_static(b"small");
        let answers = vec![
            get(
                1,
                Some(session(&[("a", large.clone()), ("b", small.clone())])),
            ),
            get(0, None),
            get(2, Some(session(&[("", Bytes::new()), ("x", Bytes::new())]))),
            pb::PipelineResponse {
                tag: 3,
                result: Some(pb::pipeline_response::Result::Save(pb::SaveResponse {
                    version: 9,
                    ..Default::default()
                })),
                batch: vec![
                    get(4, Some(session(&[("big", large.clone())]))),
                    pb::PipelineResponse {
                        tag: 5,
                        result: Some(pb::pipeline_response::Result::Error(pb::Error {
                            code: 3,
                            message: "bad id".into(),
                            details: Bytes::new(),
                        })),
                        batch: Vec::new(),
                    },
                    get(
                        6,
                        Some(session(&[("k", Bytes::from(vec![1u8; LARGE_VALUE - 1]))])),
                    ),
                ],
            },
            pb::PipelineResponse::default(),
        ];

        let chunks = chunks_of(&answers);

        assert_eq!(chunks.concat(), framed(&answers));
        let shared: Vec<&Bytes> = chunks
            .iter()
            .filter(|chunk| chunk.as_ptr() == large.as_ptr())
            .collect();
        assert_eq!(shared.len(), 2, "both large values are the caller's bytes");
        assert!(shared.iter().all(|chunk| chunk.len() == LARGE_VALUE));
        assert_eq!(chunks.len(), 5, "two values and the three runs around them");
    }

    #[test]
    fn answers_without_large_values_are_one_chunk() {
        let answers: Vec<_> = (1..=50)
            .map(|tag| get(tag, Some(session(&[("k", Bytes::from(vec![1u8; 1024]))]))))
            .collect();
        let chunks = chunks_of(&answers);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks.concat(), framed(&answers));
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Bytes> {
            prop_oneof![
                Just(Bytes::new()),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
                (LARGE_VALUE - 2..LARGE_VALUE + 2, any::<u8>())
                    .prop_map(|(len, byte)| Bytes::from(vec![byte; len])),
                (2 * LARGE_VALUE..3 * LARGE_VALUE, any::<u8>())
                    .prop_map(|(len, byte)| Bytes::from(vec![byte; len])),
            ]
        }

        /// 0 (left out of the encoding), 1 or 2, or anything.
        fn small_or_any() -> impl Strategy<Value = u64> {
            prop_oneof![0..3u64, any::<u64>()]
        }

        fn answer() -> impl Strategy<Value = pb::PipelineResponse> {
            let data = proptest::collection::hash_map("[a-z]{0,3}", value(), 0..4);
            let session = (any::<bool>(), data, small_or_any(), "[a-z]{0,2}").prop_map(
                |(found, data, version, owner)| {
                    found.then(|| pb::Session {
                        id: "s".into(),
                        data,
                        created_at: None,
                        expires_at: Some(prost_types::Timestamp {
                            seconds: 9,
                            nanos: 1,
                        }),
                        version,
                        owner,
                    })
                },
            );
            (small_or_any(), session).prop_map(|(tag, session)| get(tag, session))
        }

        proptest! {
            #[test]
            fn chunks_are_prosts_encoding(
                answers in proptest::collection::vec(
                    (answer(), proptest::collection::vec(answer(), 0..4)),
                    1..4,
                )
            ) {
                let answers: Vec<pb::PipelineResponse> = answers
                    .into_iter()
                    .map(|(mut answer, batch)| {
                        answer.batch = batch;
                        answer
                    })
                    .collect();
                prop_assert_eq!(chunks_of(&answers).concat(), framed(&answers));
            }
        }
    }
}
