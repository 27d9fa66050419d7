//! How large a message may be on the wire, given the largest session a daemon stores.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_session_limit_and_never_overflows() {
        assert_eq!(message_limit(1 << 20), (2 << 20) + 65536);
        assert_eq!(message_limit(16 << 20), (32 << 20) + 65536);
        assert_eq!(message_limit(usize::MAX), usize::MAX);
    }
}
