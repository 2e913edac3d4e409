//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.
//!
//! Bytes are served exactly as pushed, with the digest of those bytes.

use super::response::read_limited;
use super::{ApiError, Body, Request, Response};
use crate::mirror::policy::Accept;
use crate::mirror::{Mirror, Target};
use crate::oci::{Reference, RepoName};
use crate::store::{ByteSource, Registry};

/// Spec: "GET /v2/<name>/manifests/<reference>" returns the manifest with its
/// `Content-Type` and `Docker-Content-Digest`; HEAD the same headers without body.
/// For a mirrored repository the client's `Accept` list decides which of a tag's
/// manifests it gets (an index or a single-platform manifest), as upstream.
pub async fn get(
    mirror: &Mirror,
    req: &Request,
    target: &Target,
    reference: &Reference,
) -> Result<Response, ApiError> {
    let accept = Accept::parse(
        req.headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let content = mirror.manifest(target, reference, &accept).await?;
    let response = Response::new(200)
        .header("Content-Type", content.media_type.clone())
        .header("Docker-Content-Digest", content.digest.to_string())
        .header("ETag", format!("\"{}\"", content.digest));
    if req.is_head() {
        return Ok(response.body(Body::HeadOf(content.size)));
    }
    let bytes = mirror.registry().manifest_bytes(&content).await?;
    Ok(response.body(Body::Bytes(bytes)))
}

/// Reads a whole request body of at most `limit` bytes.
/// Spec: "PUT /v2/<name>/manifests/<reference>" stores the manifest once everything it
/// references is in the repository: 201 with `Location`, `Docker-Content-Digest` and,
/// for a manifest with a `subject`, `OCI-Subject`.
pub async fn put(
    registry: &Registry,
    req: &Request,
    name: &RepoName,
    reference: &Reference,
    body: &mut dyn ByteSource,
    max_bytes: usize,
) -> Result<Response, ApiError> {
    let bytes = read_limited(req, body, max_bytes, "manifests")
        .await?
        .freeze();
    let content_type = req.header("content-type");
    let outcome = registry
        .put_manifest(name, reference, content_type, bytes)
        .await?;
    let response = Response::new(201)
        .header(
            "Location",
            format!("/v2/{name}/manifests/{}", outcome.digest),
        )
        .header("Docker-Content-Digest", outcome.digest.to_string());
    Ok(match outcome.subject {
        Some(subject) => response.header("OCI-Subject", subject.to_string()),
        None => response,
    })
}

/// Spec: "DELETE /v2/<name>/manifests/<reference>": by tag removes the tag, by digest the
/// manifest and every tag on it; 202.
pub async fn delete(
    registry: &Registry,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response, ApiError> {
    registry.delete_manifest(name, reference).await?;
    Ok(Response::new(202))
}
