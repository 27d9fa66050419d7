//! Encodes `Pipeline` answers as gRPC messages without copying large session values (64 KiB and
//! up).
//!
//! tonic encodes each message into one contiguous buffer, so every value a Get answers is copied
//! into it before the socket copies it again. Here a message is written as prost writes it, byte
//! for byte, except that a value of at least [`LARGE_VALUE`] bytes in a Get's session is not
//! copied: the bytes before it become one chunk, the value (a slice of the stored session)
//! another, and writing continues in a fresh buffer. Sent as separate HTTP/2 DATA frames, such a
//! value goes from the table to the socket with the kernel's copy only.
//!
//! What it is worth, measured on 2026-12-06 (commit c8c89dd, 2 cores; daemons under
//! `taskset -c 1`, the load generator under `taskset -c 0`): the same daemon with `Pipeline`
//! answered by tonic's generated server instead (answers turned into prost messages and encoded
//! by tonic), against this writer, `gonest-session-bench compare --pairs 8 --clients 50
//! --duration 8s`, three runs each. tonic's path costs the daemon 1.094, 1.099 and 1.038 times
//! the CPU per operation at `--size 16384` (ops/s 0.942, 0.947, 0.995), and 1.104, 1.055 and
//! 1.181 times at `--size 1024` (ops/s 0.926, 1.005, 0.902). It pays at both sizes, so it stays.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use gonest_session_core::StoredSession;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::{pb, record_to_pb};

/// A `Pipeline` answer as the daemon holds it until it is written: the fields of a
/// [`pb::PipelineResponse`], except that a Get may be answered straight from a stored session,
/// without building the map and strings of a [`pb::Session`].
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The operation's tag, as `PipelineResponse.tag`.
    pub tag: u64,
    /// As `PipelineResponse.result`.
    pub result: Option<Outcome>,
    /// As `PipelineResponse.batch`.
    pub batch: Vec<Answer>,
}

/// The result of one answer.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A result as prost's message holds it.
    Message(pb::pipeline_response::Result),
    /// A Get that found a session, written from the store's own form of it.
    Stored(StoredGet),
}

/// A Get's session as the store holds it, ready to be written as a `GetResponse`.
#[derive(Debug, Clone)]
pub struct StoredGet {
    session: StoredSession,
    created_at: prost_types::Timestamp,
    expires_at: prost_types::Timestamp,
    /// The length of the session's encoding (a `Session` message).
    len: usize,
    /// Bytes of its values sent as chunks of their own, not copied (see [`LARGE_VALUE`]).
    shared: usize,
}

impl StoredGet {
    /// A Get answer with `session`.
    pub fn new(session: StoredSession) -> Self {
        let created_at = prost_types::Timestamp::from(session.created_at());
        let expires_at = prost_types::Timestamp::from(session.expires_at());
        let mut len = str_len(1, session.id()) + str_len(6, session.owner());
        let mut shared = 0;
        for (key, value) in session.entries() {
            len += embedded_len(2, entry_len(key, value));
            if value.len() >= LARGE_VALUE {
                shared += value.len();
            }
        }
        len += prost::encoding::message::encoded_len(3, &created_at)
            + prost::encoding::message::encoded_len(4, &expires_at);
        if session.version() != 0 {
            len += prost::encoding::uint64::encoded_len(5, &session.version());
        }
        Self {
            session,
            created_at,
            expires_at,
            len,
            shared,
        }
    }

    /// The length of the `GetResponse` holding the session.
    fn response_len(&self) -> usize {
        embedded_len(1, self.len)
    }
}

/// The length of a length-delimited field `tag` whose content is `len` bytes.
fn embedded_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The length of a `string` field, left out when empty.
fn str_len(tag: u32, value: &str) -> usize {
    match value.is_empty() {
        true => 0,
        false => embedded_len(tag, value.len()),
    }
}

/// The length of a `map<string, bytes>` entry, its empty key or value left out.
fn entry_len(key: &str, value: &[u8]) -> usize {
    str_len(1, key)
        + match value.is_empty() {
            true => 0,
            false => embedded_len(2, value.len()),
        }
}

