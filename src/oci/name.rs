//! Repository names and tags, with the grammar of the OCI distribution spec.
//!
//! A `RepoName` is safe to use as a metadata key and never contains `..`, empty
//! components or absolute paths, because each component must match the grammar.

use super::digest::Digest;
use std::fmt;

/// Longest repository name accepted (distribution's limit, and what clients expect).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// What a manifest URL points at: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name {0:?} must be lowercase components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'")]
    BadName(String),
    #[error("repository name is {0} characters long; the limit is {MAX_NAME_LEN}")]
    NameTooLong(usize),
    #[error("tag {0:?} must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong(s.len()));
        }
        if s.split('/').all(is_name_component) {
            Ok(RepoName(s.to_string()))
        } else {
            Err(NameError::BadName(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
pub(crate) fn is_name_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators sit between alphanumeric runs: '.' or '_' alone, "__", or any run of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_TAG_LEN
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::BadTag(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "a",
            "library/nginx",
            "team/app",
            "a/b/c/d/e/f/g/h",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "0x/1.2_3-4",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok:?} rejected");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "/",
            "/abs",
            "trailing/",
            "UPPER",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            "-lead",
            "trail-",
            "a___b",
            "a._b",
            "sp ace",
            "a%2fb",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            RepoName::parse(&"a".repeat(256)),
            Err(NameError::NameTooLong(256))
        ));
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "1.0", "_x", "v1.2.3-rc.1_b", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in [
            "",
            "-bad",
            ".bad",
            "a/b",
            "a:b",
            "sha256:abc",
            &"a".repeat(129),
        ] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
