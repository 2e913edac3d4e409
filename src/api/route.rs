//! Request path -> typed [`Route`]. Pure: no I/O, every component validated.
//!
//! Repository names contain slashes, so the path is read from its end: the last one
//! to three segments say which resource it is, everything before is the name.

use super::errors::{ApiError, ErrorCode};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::UploadId;
use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`: start an upload (or mount).
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`: an upload session.
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
    /// `/admin/gc`: run garbage collection now (POST) or see the last run (GET).
    AdminGc,
}

impl Route {
    /// The route's kind, for metrics labels and the access log (a bounded set).
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) => "upload_start",
            Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
            Route::AdminGc => "admin",
        }
    }

    /// The repository the route names, if any.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog | Route::AdminGc => None,
            Route::Tags(name)
            | Route::Manifest(name, _)
            | Route::Blob(name, _)
            | Route::UploadStart(name)
            | Route::Upload(name, _)
            | Route::Referrers(name, _) => Some(name),
        }
    }
}

/// Parses the path part of a request URI (no query).
pub fn parse(path: &str) -> Result<Route, ApiError> {
    if path == "/admin/gc" {
        return Ok(Route::AdminGc);
    }
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return Ok(Route::Base),
        Some(rest) => rest.strip_prefix('/').ok_or_else(no_such_endpoint)?,
        None => return Err(no_such_endpoint()),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [name @ .., "tags", "list"] => Ok(Route::Tags(name_of(name)?)),
        [name @ .., "blobs", "uploads", ""] | [name @ .., "blobs", "uploads"] => {
            Ok(Route::UploadStart(name_of(name)?))
        }
        [name @ .., "blobs", "uploads", id] => {
            let name = name_of(name)?;
            let id = UploadId::parse(&decode(id)).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BlobUploadUnknown,
                    format!("no upload session {id:?}"),
                )
            })?;
            Ok(Route::Upload(name, id))
        }
        [name @ .., "blobs", digest] => Ok(Route::Blob(name_of(name)?, digest_of(digest)?)),
        [name @ .., "manifests", reference] => {
            Ok(Route::Manifest(name_of(name)?, reference_of(reference)?))
        }
        [name @ .., "referrers", digest] => {
            Ok(Route::Referrers(name_of(name)?, digest_of(digest)?))
        }
        _ => Err(no_such_endpoint()),
    }
}

fn no_such_endpoint() -> ApiError {
    ApiError::new(
        ErrorCode::NoSuchEndpoint,
        "no such endpoint; the API lives under /v2/ (see the OCI distribution spec)",
    )
}

fn decode(segment: &str) -> std::borrow::Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

fn name_of(segments: &[&str]) -> Result<RepoName, ApiError> {
    if segments.is_empty() {
        return Err(no_such_endpoint());
    }
    let name = segments.join("/");
    RepoName::parse(&name).map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string()))
}

fn digest_of(segment: &str) -> Result<Digest, ApiError> {
    decode(segment)
        .parse()
        .map_err(|e: crate::oci::DigestError| {
            ApiError::new(ErrorCode::DigestInvalid, e.to_string())
        })
}

/// A reference with a ':' is a digest; anything else must be a tag.
pub(crate) fn reference_of(segment: &str) -> Result<Reference, ApiError> {
    let decoded = decode(segment);
    if decoded.contains(':') {
        digest_of(segment).map(Reference::Digest)
    } else {
        Tag::parse(&decoded)
            .map(Reference::Tag)
            .map_err(|e| ApiError::new(ErrorCode::TagInvalid, e.to_string()))
    }
}

/// Decoded `key=value` pairs of a query string, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k).into_owned(), decode(v).into_owned())
        })
        .collect()
}

