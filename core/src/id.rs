use crate::{Result, StoreError};

/// The longest session id a store accepts, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Checks that `id` is a valid session id: 1 to [`MAX_ID_LEN`] bytes, each printable ASCII
/// (0x21 to 0x7E, so no spaces or control characters).
///
/// The error message never repeats the id: ids are secrets.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(StoreError::invalid("session id is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(StoreError::invalid(format!(
            "session id is {} bytes, over the limit of {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(pos) = id.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(StoreError::invalid(format!(
            "session id has a byte outside printable ASCII at position {pos}"
        )));
    }
    Ok(())
}

/// The longest owner a store accepts, in bytes.
pub const MAX_OWNER_LEN: usize = 256;

/// Checks that `owner` is a valid session owner: 1 to [`MAX_OWNER_LEN`] bytes of printable
/// ASCII (0x20 to 0x7E: spaces allowed inside, control characters not), neither beginning nor
/// ending with a space, so that no owner looks blank or like another. On the wire an empty owner
/// means none; in Rust that is `None`.
pub fn validate_owner(owner: &str) -> Result<()> {
    validate_stored_owner(owner)?;
    if owner.starts_with(' ') || owner.ends_with(' ') {
        return Err(StoreError::invalid(
            "owner begins or ends with a space (an owner is a user id, such as \"42\")",
        ));
    }
    Ok(())
}

/// [`validate_owner`] without its rule on spaces at either end, which came later: what a stored
/// record may hold. Checked when one is restored (from a snapshot, or imported into Redis) and
/// when an owner's sessions are listed or destroyed, so that sessions accepted before the rule
/// are kept whole and stay within reach of "log out everywhere".
pub fn validate_stored_owner(owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Err(StoreError::invalid("owner is empty"));
    }
    if owner.len() > MAX_OWNER_LEN {
        return Err(StoreError::invalid(format!(
            "owner is {} bytes, over the limit of {MAX_OWNER_LEN}",
            owner.len()
        )));
    }
    if let Some(pos) = owner.bytes().position(|b| !(0x20..=0x7e).contains(&b)) {
        return Err(StoreError::invalid(format!(
            "owner has a byte outside printable ASCII at position {pos}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_printable_ascii_up_to_the_limit() {
        for good in ["42", "user 42", "a@b.c", &"x".repeat(MAX_OWNER_LEN)] {
            assert!(validate_owner(good).is_ok(), "{good}");
        }
        for bad in [
            String::new(),
            "x".repeat(MAX_OWNER_LEN + 1),
            "tab\t".to_owned(),
            "nl\n".to_owned(),
            "é".to_owned(),
            " ".to_owned(),
            " 42".to_owned(),
            "42 ".to_owned(),
        ] {
            assert!(validate_owner(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accepts_printable_ascii_up_to_the_limit() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id("!~").is_ok());
        assert!(validate_id(&"x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_unprintable() {
        for bad in [
            String::new(),
            "x".repeat(MAX_ID_LEN + 1),
            "has space".to_owned(),
            "tab\t".to_owned(),
            "nul\0".to_owned(),
            "del\x7f".to_owned(),
            "é".to_owned(),
            " ".to_owned(),
            " 42".to_owned(),
            "42 ".to_owned(),
        ] {
            let err = validate_id(&bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument(_)), "{bad:?}");
        }
    }
}