impl Answer {
    /// The length of its protobuf encoding, which is that of [`into_pb`](Self::into_pb)'s
    /// message.
    pub fn encoded_len(&self) -> usize {
        let tag = match self.tag {
            0 => 0,
            tag => prost::encoding::uint64::encoded_len(1, &tag),
        };
        let result = match &self.result {
            None => 0,
            Some(Outcome::Message(result)) => result.encoded_len(),
            Some(Outcome::Stored(get)) => embedded_len(2, get.response_len()),
        };
        let batch: usize = self
            .batch
            .iter()
            .map(|part| embedded_len(7, part.encoded_len()))
            .sum();
        tag + result + batch
    }

    /// Bytes of it as one gRPC message: its 5-byte prefix and its encoding.
    pub fn framed_len(&self) -> usize {
        5 + self.encoded_len()
    }

    /// Bytes [`Chunks`] copies to write it as one gRPC message: its 5-byte prefix and its
    /// encoding, less the session values sent as chunks of their own (those of at least
    /// [`LARGE_VALUE`] bytes in a Get's session).
    pub fn copied_len(&self) -> usize {
        self.framed_len() - self.shared_len()
    }

    /// Bytes of the session values sent as slices of their own, not copied.
    fn shared_len(&self) -> usize {
        let result = match &self.result {
            Some(Outcome::Stored(get)) => get.shared,
            Some(Outcome::Message(pb::pipeline_response::Result::Get(get))) => get
                .session
                .iter()
                .flat_map(|session| session.data.values())
                .map(Bytes::len)
                .filter(|&len| len >= LARGE_VALUE)
                .sum(),
            _ => 0,
        };
        result + self.batch.iter().map(Self::shared_len).sum::<usize>()
    }

    /// The answer as prost's message. A stored session that no longer converts (it cannot: it
    /// was checked when read) becomes an `INTERNAL` error.
    pub fn into_pb(self) -> pb::PipelineResponse {
        let result = self.result.map(|result| match result {
            Outcome::Message(result) => result,
            Outcome::Stored(get) => match get.session.to_record() {
                Ok(record) => pb::pipeline_response::Result::Get(Box::new(pb::GetResponse {
                    session: Some(record_to_pb(record)),
                })),
                Err(err) => pb::pipeline_response::Result::Error(crate::error_to_pb(
                    &crate::status_from_error(&err),
                )),
            },
        });
        pb::PipelineResponse {
            tag: self.tag,
            result,
            batch: self.batch.into_iter().map(Self::into_pb).collect(),
        }
    }
}

impl From<pb::PipelineResponse> for Answer {
    fn from(response: pb::PipelineResponse) -> Self {
        Self {
            tag: response.tag,
            result: response.result.map(Outcome::Message),
            batch: response.batch.into_iter().map(Self::from).collect(),
        }
    }
}

/// The smallest value sent as a chunk of its own. h2 writes each DATA frame of 256 bytes or
/// more with a system call of its own (it chains the frame to its buffer rather than copying
/// it, then flushes), so a value sent as its own chunk costs a `writev`; copied, it shares one
/// frame, and one write, with the answers ready with it, as long as the peer accepts frames
/// that large (`gonest-session-client` asks for [`crate::MAX_FRAME_SIZE`]). At 16 KiB, 50
/// callers, that was 1.43 times the operations at 0.70 of the daemon's CPU per operation
/// against sending 8 KiB values and up as chunks (measured on 2026-12-07; bench/README.md).
pub const LARGE_VALUE: usize = 64 << 10;

/// gRPC messages being written, as chunks ready to send and the one still being written.
#[derive(Debug, Default)]
pub struct Chunks {
    ready: VecDeque<Bytes>,
    /// Bytes in `ready`.
    ready_len: usize,
    open: BytesMut,
    /// Where in `ready` the last chunk cut from `open` is.
    last_copied: Option<usize>,
}

