//! The served content: one OCI image layout per repository under the content directory
//! (`DIR/library/alpine/{oci-layout,index.json,blobs/sha256/<hex>}`).
//!
//! Tags are the `org.opencontainers.image.ref.name` annotations of `index.json`.
//! Nothing is cached: `index.json` is read on every request, so a test can move a tag
//! between pulls by replacing the file.

use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

pub const OCI_INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest manifest served (Docker Hub's limit); larger blobs are not manifests.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// How deep the CDN looks for layouts below the content directory.
const MAX_LAYOUT_DEPTH: usize = 16;

/// `org/name` per the distribution spec: lower-case components joined by `/`, each
/// alphanumeric runs separated by `.`, `_`, `__` or dashes. This also keeps the name
/// from leaving the content directory.
pub fn valid_repository(name: &str) -> bool {
    let separator_ok = |sep: &[u8]| {
        matches!(sep, b"." | b"_" | b"__") || (!sep.is_empty() && sep.iter().all(|&b| b == b'-'))
    };
    let component_ok = |c: &str| {
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = c.as_bytes();
        bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes
                .split(alnum)
                .filter(|sep| !sep.is_empty())
                .all(separator_ok)
    };
    name.len() <= 255 && name.split('/').all(component_ok)
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || b"_.-".contains(&x))
}

/// 64 lower-case hex digits.
pub fn valid_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hex of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| valid_hex(h))
}

/// A blob file and its length.
#[derive(Debug)]
pub struct BlobFile {
    pub path: PathBuf,
    pub len: u64,
}

/// A manifest ready to serve.
#[derive(Debug)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

/// The content directory.
pub struct Content {
    root: PathBuf,
}

impl Content {
    pub fn new(root: PathBuf) -> Content {
        Content { root }
    }

    /// The layout of repository `name`, if it has one.
    pub fn repository(&self, name: &str) -> Option<Layout> {
        if !valid_repository(name) {
            return None;
        }
        let dir = self.root.join(name);
        dir.join("index.json").is_file().then_some(Layout { dir })
    }

    /// The blob `sha256:<hex>` in any repository (the CDN serves blobs by digest alone).
    pub fn find_blob(&self, hex: &str) -> Option<BlobFile> {
        if !valid_hex(hex) {
            return None;
        }
        find_blob_below(&self.root, hex, MAX_LAYOUT_DEPTH)
    }
}

fn find_blob_below(dir: &Path, hex: &str, depth: usize) -> Option<BlobFile> {
    let is_layout = dir.join("index.json").is_file();
    if is_layout {
        if let Some(blob) = blob_file(&dir.join("blobs").join("sha256").join(hex)) {
            return Some(blob);
        }
    }
    if depth == 0 {
        return None;
    }
    // Repositories nest (`a/b` and `a/b/c`); a layout's own blobs are not repositories.
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !(is_layout && e.file_name() == "blobs"))
        .find_map(|e| find_blob_below(&e.path(), hex, depth - 1))
}

fn blob_file(path: &Path) -> Option<BlobFile> {
    let meta = fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some(BlobFile {
        path: path.to_path_buf(),
        len: meta.len(),
    })
}

/// The `manifests` list of an `index.json` or an image index.
#[derive(Deserialize)]
struct IndexDocument {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

impl Descriptor {
    fn tag(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }

    fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            Some(OCI_INDEX_TYPE | DOCKER_LIST_TYPE)
        )
    }
}

