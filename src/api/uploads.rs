//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic, mount) and
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.
//!
//! The session id in the `Location` URL is all the state a client carries; docker and
//! podman append `&digest=` (or `?digest=`) to it for the final PUT.

use super::errors::upload_range;
use super::range::{parse_content_range, ByteRange};
use super::route::{query_pairs, query_value};
use super::{ApiError, Caller, ErrorCode, Request, Response};
use crate::auth::access::Action;
use crate::oci::{Digest, RepoName};
use crate::store::{ByteSource, Origin, Registry, StoreError, UploadId};
use async_trait::async_trait;
use bytes::Bytes;

fn session_location(name: &RepoName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{}", id.as_str())
}

/// 202 with the headers every session response carries.
fn session_response(status: u16, name: &RepoName, id: &UploadId, size: u64) -> Response {
    Response::new(status)
        .header("Location", session_location(name, id))
        .header("Range", upload_range(size))
        .header("Docker-Upload-UUID", id.as_str())
}

/// 201 for a blob now present in the repository.
fn created(name: &RepoName, digest: &Digest) -> Response {
    Response::new(201)
        .header("Location", format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
}

fn digest_param(pairs: &[(String, String)], key: &str) -> Result<Option<Digest>, ApiError> {
    query_value(pairs, key)
        .map(|d| {
            d.parse().map_err(|e: crate::oci::DigestError| {
                ApiError::new(ErrorCode::DigestInvalid, e.to_string())
            })
        })
        .transpose()
}

/// Spec: "POST /v2/<name>/blobs/uploads/" starts a session (202); with `?digest=` the
/// body is the whole blob (201); with `?mount=<digest>[&from=<repo>]` an existing blob
/// is linked (201), and when it cannot be, a session starts instead (202). A mount
/// only takes from where the caller could pull the blob anyway.
pub async fn start(
    registry: &Registry,
    caller: &Caller<'_>,
    req: &Request,
    name: &RepoName,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(req.query.as_deref());
    if let Some(digest) = digest_param(&pairs, "mount")? {
        let from = query_value(&pairs, "from")
            .map(|f| {
                RepoName::parse(f).map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string()))
            })
            .transpose()?;
        let readable = match &from {
            Some(from) => caller.may(from, Action::Pull),
            None => caller.may_pull_everything(),
        };
        if readable
            && registry
                .mount_blob(name, &digest, from.as_ref())
                .await?
                .is_some()
        {
            return Ok(created(name, &digest));
        }
    } else if let Some(digest) = digest_param(&pairs, "digest")? {
        let id = registry.start_upload(name).await?;
        let stored = async {
            registry.append_upload(name, &id, Some(0), body).await?;
            registry
                .finish_upload(name, &id, &digest, Origin::Pushed)
                .await
        };
        return match stored.await {
            Ok(_) => Ok(created(name, &digest)),
            Err(e) => {
                // Nothing of a failed monolithic upload is kept; the session may already be gone.
                let _ = registry.cancel_upload(name, &id).await;
                Err(e.into())
            }
        };
    }
    let id = registry.start_upload(name).await?;
    Ok(session_response(202, name, &id, 0))
}

/// Spec: "GET /v2/<name>/blobs/uploads/<id>" answers 204 with the `Range` received so far.
pub async fn status(
    registry: &Registry,
    name: &RepoName,
    id: &UploadId,
) -> Result<Response, ApiError> {
    let size = registry.upload_size(name, id).await?;
    Ok(session_response(204, name, id, size))
}

/// The bytes a chunk claims to be, from `Content-Range`; checked against
/// `Content-Length` so a mislabelled chunk is refused before any byte is stored.
fn chunk_range(req: &Request) -> Result<Option<ByteRange>, ApiError> {
    let Some(header) = req.header("content-range") else {
        return Ok(None);
    };
    let range = parse_content_range(header).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RangeInvalid,
            format!("Content-Range {header:?} must be <start>-<end>"),
        )
    })?;
    if let Some(length) = req
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if length != range.length() {
            return Err(ApiError::new(
                ErrorCode::SizeInvalid,
                format!(
                    "Content-Range {header:?} covers {} bytes but Content-Length is {length}",
                    range.length()
                ),
            ));
        }
    }
    Ok(Some(range))
}

