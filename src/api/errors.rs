//! The OCI error-code table and the only producer of the error JSON envelope.
//!
//! Every failure a handler returns becomes an [`ApiError`]: a code from the table below
//! (which fixes the HTTP status), a detail sentence that says what was expected, and any
//! headers the client needs (for example `Range` on a 416).

use super::response::{Body, Response};
use crate::mirror::upstream::UpstreamError;
use crate::mirror::{MirrorError, Missing};
use crate::store::{is_disk_full, StoreError};
use bytes::Bytes;

/// Error codes of the OCI distribution spec plus the few distribution added that
/// clients know. `status` is decided here once, from the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    /// A body over a configured limit (manifest over 4 MiB): SIZE_INVALID with 413.
    TooLarge,
    Unsupported,
    /// No endpoint at this path: UNSUPPORTED with 404, as no OCI code covers it.
    NoSuchEndpoint,
    RangeInvalid,
    TagInvalid,
    PaginationNumberInvalid,
    /// A query parameter outside the distribution API (the admin endpoint's) is
    /// malformed: UNSUPPORTED with 400.
    ParameterInvalid,
    Unauthorized,
    Denied,
    TooManyRequests,
    /// The upstream of a mirrored repository is unreachable, down or offline mode is
    /// on, and the cache cannot answer: UNAVAILABLE with 503 (distribution's code).
    UpstreamUnavailable,
    /// The upstream did not answer in time: UNAVAILABLE with 504.
    UpstreamTimeout,
    /// The upstream answered with an error or with content that failed verification:
    /// UNKNOWN with 502.
    UpstreamFailed,
    /// The store is full or at its reserve: UNKNOWN with 507 (RFC 4918), which says so.
    StorageFull,
    /// A fault of ours (disk, database): UNKNOWN with 500. Never used for bad input.
    Internal,
    /// The REST API's (`/api/v1/`) own: a user, team, namespace, robot, token or
    /// repository that does not exist (or that the caller may not see).
    NotFound,
    /// The REST API's: a request body or parameter that is not what the endpoint takes.
    RequestInvalid,
    /// The REST API's: the change conflicts with what exists (a name taken, the last
    /// admin or owner, accounts switched off).
    Conflict,
}

impl ErrorCode {
    pub fn code(self) -> &'static str {
        self.entry().0
    }

    pub fn status(self) -> u16 {
        self.entry().1
    }

    pub fn message(self) -> &'static str {
        self.entry().2
    }

    /// (code, HTTP status, message): the table.
    fn entry(self) -> (&'static str, u16, &'static str) {
        use ErrorCode::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", 404, "blob unknown to registry"),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", 400, "blob upload invalid"),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                404,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                400,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                400,
                "manifest references a manifest or blob unknown to registry",
            ),
            ManifestInvalid => ("MANIFEST_INVALID", 400, "manifest invalid"),
            ManifestUnknown => ("MANIFEST_UNKNOWN", 404, "manifest unknown to registry"),
            NameInvalid => ("NAME_INVALID", 400, "invalid repository name"),
            NameUnknown => ("NAME_UNKNOWN", 404, "repository name not known to registry"),
            SizeInvalid => (
                "SIZE_INVALID",
                400,
                "provided length did not match content length",
            ),
            TooLarge => ("SIZE_INVALID", 413, "request body too large"),
            Unsupported => ("UNSUPPORTED", 405, "the operation is unsupported"),
            NoSuchEndpoint => ("UNSUPPORTED", 404, "no such endpoint"),
            RangeInvalid => ("RANGE_INVALID", 416, "invalid content range"),
            TagInvalid => ("TAG_INVALID", 400, "manifest tag did not match URI"),
            PaginationNumberInvalid => (
                "PAGINATION_NUMBER_INVALID",
                400,
                "invalid number of results requested",
            ),
            ParameterInvalid => ("UNSUPPORTED", 400, "invalid query parameter"),
            Unauthorized => ("UNAUTHORIZED", 401, "authentication required"),
            Denied => ("DENIED", 403, "requested access to the resource is denied"),
            TooManyRequests => ("TOOMANYREQUESTS", 429, "too many requests"),
            UpstreamUnavailable => ("UNAVAILABLE", 503, "upstream registry unavailable"),
            UpstreamTimeout => ("UNAVAILABLE", 504, "upstream registry timed out"),
            UpstreamFailed => ("UNKNOWN", 502, "upstream registry failed"),
            StorageFull => ("UNKNOWN", 507, "the registry's storage is full"),
            Internal => ("UNKNOWN", 500, "unknown error"),
            NotFound => ("NOT_FOUND", 404, "no such resource"),
            RequestInvalid => ("INVALID", 400, "invalid request"),
            Conflict => ("CONFLICT", 409, "conflicts with the current state"),
        }
    }
}

