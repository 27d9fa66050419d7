//! The bearer-token file both the daemon (`--auth-token-file`) and its clients read, so that one
//! file, shared as a secret, means the same on both sides.

/// The tokens in a token file's `text`: one per line, surrounding white space ignored, blank
/// lines and lines starting with `#` skipped. Every token must be at least 16 printable ASCII
/// characters, and there must be at least one.
///
/// A daemon accepts every token listed; a client sends the first. To rotate, list the new token
/// after the old one, restart the daemon, move the clients' files to the new token alone, and
/// restart the daemon with it alone.
///
/// ```
/// let tokens = gonest_session_proto::parse_token_file(
///     "# rotated 2026-11\nold-token-0123456789\nnew-token-0123456789\n",
/// )
/// .unwrap();
/// assert_eq!(tokens, ["old-token-0123456789", "new-token-0123456789"]);
/// ```
pub fn parse_token_file(text: &str) -> Result<Vec<String>, TokenFileError> {
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(TokenFileError::Empty);
    }
    if tokens
        .iter()
        .any(|token| token.len() < 16 || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)))
    {
        return Err(TokenFileError::Malformed);
    }
    Ok(tokens)
}

/// Why a token file was refused. Never shows a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// Only blank lines and comments.
    #[error("holds no token")]
    Empty,
    /// A token shorter than 16 characters, or with a character outside printable ASCII.
    #[error("tokens must be at least 16 printable ASCII characters")]
    Malformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_skipped_and_every_token_kept() {
        let text = "# rotated 2026-11\n  first-token-0123456789 \n\nsecond-token-012345678\n";
        assert_eq!(
            parse_token_file(text).unwrap(),
            ["first-token-0123456789", "second-token-012345678"]
        );
        assert_eq!(
            parse_token_file("\n# nothing\n"),
            Err(TokenFileError::Empty)
        );
        assert_eq!(parse_token_file("short\n"), Err(TokenFileError::Malformed));
        assert_eq!(
            parse_token_file("has a space in it 0123456789\n"),
            Err(TokenFileError::Malformed)
        );
    }
}