/// A chunk's body, held to what its headers promise: exactly the `Content-Range`
/// length when one is given (a chunked body has no `Content-Length` to check first),
/// and at least one byte for a chunked PATCH (pingora reads a chunked body whose first
/// size line is empty as an empty body; no client sends an empty chunked PATCH).
struct PromisedChunk<'a> {
    body: &'a mut dyn ByteSource,
    length: Option<u64>,
    not_empty: bool,
    received: u64,
}

impl PromisedChunk<'_> {
    fn broken(&self, what: String) -> StoreError {
        StoreError::ClientBody(format!(
            "{what}; nothing after byte {} of this chunk was kept",
            self.received
        ))
    }
}

#[async_trait]
impl ByteSource for PromisedChunk<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        let chunk = self.body.next_chunk().await?;
        let received = self.received + chunk.as_ref().map_or(0, |c| c.len() as u64);
        match (chunk, self.length) {
            (Some(_), Some(length)) if received > length => Err(self.broken(format!(
                "the body is longer than the {length} bytes its Content-Range announced"
            ))),
            (None, Some(length)) if received != length => Err(self.broken(format!(
                "the body ended after {received} of the {length} bytes its Content-Range announced"
            ))),
            (None, None) if self.not_empty && received == 0 => Err(self.broken(
                "the chunked body carried no data (is its first chunk-size line empty?)".into(),
            )),
            (chunk, _) => {
                self.received = received;
                Ok(chunk)
            }
        }
    }
}

/// Appends one chunk: where its `Content-Range` says (if it does), no more and no
/// less than that range.
async fn append_chunk(
    registry: &Registry,
    req: &Request,
    name: &RepoName,
    id: &UploadId,
    range: Option<ByteRange>,
    body: &mut dyn ByteSource,
) -> Result<u64, ApiError> {
    let mut chunk = PromisedChunk {
        body,
        length: range.map(|r| r.length()),
        not_empty: req.method == http::Method::PATCH && req.header("transfer-encoding").is_some(),
        received: 0,
    };
    Ok(registry
        .append_upload(name, id, range.map(|r| r.start), &mut chunk)
        .await?)
}

/// Spec: "PATCH /v2/<name>/blobs/uploads/<id>" appends a chunk; a chunk that does not
/// start where the upload ends is refused with 416 and the current `Range`.
pub async fn patch(
    registry: &Registry,
    req: &Request,
    name: &RepoName,
    id: &UploadId,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    let range = match chunk_range(req) {
        Ok(range) => range,
        Err(e) if e.code == ErrorCode::RangeInvalid => {
            let size = registry.upload_size(name, id).await?;
            return Err(e.with_header("Range", upload_range(size)));
        }
        Err(e) => return Err(e),
    };
    let size = append_chunk(registry, req, name, id, range, body).await?;
    Ok(session_response(202, name, id, size))
}

/// Spec: "PUT /v2/<name>/blobs/uploads/<id>?digest=<digest>" closes the session, with
/// an optional last chunk in the body; 201 once the digest is verified.
pub async fn finish(
    registry: &Registry,
    req: &Request,
    name: &RepoName,
    id: &UploadId,
    body: &mut dyn ByteSource,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(req.query.as_deref());
    let digest = digest_param(&pairs, "digest")?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the closing PUT needs ?digest=<algorithm>:<hex>",
        )
    })?;
    // Docker and podman close with an empty body; only a final chunk needs appending.
    let empty_body = req.header("content-length") == Some("0");
    if !empty_body {
        let range = chunk_range(req)?;
        append_chunk(registry, req, name, id, range, body).await?;
    }
    registry
        .finish_upload(name, id, &digest, Origin::Pushed)
        .await?;
    Ok(created(name, &digest))
}

/// Spec: "DELETE /v2/<name>/blobs/uploads/<id>" cancels the session: 204.
pub async fn cancel(
    registry: &Registry,
    name: &RepoName,
    id: &UploadId,
) -> Result<Response, ApiError> {
    registry.cancel_upload(name, id).await?;
    Ok(Response::new(204))
}
