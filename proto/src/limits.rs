//! How large a message may be on the wire, given the largest session a daemon stores, and how
//! many operations one `Pipeline` message may carry.

use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// What a request may take beyond twice its session's keys and values: the id, the TTL, the
/// tags and lengths of the protobuf framing. The factor of two leaves room for the framing of
/// every map entry (a few bytes each) in any session with entries of ordinary size.
pub const FRAMING_ALLOWANCE: usize = 64 * 1024;

/// The largest request message a daemon storing sessions of at most `max_session_bytes` (keys
/// plus values) reads: `2 × max_session_bytes + 64 KiB`.
///
/// A request between the session limit and this is read and answered `RESOURCE_EXHAUSTED` like
/// any other refused operation (inline on a `Pipeline`, whose stream goes on); only a request
/// over this one is refused unread, which ends the stream it came on. Answers are not limited:
/// whatever a daemon stored, it can send back.
pub fn message_limit(max_session_bytes: usize) -> usize {
    max_session_bytes
        .saturating_mul(2)
        .saturating_add(FRAMING_ALLOWANCE)
}

/// The most operations one `PipelineRequest` may carry in its `batch`, nested batches (which are
/// refused) counted too. A message over it is refused before it is decoded, which ends its
/// stream `RESOURCE_EXHAUSTED` (ErrorInfo reason `BATCH_TOO_LARGE`, metadata `limit`).
///
/// Without a cap, the largest message (2 MiB) holds a million empty operations, two bytes each;
/// decoded and answered, each costs the daemon a few hundred bytes, so one message took half a
/// gigabyte. At this cap a message's operations cost well under a megabyte, whatever they hold.
pub const MAX_BATCH_OPERATIONS: usize = 1000;

/// Operations nested deeper than this are not counted: prost refuses such a message anyway
/// (its recursion limit is 100).
const MAX_NESTING: u32 = 100;

/// How many operations the encoded `PipelineRequest` `message` carries in its `batch`, nested
/// batches included, read off the wire without decoding anything; counting stops once it is
/// past `limit`. A malformed message is counted as far as it can be read: its decoding then
/// refuses it.
pub fn batch_operations(message: &[u8], limit: usize) -> usize {
    let mut count = 0;
    count_batch(message, limit, 0, &mut count);
    count
}

/// Adds to `count` the batch operations of `message`, nested ones included, at `depth`.
fn count_batch(mut message: &[u8], limit: usize, depth: u32, count: &mut usize) {
    /// `PipelineRequest.batch`.
    const BATCH: u32 = 6;
    while !message.is_empty() && *count <= limit {
        let Ok((tag, wire_type)) = decode_key(&mut message) else {
            return;
        };
        if tag != BATCH || wire_type != WireType::LengthDelimited {
            if skip_field(wire_type, tag, &mut message, DecodeContext::default()).is_err() {
                return;
            }
            continue;
        }
        let Some(len) = decode_varint(&mut message)
            .ok()
            .and_then(|len| usize::try_from(len).ok())
            .filter(|&len| len <= message.len())
        else {
            return;
        };
        let (operation, rest) = message.split_at(len);
        *count += 1;
        if depth < MAX_NESTING {
            count_batch(operation, limit, depth + 1, count);
        }
        message = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    fn operation(tag: u64, batch: Vec<pb::PipelineRequest>) -> pb::PipelineRequest {
        pb::PipelineRequest {
            tag,
            op: Some(pb::pipeline_request::Op::Get(pb::GetRequest {
                id: "x".into(),
            })),
            batch,
        }
    }

    #[test]
    fn counts_a_batchs_operations_nested_ones_too_without_decoding() {
        let single = operation(1, Vec::new()).encode_to_vec();
        assert_eq!(batch_operations(&single, 10), 0);
        let flat = operation(1, (0..7).map(|n| operation(n, Vec::new())).collect());
        assert_eq!(batch_operations(&flat.encode_to_vec(), 10), 7);
        let nested = operation(
            1,
            vec![
                operation(2, (0..3).map(|n| operation(n, Vec::new())).collect()),
                operation(3, Vec::new()),
            ],
        );
        assert_eq!(batch_operations(&nested.encode_to_vec(), 10), 5);
    }

    #[test]
    fn stops_counting_past_the_limit() {
        // A million empty operations, two bytes each: the attack the limit is for.
        let message: Vec<u8> = [0x32, 0x00].repeat(1_000_000);
        assert_eq!(batch_operations(&message, MAX_BATCH_OPERATIONS), 1001);
        assert_eq!(
            pb::PipelineRequest::decode(&message[..2000])
                .unwrap()
                .batch
                .len(),
            1000,
            "the same bytes prost decodes"
        );
    }

    #[test]
    fn a_malformed_message_is_counted_as_far_as_it_reads() {
        // Two operations, then a batch entry whose length runs past the end.
        let mut message = vec![0x32, 0x00, 0x32, 0x00, 0x32, 0x05, 0x08];
        assert_eq!(batch_operations(&message, 10), 2);
        message.truncate(5);
        assert_eq!(batch_operations(&message, 10), 2);
        // Deeper than prost decodes: counted down to the nesting limit, never past the stack.
        let mut deep = Vec::new();
        for _ in 0..1000 {
            let mut outer = vec![0x32];
            prost::encoding::encode_varint(deep.len() as u64, &mut outer);
            outer.extend_from_slice(&deep);
            deep = outer;
        }
        assert_eq!(batch_operations(&deep, usize::MAX), 101);
    }

    #[test]
    fn follows_the_session_limit_and_never_overflows() {
        assert_eq!(message_limit(1 << 20), (2 << 20) + 65536);
        assert_eq!(message_limit(16 << 20), (32 << 20) + 65536);
        assert_eq!(message_limit(usize::MAX), usize::MAX);
    }
}
