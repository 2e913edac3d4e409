//! Manifest parsing: any bytes with any Content-Type are a manifest or a
//! MANIFEST_INVALID reason, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::oci::manifest;

const TYPES: [Option<&str>; 6] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
];

fuzz_target!(|input: (u8, &[u8])| {
    let (pick, bytes) = input;
    let content_type = TYPES[usize::from(pick) % TYPES.len()];
    if let Ok(parsed) = manifest::parse(content_type, bytes) {
        assert!(!parsed.media_type.is_empty());
    }
});
