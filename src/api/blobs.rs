//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with single `Range` reads.

use super::range::{parse_range, RangeRequest};
use super::{ApiError, Body, ErrorCode, Request, Response};
use crate::mirror::{Mirror, Target};
use crate::oci::{Digest, RepoName};
use crate::store::Registry;
use std::sync::Arc;

/// Spec: "GET /v2/<name>/blobs/<digest>" returns 200 with the blob, or 206 for a
/// satisfiable `Range`; HEAD answers with the same headers and no body. A blob that
/// the pull-through cache is still fetching streams as it arrives.
pub async fn get(
    mirror: &Arc<Mirror>,
    req: &Request,
    target: &Target,
    digest: &Digest,
) -> Result<Response, ApiError> {
    let blob = mirror.blob(target, digest, req.is_head()).await?;
    let size = blob.size();
    let range = match req.header("range") {
        Some(header) => parse_range(header, size),
        None => RangeRequest::Whole,
    };
    let response = Response::new(200)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", digest.to_string())
        .header("Accept-Ranges", "bytes")
        .header("ETag", format!("\"{digest}\""))
        // Content-addressed: the bytes behind a digest never change.
        .header("Cache-Control", "max-age=31536000");
    match range {
        RangeRequest::Unsatisfiable => Err(ApiError::new(
            ErrorCode::RangeInvalid,
            format!("requested range is outside the blob's {size} bytes"),
        )
        .with_header("Content-Range", format!("bytes */{size}"))),
        RangeRequest::Whole if req.is_head() => Ok(response.body(Body::HeadOf(size))),
        RangeRequest::Whole => {
            let source = mirror.open_blob(&blob, 0, size).await?;
            Ok(response.body(Body::Stream { source, len: size }))
        }
        RangeRequest::Partial(r) => {
            let mut response = response.header(
                "Content-Range",
                format!("bytes {}-{}/{size}", r.start, r.end),
            );
            response.status = 206;
            if req.is_head() {
                return Ok(response.body(Body::HeadOf(r.length())));
            }
            let source = mirror.open_blob(&blob, r.start, r.length()).await?;
            Ok(response.body(Body::Stream {
                source,
                len: r.length(),
            }))
        }
    }
}

/// Spec: "DELETE /v2/<name>/blobs/<digest>" answers 202; the bytes go at the next GC.
pub async fn delete(
    registry: &Registry,
    name: &RepoName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    registry.delete_blob(name, digest).await?;
    Ok(Response::new(202))
}