/// A failed request: what went wrong, a sentence for the operator, extra headers.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The JSON envelope `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "errors": [{
                "code": self.code.code(),
                "message": self.code.message(),
                "detail": self.detail,
            }]
        });
        Bytes::from(body.to_string())
    }

    pub fn into_response(self) -> Response {
        let mut response = Response::new(self.code.status())
            .header("Content-Type", "application/json")
            .body(Body::Bytes(self.body()));
        for (name, value) in self.headers {
            response = response.header(name, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        store_error(&err)
    }
}

fn store_error(err: &StoreError) -> ApiError {
    {
        use ErrorCode::*;
        let code = match err {
            StoreError::StorageFull { .. } => StorageFull,
            StoreError::Io { source, .. } if is_disk_full(source) => StorageFull,
            StoreError::BlobUnknown(_) => BlobUnknown,
            StoreError::ManifestUnknown(_) => ManifestUnknown,
            StoreError::NameUnknown(_) => NameUnknown,
            StoreError::UploadUnknown => BlobUploadUnknown,
            StoreError::DigestMismatch { .. } => DigestInvalid,
            StoreError::UploadOffset { size, .. } => {
                let detail = err.to_string();
                return ApiError::new(RangeInvalid, detail)
                    .with_header("Range", upload_range(*size));
            }
            StoreError::ManifestInvalid(_) => ManifestInvalid,
            StoreError::ManifestBlobUnknown(_) => ManifestBlobUnknown,
            StoreError::TooLarge { .. } => TooLarge,
            StoreError::ClientBody(_) => BlobUploadInvalid,
            StoreError::Io { .. } | StoreError::Meta(_) | StoreError::InUse(_) => {
                tracing::error!(error = %err, "storage failure");
                Internal
            }
        };
        if code == StorageFull {
            tracing::warn!(error = %err, "write refused: storage full");
        }
        ApiError::new(code, err.to_string())
    }
}

impl From<MirrorError> for ApiError {
    fn from(err: MirrorError) -> ApiError {
        mirror_error(&err)
    }
}

fn mirror_error(err: &MirrorError) -> ApiError {
    use ErrorCode::*;
    {
        let upstream = match err {
            MirrorError::Store(e) => return store_error(e),
            MirrorError::Shared(e) => return mirror_error(e),
            MirrorError::NotFound { missing, detail } => {
                let code = match missing {
                    Missing::Manifest => ManifestUnknown,
                    Missing::Blob => BlobUnknown,
                    Missing::Repository => NameUnknown,
                };
                return ApiError::new(code, detail.clone());
            }
            MirrorError::Upstream(e) => e,
        };
        let detail = format!("not in the cache, and {upstream}");
        let code = match upstream {
            UpstreamError::Offline { .. }
            | UpstreamError::Busy { .. }
            | UpstreamError::Down { .. }
            | UpstreamError::Unreachable { .. } => UpstreamUnavailable,
            UpstreamError::Timeout { .. } => UpstreamTimeout,
            UpstreamError::RateLimited { retry_after, .. } => {
                return ApiError::new(TooManyRequests, detail)
                    .with_header("Retry-After", retry_after.as_secs().max(1).to_string());
            }
            UpstreamError::Status { .. } | UpstreamError::Invalid { .. } => UpstreamFailed,
        };
        ApiError::new(code, detail)
    }
}

/// The `Range` header of an upload session holding `size` bytes: `0-<last byte>`.
/// An empty session reports `0-0`, as distribution and clients expect.
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    #[test]
    fn table_gives_code_and_status() {
        assert_eq!(ErrorCode::BlobUnknown.code(), "BLOB_UNKNOWN");
        assert_eq!(ErrorCode::BlobUnknown.status(), 404);
        assert_eq!(ErrorCode::TooLarge.status(), 413);
        assert_eq!(ErrorCode::RangeInvalid.status(), 416);
        assert_eq!(ErrorCode::Unsupported.status(), 405);
        assert_eq!(ErrorCode::Internal.status(), 500);
    }

    #[test]
    fn envelope_is_oci_json() {
        let body = ApiError::new(ErrorCode::NameInvalid, "bad name").body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["detail"], "bad name");
        assert!(v["errors"][0]["message"].is_string());
    }

    #[test]
    fn store_errors_map_to_client_codes() {
        let d = Digest::sha256_of(b"x");
        let mismatch = StoreError::DigestMismatch {
            expected: d.clone(),
            actual: d,
        };
        assert_eq!(ApiError::from(mismatch).code, ErrorCode::DigestInvalid);
        let offset = ApiError::from(StoreError::UploadOffset {
            size: 10,
            requested: 3,
        });
        assert_eq!(offset.code, ErrorCode::RangeInvalid);
        assert_eq!(offset.headers, vec![("Range", "0-9".to_string())]);
        assert_eq!(
            ApiError::from(StoreError::UploadUnknown).code,
            ErrorCode::BlobUploadUnknown
        );
    }

    #[test]
    fn upload_range_of_empty_session() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(100), "0-99");
    }
}
