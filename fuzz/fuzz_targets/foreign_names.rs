//! Names read from other tools' files: registry:2 `link` paths and contents, and the
//! ref names of OCI layouts. Any text is classified or refused, never a panic, and
//! what is accepted is exactly a piece of the input (nothing invented, no `/` in a
//! path component, so no name reaches the store that was not in the file).
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::transfer::distribution::{classify, parse_link, Link};
use portcullis::transfer::layout::parse_ref_name;

fuzz_target!(|input: &str| {
    if let Some(link) = classify(input) {
        let (repo, component) = match &link {
            Link::Layer { repo, hex } | Link::Revision { repo, hex } => (repo, hex),
            Link::Tag { repo, tag } => (repo, tag),
        };
        assert!(!repo.is_empty() && input.starts_with(repo.as_str()), "{link:?}");
        assert!(!component.contains('/'), "{link:?}");
        assert!(!repo.split('/').any(|part| part.starts_with('_')), "{link:?}");
    }
    if let Some(digest) = parse_link(input) {
        assert_eq!(digest.to_string(), input.trim());
    }
    let name = parse_ref_name(input);
    match (name.repo, name.tag) {
        (Some(repo), Some(tag)) => assert_eq!(format!("{repo}:{tag}"), input),
        (Some(repo), None) => assert!(input.starts_with(repo)),
        (None, Some(tag)) => assert_eq!(tag, input),
        (None, None) => panic!("a ref name is a repository, a tag or both"),
    }
});
