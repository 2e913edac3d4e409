//! `Range` and `Content-Range` parsing: every range it returns lies inside the blob,
//! and no length overflows.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::api::range::{parse_content_range, parse_range, RangeRequest};

fuzz_target!(|input: (u64, &str)| {
    let (size, header) = input;
    if let RangeRequest::Partial(r) = parse_range(header, size) {
        assert!(r.start <= r.end && r.end < size, "{r:?} of {size}");
        assert_eq!(r.length(), r.end - r.start + 1);
    }
    if let Some(r) = parse_content_range(header) {
        assert!(r.start <= r.end);
        assert!(r.length() >= 1);
    }
});
