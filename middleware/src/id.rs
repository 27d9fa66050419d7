//! Session ids: how they are made and how a cookie value is recognised as one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes in an id: 256 bits.
const ID_BYTES: usize = 32;
/// Characters of an id: 32 bytes in unpadded base64url.
const ID_LEN: usize = 43;

/// A new session id: 256 bits from the operating system's CSPRNG, base64url without padding.
///
/// # Panics
/// When the operating system has no randomness to give, in which case no session can be made
/// safely at all.
pub(crate) fn generate() -> String {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether a cookie value has the form of an id this crate issues. Anything else is not looked
/// up in the store at all.
pub(crate) fn is_well_formed(value: &str) -> bool {
    value.len() == ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && URL_SAFE_NO_PAD
            .decode(value)
            .is_ok_and(|b| b.len() == ID_BYTES)
}

/// Characters of an express-session id: uid-safe's 24 bytes in unpadded base64url.
const EXPRESS_ID_LEN: usize = 32;

/// Whether a value from a cookie whose signature verified has the form of an id this crate or
/// express-session issues.
pub(crate) fn is_well_formed_signed(value: &str) -> bool {
    is_well_formed(value)
        || (value.len() == EXPRESS_ID_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert!(is_well_formed(&a), "{a}");
        assert_ne!(a, b);
        assert!(gonest_session_core::validate_id(&a).is_ok());
    }

    #[test]
    fn other_values_are_not_ids() {
        let valid = generate();
        for bad in [
            String::new(),
            "short".to_owned(),
            format!("{valid}A"),
            valid[..42].to_owned(),
            format!("{}=", &valid[..42]),
            "../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            "é".repeat(22),
            "+".repeat(43),
        ] {
            assert!(!is_well_formed(&bad), "{bad:?}");
        }
    }
}
