//! The admin API's bearer token: read from `admin.token_file`, never printed, and compared in
//! constant time.

use std::fmt;
use std::io::Read;
use std::path::Path;

use subtle::ConstantTimeEq;

/// Longest accepted token, in bytes. Every comparison walks this many bytes, so its time says
/// nothing about the real token's length.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Tokens shorter than this draw a warning: they can be guessed.
const MIN_GOOD_LEN: usize = 16;

/// The secret that `Authorization: Bearer <token>` must carry on the admin API.
///
/// Its `Debug` output never shows the secret, and [`AdminToken::matches`] takes the same time
/// whatever the token and the presented value hold.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// The token, zero-padded to [`MAX_TOKEN_LEN`] bytes.
    padded: Box<[u8; MAX_TOKEN_LEN]>,
    /// How many bytes of `padded` are the token.
    len: usize,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The token held by a token file's `contents`: trailing line breaks are dropped, and what
    /// is left must be 1 to [`MAX_TOKEN_LEN`] bytes of printable ASCII without spaces (what an
    /// `Authorization` header carries unchanged). The error says what is wrong, never what
    /// the file holds.
    pub fn from_file_contents(contents: &[u8]) -> Result<AdminToken, String> {
        let end = contents
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        let token = &contents[..end];
        if token.is_empty() {
            return Err(
                "is empty; write a random token into it, e.g. `openssl rand -hex 32`".into(),
            );
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "holds more than {MAX_TOKEN_LEN} bytes; a token file holds one token on one line"
            ));
        }
        if let Some(i) = token.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "holds a space, a control character, a line break or a non-ASCII byte at byte {}; \
                 write the token as one line of printable ASCII, e.g. `openssl rand -hex 32`",
                i + 1
            ));
        }
        let mut padded = Box::new([0u8; MAX_TOKEN_LEN]);
        padded[..token.len()].copy_from_slice(token);
        Ok(AdminToken {
            padded,
            len: token.len(),
        })
    }

    /// Whether `presented` is this token.
    ///
    /// Both sides are walked to [`MAX_TOKEN_LEN`] bytes with constant-time byte comparisons
    /// folded together, so the time taken depends neither on where the first differing byte
    /// is nor on how long the token is; only a value longer than any token is refused at once.
    pub fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() > MAX_TOKEN_LEN {
            return false;
        }
        let mut same = presented.len().ct_eq(&self.len);
        for (i, expected) in self.padded.iter().enumerate() {
            // Tokens hold no NUL byte, so the padding never matches a presented byte.
            let got = presented.get(i).copied().unwrap_or(0);
            same &= got.ct_eq(expected);
        }
        same.into()
    }

    /// Read the token file at `path`, returning the token and warnings about how the file is
    /// kept (readable by others, a short token), or what is wrong with it.
    pub(crate) fn read(path: &Path) -> Result<(AdminToken, Vec<String>), String> {
        let shown = path.display();
        let mut contents = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TOKEN_LEN as u64 + 3).read_to_end(&mut contents))
            .map_err(|e| format!("cannot read the admin token file {shown}: {e}"))?;
        let token = AdminToken::from_file_contents(&contents)
            .map_err(|e| format!("the admin token file {shown} {e}"))?;
        let mut warnings = Vec::new();
        if let Some(mode) = shared_mode(path) {
            warnings.push(format!(
                "the admin token file {shown} can be read by group or others (mode {mode:04o}); \
                 `chmod 600` it so only fulcrum's user can read it"
            ));
        }
        if token.len < MIN_GOOD_LEN {
            warnings.push(format!(
                "the admin token in {shown} is shorter than {MIN_GOOD_LEN} characters and can be \
                 guessed; use e.g. `openssl rand -hex 32`"
            ));
        }
        Ok((token, warnings))
    }
}

/// The permission bits of the file at `path` when group or others may read or write it.
#[cfg(unix)]
fn shared_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o066 != 0).then_some(mode)
}

/// Other systems keep permissions differently; nothing to warn about here.
#[cfg(not(unix))]
fn shared_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> AdminToken {
        AdminToken::from_file_contents(s.as_bytes()).unwrap()
    }

    #[test]
    fn trailing_line_breaks_are_not_part_of_the_token() {
        let t = token("s3cret-token\n");
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-token\n"));
        assert!(token("abc\r\n").matches(b"abc"));
    }

    #[test]
    fn only_the_exact_token_matches() {
        let t = token("0123456789abcdef");
        assert!(t.matches(b"0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0",
            b"0123456789abcde",
            b"0123456789abcdeF",
            b"0123456789abcdef0",
            b"x123456789abcdef",
            b"0123456789abcdef\0",
        ] {
            assert!(!t.matches(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(!t.matches(&[b'0'; MAX_TOKEN_LEN + 1]));
    }

    #[test]
    fn a_token_of_the_longest_length_matches() {
        let long = "a".repeat(MAX_TOKEN_LEN);
        let t = token(&long);
        assert!(t.matches(long.as_bytes()));
        assert!(!t.matches(&long.as_bytes()[1..]));
        assert!(AdminToken::from_file_contents(&[b'a'; MAX_TOKEN_LEN + 1]).is_err());
    }

    #[test]
    fn bad_contents_are_refused_without_echoing_them() {
        for empty in ["", "\n", "\r\n\n"] {
            let e = AdminToken::from_file_contents(empty.as_bytes()).unwrap_err();
            assert!(e.contains("is empty"), "{empty:?}: {e}");
        }
        for bad in ["s3cr3t word", "s3cr3t\tx", "s3cr3t\nsecond", "s3cr3t\u{e9}"] {
            let e = AdminToken::from_file_contents(bad.as_bytes()).unwrap_err();
            assert!(e.contains("at byte 7"), "{bad:?}: {e}");
            assert!(!e.contains("s3cr3t"), "{e} echoes the token");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", token("hunter2-hunter2-hunter2"));
        assert_eq!(shown, "AdminToken(<redacted>)");
    }

    #[test]
    fn reading_drops_the_newline_and_warns_about_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let (t, warnings) = AdminToken::read(&path).unwrap();
            assert!(t.matches(b"0123456789abcdef0123"));
            assert!(warnings.is_empty(), "{warnings:?}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (_, warnings) = AdminToken::read(&path).unwrap();
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains("mode 0644"), "{warnings:?}");
        }
        let e = AdminToken::read(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read the admin token file"), "{e}");
    }
}