/// The `mediaType` field of a JSON document, if it is one and has that field.
fn media_type_field(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithMediaType {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<WithMediaType>(bytes)
        .ok()?
        .media_type
}

/// One repository's OCI image layout.
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn descriptors(&self) -> Result<Vec<Descriptor>, String> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice::<IndexDocument>(&bytes)
            .map(|d| d.manifests)
            .map_err(|e| format!("{} is not an OCI index: {e}", path.display()))
    }

    /// The tags, sorted and without duplicates (ref names that are not tags, such as
    /// full references some tools write, are left out).
    pub fn tags(&self) -> Result<Vec<String>, String> {
        let tags: BTreeSet<String> = self
            .descriptors()?
            .iter()
            .filter_map(|d| d.tag().filter(|t| valid_tag(t)).map(str::to_string))
            .collect();
        Ok(tags.into_iter().collect())
    }

    /// The blob `digest` of this layout.
    pub fn blob(&self, digest: &str) -> Option<BlobFile> {
        let hex = digest_hex(digest)?;
        blob_file(&self.dir.join("blobs").join("sha256").join(hex))
    }

    /// The manifest a tag or digest names; `Ok(None)` if there is none.
    pub fn manifest(&self, reference: &str) -> Result<Option<Manifest>, String> {
        let descriptors = self.descriptors()?;
        let (digest, listed_type) = if reference.starts_with("sha256:") {
            let listed = self.listed_media_type(&descriptors, reference);
            (reference.to_string(), listed)
        } else if !valid_tag(reference) {
            return Ok(None);
        } else {
            match descriptors.iter().find(|d| d.tag() == Some(reference)) {
                Some(d) => (d.digest.clone(), d.media_type.clone()),
                None => return Ok(None),
            }
        };
        let Some(blob) = self.blob(&digest).filter(|b| b.len <= MAX_MANIFEST_BYTES) else {
            return Ok(None);
        };
        let bytes = fs::read(&blob.path)
            .map_err(|e| format!("cannot read {}: {e}", blob.path.display()))?;
        // A tag's index entry says what it is; a digest says it through its own bytes.
        let media_type = if reference.starts_with("sha256:") {
            media_type_field(&bytes).or(listed_type)
        } else {
            listed_type.or_else(|| media_type_field(&bytes))
        };
        Ok(media_type.map(|media_type| Manifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// The media type a descriptor in `index.json`, or in an image index it lists, gives
    /// for `digest`.
    fn listed_media_type(&self, top: &[Descriptor], digest: &str) -> Option<String> {
        let listed = |list: &[Descriptor]| {
            list.iter()
                .find(|d| d.digest == digest)
                .and_then(|d| d.media_type.clone())
        };
        listed(top).or_else(|| {
            top.iter()
                .filter(|d| d.is_index())
                .filter_map(|d| self.blob(&d.digest))
                .filter(|b| b.len <= MAX_MANIFEST_BYTES)
                .filter_map(|b| fs::read(&b.path).ok())
                .filter_map(|bytes| serde_json::from_slice::<IndexDocument>(&bytes).ok())
                .find_map(|index| listed(&index.manifests))
        })
    }
}

/// One page of sorted `tags`: at most `n` (all without `n`) after `last`; and whether
/// more follow.
pub fn paginate<'a>(
    tags: &'a [String],
    n: Option<usize>,
    last: Option<&str>,
) -> (&'a [String], bool) {
    let start = last.map_or(0, |last| tags.partition_point(|t| t.as_str() <= last));
    let rest = &tags[start..];
    match n {
        // n=0 asks for nothing; a next link would never advance.
        Some(0) => (&rest[..0], false),
        Some(n) if n < rest.len() => (&rest[..n], true),
        _ => (rest, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-org/my_app.v2",
            "a__b",
            "a--b",
        ] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "A", "../etc", "a/../b", "a/.", "-a", "a_", "a.-b", "a b",
            "a___b",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
        assert!(valid_tag("latest") && valid_tag("_x") && valid_tag("v1.2-rc_3"));
        assert!(
            !valid_tag("") && !valid_tag(".x") && !valid_tag("a:b") && !valid_tag(&"a".repeat(129))
        );
        let hex = "ab".repeat(32);
        assert_eq!(digest_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(digest_hex(&format!("sha512:{hex}")), None);
        assert_eq!(digest_hex(&format!("sha256:{}", "AB".repeat(32))), None);
        assert_eq!(digest_hex("sha256:abc"), None);
    }

    #[test]
    fn pages() {
        let tags: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let page = |n, last| {
            let (items, more) = paginate(&tags, n, last);
            (items.join(","), more)
        };
        assert_eq!(page(None, None), ("a,b,c,d,e".to_string(), false));
        assert_eq!(page(Some(2), None), ("a,b".to_string(), true));
        assert_eq!(page(Some(2), Some("b")), ("c,d".to_string(), true));
        assert_eq!(page(Some(2), Some("d")), ("e".to_string(), false));
        assert_eq!(page(Some(1), Some("d")), ("e".to_string(), false));
        assert_eq!(page(Some(2), Some("bb")), ("c,d".to_string(), true));
        assert_eq!(page(Some(2), Some("z")), (String::new(), false));
        assert_eq!(page(Some(0), None), (String::new(), false));
        assert_eq!(page(None, Some("c")), ("d,e".to_string(), false));
    }

    #[test]
    fn media_types_from_documents() {
        assert_eq!(
            media_type_field(br#"{"mediaType":"x/y","schemaVersion":2}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(media_type_field(br#"{"schemaVersion":2}"#), None);
        assert_eq!(media_type_field(b"\x1f\x8b not json"), None);
    }
}
