//! Digests, tags and repository names: parse then display gives back the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::oci::{Digest, RepoName, Tag};

fuzz_target!(|s: &str| {
    if let Ok(digest) = s.parse::<Digest>() {
        assert_eq!(digest.to_string(), s);
        assert_eq!(digest.hex().len() % 2, 0);
    }
    if let Ok(tag) = Tag::parse(s) {
        assert_eq!(tag.to_string(), s);
        assert!(!s.contains(['/', ':']));
    }
    if let Ok(name) = RepoName::parse(s) {
        assert_eq!(name.to_string(), s);
        assert!(!s.starts_with('/') && !s.contains(".."));
    }
});
