//! `GET /v2/<name>/referrers/<digest>[?artifactType=]`: manifests whose `subject` is
//! `<digest>`, as an OCI image index. An unknown subject has no referrers, not a 404.

use super::route::{query_pairs, query_value};
use super::{ApiError, Request, Response};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, RepoName};
use crate::store::Registry;

pub async fn list(
    registry: &Registry,
    req: &Request,
    name: &RepoName,
    subject: &Digest,
) -> Result<Response, ApiError> {
    let mut manifests = registry.referrers(name, subject).await?;
    let pairs = query_pairs(req.query.as_deref());
    let filter = query_value(&pairs, "artifactType");
    if let Some(wanted) = filter {
        manifests.retain(|d| d.artifact_type.as_deref() == Some(wanted));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let response = Response::new(200).json(&index, OCI_INDEX, false);
    Ok(match filter {
        Some(_) => response.header("OCI-Filters-Applied", "artifactType"),
        None => response,
    })
}