impl Chunks {
    /// Appends `answer` as one gRPC message: the 5-byte prefix (not compressed, its length),
    /// then the protobuf encoding of [`Answer::into_pb`]'s message as prost writes it (a stored
    /// session's entries in the order it holds them).
    pub fn push_answer(&mut self, answer: &Answer) {
        self.push_answers(std::slice::from_ref(answer));
    }

    /// Appends each of `answers` as [`push_answer`](Self::push_answer) does, into one buffer
    /// allocated for exactly the bytes they copy ([`Answer::copied_len`]), which ends a chunk:
    /// the memory the chunks hold is what they send, not a buffer grown by doubling.
    pub fn push_answers(&mut self, answers: &[Answer]) {
        self.push_answers_sealed(answers, |chunk, _| chunk);
    }

    /// As [`push_answers`](Self::push_answers), with the last chunk cut from the buffer passed
    /// through `seal`, with the buffer's size (`seal` must give back the same bytes). The buffer
    /// is freed once that chunk is: chunks are sent, and dropped, in order. `seal` can attach
    /// what must last as long as the buffer (see `Bytes::from_owner`).
    pub fn push_answers_sealed(
        &mut self,
        answers: &[Answer],
        seal: impl FnOnce(Bytes, usize) -> Bytes,
    ) {
        self.close();
        let copied = answers.iter().map(Answer::copied_len).sum();
        self.open = BytesMut::with_capacity(copied);
        self.last_copied = None;
        for answer in answers {
            crate::framed::put_prefix(&mut self.open, answer.encoded_len());
            self.answer(answer);
        }
        debug_assert_eq!(
            self.open.len(),
            self.open.capacity(),
            "copied_len was not what was written"
        );
        self.close();
        if let Some(at) = self.last_copied.take()
            && let Some(chunk) = self.ready.get_mut(at)
        {
            let len = chunk.len();
            *chunk = seal(std::mem::take(chunk), copied);
            debug_assert_eq!(chunk.len(), len, "seal changed the chunk");
        }
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
            self.last_copied = Some(self.ready.len());
            self.ready.push_back(chunk);
        }
    }

    fn answer(&mut self, answer: &Answer) {
        if answer.tag != 0 {
            prost::encoding::uint64::encode(1, &answer.tag, &mut self.open);
        }
        match &answer.result {
            Some(Outcome::Message(result)) => self.result(result),
            Some(Outcome::Stored(get)) => {
                nested(2, get.response_len(), &mut self.open);
                nested(1, get.len, &mut self.open);
                self.stored(get);
            }
            None => {}
        }
        for part in &answer.batch {
            nested(7, part.encoded_len(), &mut self.open);
            self.answer(part);
        }
    }

    fn result(&mut self, result: &pb::pipeline_response::Result) {
        match result {
            pb::pipeline_response::Result::Get(get) => {
                nested(2, get.encoded_len(), &mut self.open);
                if let Some(session) = &get.session {
                    nested(1, session.encoded_len(), &mut self.open);
                    self.session(session);
                }
            }
            other => other.encode(&mut self.open),
        }
    }

    /// Writes a stored session as [`session`](Self::session) writes its `pb::Session`.
    fn stored(&mut self, get: &StoredGet) {
        use prost::encoding::{message, uint64};
        let session = &get.session;
        self.str_field(1, session.id());
        for (key, value) in session.entries() {
            self.entry(key, value, || session.shared_value(value));
        }
        message::encode(3, &get.created_at, &mut self.open);
        message::encode(4, &get.expires_at, &mut self.open);
        if session.version() != 0 {
            uint64::encode(5, &session.version(), &mut self.open);
        }
        self.str_field(6, session.owner());
    }

    /// Writes a session as prost does (fields in order, defaults left out, a map entry's default
    /// key or value left out), its large values as chunks of their own.
    fn session(&mut self, session: &pb::Session) {
        use prost::encoding::{message, uint64};
        self.str_field(1, &session.id);
        for (key, value) in &session.data {
            self.entry(key, value, || value.clone());
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
        self.str_field(6, &session.owner);
    }

    /// One `data` map entry (field 2), its empty key or value left out; a value of
    /// [`LARGE_VALUE`] bytes or more is not copied but sent as `shared`, a chunk of its own.
    fn entry(&mut self, key: &str, value: &[u8], shared: impl FnOnce() -> Bytes) {
        nested(2, entry_len(key, value), &mut self.open);
        self.str_field(1, key);
        if value.len() >= LARGE_VALUE {
            nested(2, value.len(), &mut self.open);
            self.close();
            self.ready_len += value.len();
            self.ready.push_back(shared());
        } else if !value.is_empty() {
            nested(2, value.len(), &mut self.open);
            self.open.put_slice(value);
        }
    }

    /// A `string` field, left out when empty.
    fn str_field(&mut self, tag: u32, value: &str) {
        if !value.is_empty() {
            nested(tag, value.len(), &mut self.open);
            self.open.put_slice(value.as_bytes());
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
            result: Some(pb::pipeline_response::Result::Get(Box::new(
                pb::GetResponse { session },
            ))),
            batch: Vec::new(),
        }
    }

    fn chunks_of(messages: &[pb::PipelineResponse]) -> Vec<Bytes> {
        let answers: Vec<Answer> = messages.iter().cloned().map(Answer::from).collect();
        let mut chunks = Chunks::default();
        chunks.push_answers(&answers);
        let len = chunks.len();
        let taken: Vec<Bytes> = std::iter::from_fn(|| chunks.next_chunk()).collect();
        assert_eq!(taken.iter().map(Bytes::len).sum::<usize>(), len);
        assert!(chunks.is_empty());
        let large: Vec<*const u8> = messages.iter().flat_map(large_values).collect();
        assert_copied_as_counted(&answers, &taken, &large);
        taken
    }

    /// Where the values of `message` (and its batch) that are sent as chunks of their own are.
    fn large_values(message: &pb::PipelineResponse) -> Vec<*const u8> {
        let mut found = match &message.result {
            Some(pb::pipeline_response::Result::Get(get)) => get
                .session
                .iter()
                .flat_map(|session| session.data.values())
                .filter(|value| value.len() >= LARGE_VALUE)
                .map(|value| value.as_ptr())
                .collect(),
            _ => Vec::new(),
        };
        found.extend(message.batch.iter().flat_map(large_values));
        found
    }

    /// The chunks that are not the large values (at `large`) are the bytes
    /// [`Answer::copied_len`] counts, which [`Chunks::push_answers`] allocates.
    fn assert_copied_as_counted(answers: &[Answer], chunks: &[Bytes], large: &[*const u8]) {
        let copied: usize = chunks
            .iter()
            .filter(|chunk| !large.contains(&chunk.as_ptr()))
            .map(Bytes::len)
            .sum();
        assert_eq!(
            copied,
            answers.iter().map(Answer::copied_len).sum::<usize>()
        );
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

    /// `data` saved under `id` (by `owner`) in a store of its own, read back as stored.
    fn stored(id: &str, owner: &str, data: &[(&str, Bytes)]) -> StoredSession {
        let store =
            gonest_session_core::MemorySessionStore::new(std::time::Duration::from_secs(60));
        let data = data
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect();
        let mut save = gonest_session_core::Save::new(id, data);
        if !owner.is_empty() {
            save = save.owner(owner);
        }
        store.save_now(save).unwrap();
        store.get_stored_now(id).unwrap().unwrap()
    }

    fn stored_get(tag: u64, session: StoredSession) -> Answer {
        Answer {
            tag,
            result: Some(Outcome::Stored(StoredGet::new(session))),
            batch: Vec::new(),
        }
    }

    /// What [`Chunks::push_answer`] writes for `answers`, and each answer as prost's message.
    fn written(answers: &[Answer]) -> (Vec<Bytes>, Vec<pb::PipelineResponse>) {
        let mut chunks = Chunks::default();
        chunks.push_answers(answers);
        let taken: Vec<Bytes> = std::iter::from_fn(|| chunks.next_chunk()).collect();
        let large: Vec<*const u8> = answers.iter().flat_map(stored_large_values).collect();
        assert_copied_as_counted(answers, &taken, &large);
        let messages = answers.iter().cloned().map(Answer::into_pb).collect();
        (taken, messages)
    }

    /// [`large_values`] of an answer of stored sessions.
    fn stored_large_values(answer: &Answer) -> Vec<*const u8> {
        let mut found = match &answer.result {
            Some(Outcome::Stored(get)) => get
                .session
                .entries()
                .filter(|(_, value)| value.len() >= LARGE_VALUE)
                .map(|(_, value)| value.as_ptr())
                .collect(),
            _ => Vec::new(),
        };
        found.extend(answer.batch.iter().flat_map(stored_large_values));
        found
    }

    /// The gRPC messages in `bytes`, decoded.
    fn decoded(mut bytes: &[u8]) -> Vec<pb::PipelineResponse> {
        let mut messages = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0, "not compressed");
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            messages.push(pb::PipelineResponse::decode(&bytes[5..5 + len]).unwrap());
            bytes = &bytes[5 + len..];
        }
        messages
    }

    #[test]
    fn a_stored_get_is_written_as_its_message_and_large_values_are_the_stores() {
        let large = Bytes::from(vec![7u8; LARGE_VALUE]);
        let small = stored("s1", "user 42", &[("k", Bytes::from(vec![1u8; 1024]))]);
        let big = stored(
            "s2",
            "",
            &[
                ("big", large.clone()),
                ("", Bytes::new()),
                ("e", Bytes::new()),
            ],
        );
        let answers = vec![
            stored_get(1, small.clone()),
            Answer {
                tag: 2,
                result: None,
                batch: vec![
                    stored_get(3, big.clone()),
                    Answer::from(get(4, None)),
                    stored_get(0, small.clone()),
                ],
            },
        ];
        let (chunks, messages) = written(&answers);

        // One session of one value: byte for byte what prost's message is written as.
        let mut alone = Chunks::default();
        alone.push_answer(&answers[0]);
        assert_eq!(alone.next_chunk().unwrap(), framed(&messages[..1]));
        // Sessions of several values: the same message, whatever the order of its entries.
        assert_eq!(decoded(&chunks.concat()), messages);
        for (answer, message) in answers.iter().zip(&messages) {
            assert_eq!(answer.encoded_len(), message.encoded_len());
        }
        let session = match &messages[1].batch[0].result {
            Some(pb::pipeline_response::Result::Get(get)) => get.session.clone().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(session.data["big"], large);
        assert_eq!(session.version, 1);
        // The large value is sent as the store holds it, not copied.
        let (_, value) = big.entries().find(|(key, _)| *key == "big").unwrap();
        let shared = chunks
            .iter()
            .filter(|chunk| chunk.as_ptr() == value.as_ptr());
        assert_eq!(shared.count(), 1);
        assert_eq!(chunks.len(), 3, "the value and the runs around it");
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

            #[test]
            fn stored_gets_are_written_as_their_messages(
                sessions in proptest::collection::vec(
                    (
                        proptest::collection::hash_map("[a-z]{0,3}", value(), 0..4),
                        "[a-z]{0,2}",
                        small_or_any(),
                        proptest::collection::vec(small_or_any(), 0..4),
                    ),
                    1..4,
                )
            ) {
                let answers: Vec<Answer> = sessions
                    .into_iter()
                    .map(|(data, owner, tag, batch)| {
                        let data: Vec<(&str, Bytes)> =
                            data.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                        let session = stored("s", &owner, &data);
                        let mut answer = stored_get(tag, session.clone());
                        answer.batch = batch
                            .into_iter()
                            .map(|tag| stored_get(tag, session.clone()))
                            .collect();
                        answer
                    })
                    .collect();
                let (chunks, messages) = written(&answers);
                prop_assert_eq!(decoded(&chunks.concat()), messages.clone());
                for (answer, message) in answers.iter().zip(&messages) {
                    prop_assert_eq!(answer.encoded_len(), message.encoded_len());
                }
            }
        }
    }
}
