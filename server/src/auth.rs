//! Bearer-token authentication of `SessionStore` calls.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The tokens the daemon accepts: none (no authentication), or any of those read from the
/// token file, one per line. Several tokens let clients move to a new one before the old one
/// is removed. Its `Debug` never shows a token.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Reads the tokens from `path`, in the format of
    /// [`parse_token_file`](gonest_session_proto::parse_token_file): one per line, blank lines
    /// and `#` comments skipped. A file with no token is an error.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read auth token file {}", path.display()))?;
        let tokens = gonest_session_proto::parse_token_file(&text)
            .map_err(|err| anyhow::anyhow!("auth token file {}: {err}", path.display()))?;
        Ok(Self::new(tokens))
    }

    /// Tokens given directly (tests, embedding).
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(
            tokens.into_iter().map(String::into_bytes).collect(),
        ))
    }

    /// Whether calls must carry a token.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `presented` is one of the tokens, compared in constant time.
    fn accepts(&self, presented: &[u8]) -> bool {
        // Check every token, so the time taken does not tell which one matched.
        self.0.iter().fold(0u8, |found, token| {
            found | token.ct_eq(presented).unwrap_u8()
        }) == 1
    }
}

impl Interceptor for Tokens {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.required() {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) if self.accepts(token.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid token")),
            None => Err(Status::unauthenticated(
                "missing token: send authorization: Bearer <token>",
            )),
        }
    }
}

/// The token of an `authorization` value in the Bearer scheme, whose name is matched without
/// regard to case (RFC 7235, section 2.1), after one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_a_configured_token_passes() {
        let mut tokens =
            Tokens::new(["old-token-0123456789".into(), "new-token-0123456789".into()]);
        assert!(
            tokens
                .call(request(Some("Bearer old-token-0123456789")))
                .is_ok()
        );
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} new-token-0123456789");
            assert!(tokens.call(request(Some(&header))).is_ok(), "{header}");
        }
        assert!(
            tokens
                .call(request(Some("Bearer  new-token-0123456789")))
                .is_ok()
        );
        for bad in [
            None,
            Some("Bearer nope"),
            Some("old-token-0123456789"),
            Some("Bearer "),
            Some("Basic new-token-0123456789"),
            Some("Bearernew-token-0123456789"),
        ] {
            let status = tokens.call(request(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!status.message().contains("token-0123456789"));
        }
        let mut open = Tokens::default();
        assert!(open.call(request(None)).is_ok());
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(
            &path,
            "# rotated 2026-11\n  first-token-0123456789 \n\nsecond-token-012345678\n",
        )
        .unwrap();
        let tokens = Tokens::from_file(&path).unwrap();
        assert_eq!(tokens.0.len(), 2);
        assert_eq!(format!("{tokens:?}"), "Tokens(2 configured)");
        std::fs::write(&path, "\n# nothing\n").unwrap();
        assert!(
            Tokens::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("no token")
        );
        std::fs::write(&path, "short\n").unwrap();
        assert!(
            Tokens::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("at least 16")
        );
        let missing = Tokens::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(missing.to_string().contains("cannot read auth token file"));
    }
}
