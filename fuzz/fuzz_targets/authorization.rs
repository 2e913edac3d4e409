//! The `Authorization` header: any value is credentials or nothing, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::auth::parse_basic;

fuzz_target!(|header: &str| {
    if let Some((user, _password)) = parse_basic(header) {
        assert!(!user.contains(':'));
    }
});
