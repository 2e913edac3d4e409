//! What an upstream registry sends back is untrusted input to the mirror: its
//! `WWW-Authenticate` challenge, `Link`, `Retry-After` and a resumed blob's
//! `Content-Range`, plus the client's `Accept` list and `portcullis fetch` arguments.
//! None may panic, and what they accept must be consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::api::range::parse_response_content_range;
use portcullis::mirror::policy::{self, Accept, Challenge};
use portcullis::mirror::prefill::{parse_image, Platform};

fuzz_target!(|input: &str| {
    if let Some(Challenge::Bearer { realm, .. }) = policy::parse_challenge(input) {
        assert!(realm.starts_with("http://") || realm.starts_with("https://"));
    }
    if let Some(next) = policy::next_link(input) {
        assert!(input.contains(&format!("<{next}>")), "a target the header names");
    }
    assert!(policy::retry_after(Some(input)).as_secs() <= 3600);
    if let Some((range, total)) = parse_response_content_range(input) {
        assert!(range.start <= range.end);
        assert!(total.is_none_or(|t| range.end < t));
    }
    let accept = Accept::parse(input.split('\n'));
    assert!(!accept.upstream_values().is_empty());
    if let Ok((name, _)) = parse_image(input) {
        assert!(!name.as_str().is_empty());
    }
    let _ = Platform::parse(input);
});
