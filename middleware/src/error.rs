//! What a handler hears when a change to its session cannot be made, and why a layer's options
//! are refused.

use std::time::Duration;

/// A change to a [`Session`](crate::Session) that was refused at once (the session is as it was
/// before the call), or a value read as a type it is not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The value cannot be serialized as JSON.
    #[error("the value cannot be serialized as JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// With this value the session would be larger than the store keeps.
    #[error("the session would be {size} bytes, over the store's limit of {limit}")]
    TooLarge {
        /// The session's size with the value, keys plus values.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// Keys beginning with `__` are reserved for the layer (expiry, flash messages) and for
    /// other stacks' stores sharing the session.
    #[error("session keys beginning with `__` are reserved; `{0}` cannot be set")]
    ReservedKey(String),
    /// The owner is not 1 to 256 bytes of printable ASCII.
    #[error("{0}")]
    Owner(String),
    /// The expiry is not in the future, or further out than the store keeps sessions.
    #[error("{0}")]
    Expiry(String),
    /// The value under `key` does not deserialize as the type asked for: it was stored as
    /// something else.
    #[error("the session value under `{key}` is not of the type asked for: {source}")]
    Decode {
        /// The key read.
        key: String,
        /// Why it does not deserialize.
        source: serde_json::Error,
    },
}

/// Options [`SessionLayer::new`](crate::SessionLayer::new) refuses, each naming the rule it
/// breaks. Browsers drop such cookies without a word, so the app would log nobody in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidOptions {
    /// A cookie named `__Host-…` must be `Secure`, have `Path=/` and no `Domain`.
    #[error(
        "cookie `{0}`: a `__Host-` cookie must be secure, with path \"/\" and no domain \
         (RFC 6265bis cookie prefixes)"
    )]
    HostPrefix(String),
    /// A cookie named `__Secure-…` must be `Secure`.
    #[error("cookie `{0}`: a `__Secure-` cookie must be secure (RFC 6265bis cookie prefixes)")]
    SecurePrefix(String),
    /// `SameSite=None` is only honoured on a `Secure` cookie.
    #[error("SameSite=None requires secure: true; browsers reject it otherwise")]
    SameSiteNoneWithoutSecure,
    /// A cookie secret is empty.
    #[error("a cookie secret is empty; an empty secret signs nothing")]
    EmptySecret,
    /// The cookie name is empty or not a valid cookie name.
    #[error("cookie name `{0}` is not a valid cookie name")]
    CookieName(String),
    /// A lifetime is zero, or longer than the store keeps sessions.
    #[error("{what} of {ttl:?} is {problem}")]
    Lifetime {
        /// Which option.
        what: &'static str,
        /// Its value.
        ttl: Duration,
        /// What is wrong with it.
        problem: String,
    },
}
