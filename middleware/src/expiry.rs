//! When a session ends, per session: [`Expiry`], and how it is kept in the session itself so that
//! every instance writes the same cookie for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::SessionOptions;

/// When one session ends, set with [`Session::set_expiry`](crate::Session::set_expiry). The
/// store's TTL and the cookie's `Max-Age` / `Expires` always follow it together.
///
/// A session that was never given one ends [`OnInactivity`](Self::OnInactivity) of
/// [`SessionOptions::max_age`].
///
/// ```
/// use std::time::Duration;
/// use gonest_session::Expiry;
/// // "Remember me": 30 days, extended by each save (and each request, with `rolling`).
/// let remember = Expiry::OnInactivity(Duration::from_secs(30 * 24 * 3600));
/// // Otherwise a browser-session cookie; the store keeps the session for `session_end_ttl`.
/// let until_the_browser_closes = Expiry::OnSessionEnd;
/// # let _ = (remember, until_the_browser_closes);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A cookie without `Max-Age` or `Expires`, which the browser drops when it ends its session.
    /// The store cannot see that happen, so it keeps the session for
    /// [`SessionOptions::session_end_ttl`](crate::SessionOptions#structfield.session_end_ttl) (default: `max_age`) after each save or touch.
    OnSessionEnd,
    /// This long after the last save (or, with [`SessionOptions::rolling`], the last request).
    OnInactivity(Duration),
    /// At this time, however active the session is.
    AtDateTime(SystemTime),
}

/// The reserved data key the expiry is kept under. Keys beginning with `__` belong to the layer
/// and to other stacks' stores sharing the session; handlers cannot set them.
pub(crate) const EXPIRY_KEY: &str = "__gonest.expiry";

/// The stored form: JSON, like every other value, so that other stacks can read it too.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stored {
    OnSessionEnd,
    OnInactivity { seconds: u64 },
    AtDateTime { unix_ms: u64 },
}

impl Expiry {
    /// The stored form of this expiry.
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let stored = match self {
            Expiry::OnSessionEnd => Stored::OnSessionEnd,
            Expiry::OnInactivity(ttl) => Stored::OnInactivity {
                seconds: ttl.as_secs(),
            },
            Expiry::AtDateTime(at) => Stored::AtDateTime {
                unix_ms: at.duration_since(UNIX_EPOCH).map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                }),
            },
        };
        serde_json::to_vec(&stored).expect("an enum of integers serializes")
    }

    /// The expiry stored as `bytes`; `None` for anything else (the default then applies).
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(match serde_json::from_slice(bytes).ok()? {
            Stored::OnSessionEnd => Expiry::OnSessionEnd,
            Stored::OnInactivity { seconds } => Expiry::OnInactivity(Duration::from_secs(seconds)),
            Stored::AtDateTime { unix_ms } => {
                Expiry::AtDateTime(UNIX_EPOCH.checked_add(Duration::from_millis(unix_ms))?)
            }
        })
    }

    /// What the store is asked for when the session is saved or touched.
    pub(crate) fn store_expiry(self, options: &SessionOptions) -> gonest_session_core::StoreExpiry {
        match self {
            Expiry::OnSessionEnd => {
                gonest_session_core::StoreExpiry::Ttl(options.session_end_ttl())
            }
            Expiry::OnInactivity(ttl) => gonest_session_core::StoreExpiry::Ttl(ttl),
            Expiry::AtDateTime(at) => gonest_session_core::StoreExpiry::At(at),
        }
    }

    /// The TTL a touch extends the session by; `None` for a fixed end, which a touch must not
    /// move.
    pub(crate) fn touch_ttl(self, options: &SessionOptions) -> Option<Duration> {
        match self {
            Expiry::OnSessionEnd => Some(options.session_end_ttl()),
            Expiry::OnInactivity(ttl) => Some(ttl),
            Expiry::AtDateTime(_) => None,
        }
    }

    /// The lifetime the store will be asked for at `now`, to check against its limits: `None`
    /// for a time not in the future.
    pub(crate) fn lifetime(self, options: &SessionOptions, now: SystemTime) -> Option<Duration> {
        let ttl = match self {
            Expiry::OnSessionEnd => options.session_end_ttl(),
            Expiry::OnInactivity(ttl) => ttl,
            Expiry::AtDateTime(at) => at.duration_since(now).ok()?,
        };
        (!ttl.is_zero()).then_some(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expiry_round_trips_and_garbage_is_none() {
        let at = UNIX_EPOCH + Duration::from_millis(1_900_000_000_123);
        for expiry in [
            Expiry::OnSessionEnd,
            Expiry::OnInactivity(Duration::from_secs(2_592_000)),
            Expiry::AtDateTime(at),
        ] {
            assert_eq!(Expiry::from_bytes(&expiry.to_bytes()), Some(expiry));
        }
        assert_eq!(
            Expiry::OnInactivity(Duration::from_secs(60)).to_bytes(),
            br#"{"on_inactivity":{"seconds":60}}"#
        );
        for garbage in [
            &b""[..],
            b"42",
            br#"{"at_date_time":{"unix_ms":-1}}"#,
            b"\"never\"",
        ] {
            assert_eq!(Expiry::from_bytes(garbage), None);
        }
        let overflow = format!(r#"{{"at_date_time":{{"unix_ms":{}}}}}"#, u64::MAX);
        // Far in the future but representable, or None: never a panic.
        let _ = Expiry::from_bytes(overflow.as_bytes());
    }
}
