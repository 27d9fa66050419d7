//! Signed cookie values in express-session's format, so that a Node app on express-session and
//! a Rust app on this layer read each other's cookies.
//!
//! express-session writes `s:` + id + `.` + the unpadded standard base64 of
//! HMAC-SHA256(secret, id) (the `cookie-signature` package), and its `cookie` module
//! percent-encodes the value as `encodeURIComponent` does: `s%3A…`, with `+` and `/` of the
//! signature as `%2B` and `%2F`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, id: &str) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac
}

/// The cookie value carrying `id`, signed with `secret`, percent-encoded as express writes it.
pub(crate) fn sign(id: &str, secret: &str) -> String {
    let signature = STANDARD_NO_PAD.encode(mac(secret, id).finalize().into_bytes());
    let signature = signature.replace('+', "%2B").replace('/', "%2F");
    format!("s%3A{id}.{signature}")
}

/// The id in a signed cookie value, if its signature verifies with one of `secrets` (compared in
/// constant time) and the id has the form of one this crate or express-session issues.
pub(crate) fn unsign(value: &str, secrets: &[String]) -> Option<String> {
    let value = percent_decode(value)?;
    let signed = value.strip_prefix("s:")?;
    let (id, signature) = signed.rsplit_once('.')?;
    if !id::is_well_formed_signed(id) {
        return None;
    }
    let signature = STANDARD_NO_PAD.decode(signature).ok()?;
    secrets
        .iter()
        .any(|secret| mac(secret, id).verify_slice(&signature).is_ok())
        .then(|| id.to_owned())
}

/// Decodes `%XX` escapes (a `%` not followed by two hex digits stays as it is, and then no
/// signature verifies); `None` for a result that is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cookie_signature_and_verifies_with_any_secret() {
        // cookie-signature: sign('hello', 'tobiiscool')
        // === 'hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI'
        let mac = STANDARD_NO_PAD.encode(mac("tobiiscool", "hello").finalize().into_bytes());
        assert_eq!(mac, "DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI");

        let id = crate::id::generate();
        let cookie = sign(&id, "new");
        assert!(cookie.starts_with("s%3A"), "{cookie}");
        let secrets = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(unsign(&cookie, &secrets(&["new"])), Some(id.clone()));
        assert_eq!(unsign(&cookie, &secrets(&["old", "new"])), Some(id.clone()));
        assert_eq!(unsign(&cookie, &secrets(&["other"])), None);
        assert_eq!(unsign(&cookie, &[]), None);
        // Undecoded too (a client that sent it as is).
        assert_eq!(
            unsign(&percent_decode(&cookie).unwrap(), &secrets(&["new"])),
            Some(id.clone())
        );

        let express_id = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";
        let cookie = sign(express_id, "new");
        assert_eq!(
            unsign(&cookie, &secrets(&["new"])),
            Some(express_id.to_owned())
        );
    }

    #[test]
    fn tampered_or_malformed_values_are_refused() {
        let secrets = vec!["k".to_owned()];
        let id = crate::id::generate();
        let good = sign(&id, "k");
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let other = crate::id::generate();
        for bad in [
            tampered,
            good.replacen(&id[..4], "AAAA", 1),
            id.clone(),
            format!("s%3A{id}"),
            format!("s%3A{id}."),
            format!("s%3A{other}.{}", good.rsplit_once('.').unwrap().1),
            format!("s%3A../../etc.{}", good.rsplit_once('.').unwrap().1),
            "s%3A%ZZ".to_owned(),
            "%".to_owned(),
            String::new(),
        ] {
            assert_eq!(unsign(&bad, &secrets), None, "{bad}");
        }
    }
}
