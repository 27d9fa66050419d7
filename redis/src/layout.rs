//! How a session is kept in its Redis value: the one place that knows the layout. The Rust
//! side reads and writes it with the functions below, the Lua scripts with the functions of
//! [`lua_functions`], made from the same constants.
//!
//! | bytes                | field                                               |
//! |----------------------|-----------------------------------------------------|
//! | `VERSION` (8)        | version, little-endian u64                          |
//! | `CREATED` (8)        | `created_at`, ms since 1970, little-endian u64      |
//! | `EXPIRES` (6)        | `expires_at`, ms since 1970, little-endian 48 bits  |
//! | `OWNER_LEN` (2)      | the owner's length, little-endian u16               |
//! | `HEADER..`           | the owner, then the data in the core codec's form   |
//!
//! Values written before owners existed have a 64-bit `expires_at` whose top 16 bits are zero,
//! so they read as sessions without an owner.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gonest_session_core::codec::{decode_shared, encode_data};
use gonest_session_core::{Bytes, Result, SessionData, SessionRecord, StoreError};

/// Where the version starts.
const VERSION: usize = 0;
/// Where `created_at` starts.
const CREATED: usize = 8;
/// Where `expires_at` starts, and its length.
const EXPIRES: usize = 16;
const EXPIRES_LEN: usize = 6;
/// Where the owner's length starts.
const OWNER_LEN: usize = 22;
/// Bytes before the owner.
pub(crate) const HEADER: usize = 24;

/// The latest `expires_at` the layout holds (exclusive), in ms.
pub(crate) const EXPIRES_LIMIT: u64 = 1 << (8 * EXPIRES_LEN);

/// A session's value: its header, `owner` (empty: none), then `data`.
pub(crate) fn encode(
    version: u64,
    created_ms: u64,
    expires_ms: u64,
    owner: &str,
    data: &SessionData,
) -> Vec<u8> {
    let owner_len = u16::try_from(owner.len()).unwrap_or(0);
    let data = encode_data(data);
    let mut value = Vec::with_capacity(HEADER + owner.len() + data.len());
    value.extend_from_slice(&version.to_le_bytes());
    value.extend_from_slice(&created_ms.to_le_bytes());
    value.extend_from_slice(&expires_ms.to_le_bytes()[..EXPIRES_LEN]);
    value.extend_from_slice(&owner_len.to_le_bytes());
    value.extend_from_slice(owner.as_bytes());
    value.extend_from_slice(&data);
    value
}

/// The session `id` from the start of its stored value (at least its header and owner),
/// without data. `None` if the bytes are no session's (too short, or an owner that is not
/// UTF-8).
pub(crate) fn head_record(id: &str, head: &[u8]) -> Option<SessionRecord> {
    let owner_len = usize::from(u16::from_le_bytes(
        head.get(OWNER_LEN..OWNER_LEN + 2)?.try_into().ok()?,
    ));
    let owner = std::str::from_utf8(head.get(HEADER..HEADER + owner_len)?).ok()?;
    Some(SessionRecord {
        id: id.to_owned(),
        version: u64_at(head, VERSION),
        created_at: time(u64_at(head, CREATED)),
        expires_at: time(u64_at(head, EXPIRES) & (EXPIRES_LIMIT - 1)),
        owner: (!owner.is_empty()).then(|| owner.to_owned()),
        data: SessionData::new(),
    })
}

/// A stored value as a record, its values slices of `value` (no copy).
pub(crate) fn record(id: &str, value: Vec<u8>) -> Result<SessionRecord> {
    let mut record = head_record(id, &value).ok_or_else(|| {
        StoreError::Internal("a value under the session prefix is not a session".into())
    })?;
    let data_start = HEADER + record.owner.as_ref().map_or(0, String::len);
    record.data = decode_shared(&Bytes::from(value), data_start)?;
    Ok(record)
}

/// The time `millis` ms after 1970.
pub(crate) fn time(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// The 8 bytes at `at`; called only within a header already checked to be whole.
fn u64_at(value: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&value[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// The Lua functions the scripts read and write values with, made from the constants above
/// (Lua counts from 1):
/// - `read_head(value)`: version, `created_at`;
/// - `owner_of(value)`: the owner, or `nil` if the value is too short to be a session;
/// - `pack(version, created, expires, owner, data)`: a whole value;
/// - `set_expires(key, expires)`: rewrites the stored `expires_at` in place.
pub(crate) fn lua_functions() -> String {
    format!(
        r"
local function read_head(value)
  return struct.unpack('<I8', value, {version}), struct.unpack('<I8', value, {created})
end
local function owner_of(value)
  if #value < {header} then
    return nil
  end
  local length = struct.unpack('<I2', value, {owner_len})
  if #value < {header} + length then
    return nil
  end
  return string.sub(value, {header} + 1, {header} + length)
end
local function pack(version, created, expires, owner, data)
  return struct.pack('<I8', version) .. struct.pack('<I8', created)
    .. string.sub(struct.pack('<I8', expires), 1, {expires_len})
    .. struct.pack('<I2', #owner) .. owner .. data
end
local function set_expires(key, expires)
  redis.call('SETRANGE', key, {expires}, string.sub(struct.pack('<I8', expires), 1, {expires_len}))
end
",
        version = VERSION + 1,
        created = CREATED + 1,
        owner_len = OWNER_LEN + 1,
        header = HEADER,
        expires = EXPIRES,
        expires_len = EXPIRES_LEN,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back_as_it_was_written() {
        let data: SessionData = [("k".to_owned(), b"v".to_vec().into())].into();
        let value = encode(7, 1_000, 2_000, "alice", &data);
        let record = record("s", value).unwrap();
        assert_eq!(record.version, 7);
        assert_eq!(record.created_at, time(1_000));
        assert_eq!(record.expires_at, time(2_000));
        assert_eq!(record.owner.as_deref(), Some("alice"));
        assert_eq!(record.data, data);
    }

    #[test]
    fn values_too_short_or_with_a_bad_owner_are_no_sessions() {
        let value = encode(1, 1, 2, "bob", &SessionData::new());
        assert!(head_record("s", &value[..HEADER - 1]).is_none());
        assert!(
            head_record("s", &value[..HEADER + 2]).is_none(),
            "owner cut short"
        );
        let mut bad = value.clone();
        bad[HEADER] = 0xff;
        assert!(head_record("s", &bad).is_none(), "owner not UTF-8");
    }
}