/// The first value of `key` in decoded query pairs.
pub fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_endpoint_is_outside_the_api() {
        assert_eq!(parse("/admin/gc").unwrap(), Route::AdminGc);
        assert!(parse("/admin/gc/").is_err());
        assert!(parse("/admin").is_err());
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const U: &str = "8c0b6b5e-8f5f-4d5a-9a3f-0b7a1e2c3d4e";

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Catalog);
    }

    #[test]
    fn resources_with_nested_names() {
        assert_eq!(
            parse("/v2/a/b/c/tags/list").unwrap(),
            Route::Tags(name("a/b/c"))
        );
        assert_eq!(
            parse(&format!("/v2/team/app/blobs/{D}")).unwrap(),
            Route::Blob(name("team/app"), D.parse().unwrap())
        );
        assert_eq!(
            parse("/v2/team/app/manifests/1.0").unwrap(),
            Route::Manifest(name("team/app"), Reference::Tag(Tag::parse("1.0").unwrap()))
        );
        assert_eq!(
            parse(&format!("/v2/x/manifests/{}", D.replace(':', "%3A"))).unwrap(),
            Route::Manifest(name("x"), Reference::Digest(D.parse().unwrap()))
        );
        assert_eq!(
            parse(&format!("/v2/x/referrers/{D}")).unwrap(),
            Route::Referrers(name("x"), D.parse().unwrap())
        );
    }

    #[test]
    fn uploads() {
        assert_eq!(
            parse("/v2/a/blobs/uploads/").unwrap(),
            Route::UploadStart(name("a"))
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads").unwrap(),
            Route::UploadStart(name("a"))
        );
        assert_eq!(
            parse(&format!("/v2/a/b/blobs/uploads/{U}")).unwrap(),
            Route::Upload(name("a/b"), UploadId::parse(U).unwrap())
        );
        let err = parse("/v2/a/blobs/uploads/../../etc").unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSuchEndpoint);
        let err = parse("/v2/a/blobs/uploads/not-a-uuid").unwrap_err();
        assert_eq!(err.code, ErrorCode::BlobUploadUnknown);
    }

    #[test]
    fn kinds_and_repositories() {
        let cases = [
            ("/v2/", "base", None),
            ("/v2/_catalog", "catalog", None),
            ("/admin/gc", "admin", None),
            ("/v2/a/b/tags/list", "tags", Some("a/b")),
            ("/v2/a/manifests/1", "manifest", Some("a")),
            ("/v2/a/blobs/uploads/", "upload_start", Some("a")),
        ];
        for (path, kind, repo) in cases {
            let route = parse(path).unwrap();
            assert_eq!(route.kind(), kind, "{path}");
            assert_eq!(route.repository().map(RepoName::as_str), repo, "{path}");
        }
        let upload = parse(&format!("/v2/x/blobs/uploads/{U}")).unwrap();
        assert_eq!(
            (upload.kind(), upload.repository()),
            ("upload", Some(&name("x")))
        );
        let blob = parse(&format!("/v2/x/blobs/{D}")).unwrap();
        assert_eq!(blob.kind(), "blob");
        assert_eq!(
            parse(&format!("/v2/x/referrers/{D}")).unwrap().kind(),
            "referrers"
        );
    }

    #[test]
    fn names_that_look_like_resources() {
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/latest").unwrap(),
            Route::Manifest(
                name("blobs/manifests"),
                Reference::Tag(Tag::parse("latest").unwrap())
            )
        );
    }

    #[test]
    fn invalid_components_get_their_own_codes() {
        assert_eq!(
            parse("/v2/UPPER/tags/list").unwrap_err().code,
            ErrorCode::NameInvalid
        );
        assert_eq!(
            parse("/v2/a/../b/tags/list").unwrap_err().code,
            ErrorCode::NameInvalid
        );
        assert_eq!(
            parse("/v2/a/blobs/sha256:xyz").unwrap_err().code,
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            parse("/v2/a/manifests/-bad").unwrap_err().code,
            ErrorCode::TagInvalid
        );
        assert_eq!(
            parse("/v2/a/manifests/md5:00").unwrap_err().code,
            ErrorCode::DigestInvalid
        );
        for unknown in [
            "/",
            "/v1/",
            "/v2x",
            "/v2/a",
            "/v2/a/unknown/x",
            "/v2/tags/list",
        ] {
            assert_eq!(
                parse(unknown).unwrap_err().code,
                ErrorCode::NoSuchEndpoint,
                "{unknown}"
            );
        }
    }

    #[test]
    fn query_is_decoded_in_any_order() {
        let docker = query_pairs(Some("from=a%2Fb&mount=sha256%3Aabc"));
        let ctr = query_pairs(Some("mount=sha256:abc&from=a/b"));
        for pairs in [docker, ctr] {
            assert_eq!(query_value(&pairs, "from"), Some("a/b"));
            assert_eq!(query_value(&pairs, "mount"), Some("sha256:abc"));
            assert_eq!(query_value(&pairs, "digest"), None);
        }
        assert!(query_pairs(None).is_empty());
        assert_eq!(
            query_pairs(Some("n")),
            vec![("n".to_string(), String::new())]
        );
    }
}
