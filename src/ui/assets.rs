//! The UI's stylesheet, script and icon, built into the binary (no CDN, nothing to
//! install next to it) and served under a name that holds a hash of the content, so
//! browsers may keep them for a year and still never use an old one after an upgrade.

use crate::api::{Body, Response};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::sync::LazyLock;

pub struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
    /// `/ui/assets/style-<12 hex digits of the content's SHA-256>.css`
    url: LazyLock<String>,
}

impl Asset {
    pub fn url(&self) -> &str {
        &self.url
    }
}

macro_rules! asset {
    ($file:literal, $content_type:literal) => {
        Asset {
            content_type: $content_type,
            bytes: include_bytes!(concat!("assets/", $file)),
            url: LazyLock::new(|| versioned_url($file, include_bytes!(concat!("assets/", $file)))),
        }
    };
}

pub static STYLE: Asset = asset!("style.css", "text/css; charset=utf-8");
pub static SCRIPT: Asset = asset!("ui.js", "text/javascript; charset=utf-8");
pub static ICON: Asset = asset!("icon.svg", "image/svg+xml");

const ALL: [&Asset; 3] = [&STYLE, &SCRIPT, &ICON];

fn versioned_url(file: &str, bytes: &[u8]) -> String {
    let hash = hex::encode(&Sha256::digest(bytes)[..6]);
    let (stem, extension) = file.rsplit_once('.').unwrap_or((file, ""));
    format!("/ui/assets/{stem}-{hash}.{extension}")
}

/// The asset at `path`, for a year: its URL changes with its content. An old URL
/// (a page cached from before an upgrade) is not found rather than served new content.
pub fn serve(path: &str) -> Option<Response> {
    let asset = ALL.into_iter().find(|a| a.url() == path)?;
    Some(
        Response::new(200)
            .header("Content-Type", asset.content_type)
            .header("Cache-Control", "public, max-age=31536000, immutable")
            .body(Body::Bytes(Bytes::from_static(asset.bytes))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_a_hash_of_the_content() {
        let url = STYLE.url();
        assert!(
            url.starts_with("/ui/assets/style-") && url.ends_with(".css"),
            "{url}"
        );
        assert_eq!(url.len(), "/ui/assets/style-.css".len() + 12);
        assert_eq!(versioned_url("a.js", b"x"), versioned_url("a.js", b"x"));
        assert_ne!(versioned_url("a.js", b"x"), versioned_url("a.js", b"y"));
        assert!(serve(SCRIPT.url()).is_some());
        assert!(serve("/ui/assets/ui-000000000000.js").is_none());
        assert!(serve("/ui/assets/ui.js").is_none());
    }
}
