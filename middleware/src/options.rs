use std::time::{Duration, SystemTime};

use gonest_session_core::StoreLimits;

use crate::{Expiry, InvalidOptions};

/// The cookie's `SameSite` attribute.
pub use cookie::SameSite;

/// How the session cookie is written and how long sessions live. The defaults are GoNest's:
/// cookie `gonest.sid`, 24 hours, not `Secure`, `HttpOnly`, `SameSite=Lax`, path `/`.
///
/// ```
/// use gonest_session::SessionOptions;
/// let options = SessionOptions { secure: true, ..Default::default() };
/// assert_eq!(options.cookie_name, "gonest.sid");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Name of the session cookie.
    pub cookie_name: String,
    /// How long a session lives after it is saved (the store TTL), and the cookie's `Max-Age`,
    /// unless the session was given another [`Expiry`](crate::Expiry).
    pub max_age: Duration,
    /// How long the store keeps a session whose cookie lasts until the browser closes
    /// ([`Expiry::OnSessionEnd`](crate::Expiry::OnSessionEnd)); `None`: `max_age`.
    pub session_end_ttl: Option<Duration>,
    /// Send the cookie over HTTPS only. Turn it on wherever the app is served over HTTPS.
    pub secure: bool,
    /// Hide the cookie from JavaScript.
    pub http_only: bool,
    /// The cookie's `SameSite` policy. `SameSite::None` needs `secure` in browsers.
    pub same_site: SameSite,
    /// The cookie's `Path`.
    pub path: String,
    /// The cookie's `Domain`; `None` keeps it to the host that set it.
    pub domain: Option<String>,
    /// When true, every request that loads a session extends it by `max_age` (a Touch) and
    /// re-sends the cookie, so active users stay logged in.
    pub rolling: bool,
    /// Secrets to sign the cookie with, as express-session does (its `secret` option): the
    /// cookie carries `s:` + id + `.` + HMAC-SHA256 signature, and a cookie whose signature does
    /// not verify with any of them is no session. The first signs; list older ones after it
    /// while rotating. Empty (the default): unsigned cookies holding the bare id.
    pub secret: Vec<String>,
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("cookie_name", &self.cookie_name)
            .field("max_age", &self.max_age)
            .field("session_end_ttl", &self.session_end_ttl)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("rolling", &self.rolling)
            // Never the secrets themselves.
            .field("secret", &format_args!("[{} redacted]", self.secret.len()))
            .finish()
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            cookie_name: "gonest.sid".to_owned(),
            max_age: Duration::from_secs(24 * 60 * 60),
            session_end_ttl: None,
            secure: false,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            domain: None,
            rolling: false,
            secret: Vec::new(),
        }
    }
}

impl SessionOptions {
    /// The store TTL of a session that ends with the browser's session.
    pub(crate) fn session_end_ttl(&self) -> Duration {
        self.session_end_ttl.unwrap_or(self.max_age)
    }

    /// The session id a cookie value carries, if it is one: with secrets, a signed value whose
    /// signature verifies (ids of this crate's form or express-session's); without, a bare id of
    /// this crate's form.
    pub(crate) fn id_in_cookie(&self, value: &str) -> Option<String> {
        if self.secret.is_empty() {
            crate::id::is_well_formed(value).then(|| value.to_owned())
        } else {
            crate::signing::unsign(value, &self.secret)
        }
    }

    /// Refuses options whose cookie browsers would drop, and lifetimes `limits` say the store
    /// refuses.
    pub(crate) fn validate(&self, limits: StoreLimits) -> Result<(), InvalidOptions> {
        let name = &self.cookie_name;
        let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(InvalidOptions::CookieName(name.clone()));
        }
        if name.starts_with("__Host-")
            && !(self.secure && self.path == "/" && self.domain.is_none())
        {
            return Err(InvalidOptions::HostPrefix(name.clone()));
        }
        if name.starts_with("__Secure-") && !self.secure {
            return Err(InvalidOptions::SecurePrefix(name.clone()));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(InvalidOptions::SameSiteNoneWithoutSecure);
        }
        if self.secret.iter().any(String::is_empty) {
            return Err(InvalidOptions::EmptySecret);
        }
        for (what, ttl) in [
            ("max_age", self.max_age),
            ("session_end_ttl", self.session_end_ttl()),
        ] {
            let problem = match limits.max_ttl {
                _ if ttl.is_zero() => "zero".to_owned(),
                Some(max) if ttl > max => format!("over the store's maximum TTL of {max:?}"),
                _ => continue,
            };
            return Err(InvalidOptions::Lifetime { what, ttl, problem });
        }
        Ok(())
    }

    /// The `Set-Cookie` value that hands `id` to the browser, to be kept as `expiry` says
    /// (measured from `now`).
    pub(crate) fn set_cookie(&self, id: &str, expiry: Expiry, now: SystemTime) -> String {
        let seconds = |ttl: Duration| {
            cookie::time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
        };
        let value = match self.secret.first() {
            Some(secret) => crate::signing::sign(id, secret),
            None => id.to_owned(),
        };
        let mut builder = self.cookie(value);
        match expiry {
            Expiry::OnSessionEnd => {}
            Expiry::OnInactivity(ttl) => builder = builder.max_age(seconds(ttl)),
            Expiry::AtDateTime(at) => {
                let left = at.duration_since(now).unwrap_or_default();
                builder = builder
                    .max_age(seconds(left))
                    .expires(cookie::time::OffsetDateTime::from(at));
            }
        }
        builder.build().to_string()
    }

    /// The `Set-Cookie` value that removes the session cookie, with the same path and domain.
    pub(crate) fn removal_cookie(&self) -> String {
        let mut cookie = self.cookie(String::new()).build();
        cookie.make_removal();
        cookie.to_string()
    }

    fn cookie(&self, value: String) -> cookie::CookieBuilder<'static> {
        let mut builder = cookie::Cookie::build((self.cookie_name.clone(), value))
            .path(self.path.clone())
            .http_only(self.http_only)
            .secure(self.secure)
            .same_site(self.same_site);
        if let Some(domain) = &self.domain {
            builder = builder.domain(domain.clone());
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_carry_every_attribute() {
        let options = SessionOptions {
            secure: true,
            domain: Some("example.com".into()),
            path: "/app".into(),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        };
        let set = options.set_cookie(
            "abc",
            Expiry::OnInactivity(options.max_age),
            SystemTime::now(),
        );
        for part in [
            "gonest.sid=abc",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/app",
            "Domain=example.com",
            "Max-Age=3600",
        ] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        let removal = options.removal_cookie();
        assert!(removal.starts_with("gonest.sid=;"), "{removal}");
        assert!(removal.contains("Max-Age=0"), "{removal}");
        assert!(removal.contains("Path=/app") && removal.contains("Domain=example.com"));
    }

    #[test]
    fn defaults_are_gonests() {
        let options = SessionOptions::default();
        let set = options.set_cookie(
            "abc",
            Expiry::OnInactivity(options.max_age),
            SystemTime::now(),
        );
        assert!(!set.contains("Secure"), "{set}");
        assert!(
            set.contains("Max-Age=86400") && set.contains("Path=/"),
            "{set}"
        );
        assert!(options.http_only && !options.rolling && options.domain.is_none());
    }
}
