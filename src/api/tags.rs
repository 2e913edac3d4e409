//! `GET /v2/<name>/tags/list`: the repository's tags, sorted, paginated with `n`/`last`.

use super::pagination::{listing, page_request};
use super::{ApiError, Request, Response};
use crate::oci::RepoName;
use crate::store::Registry;

pub async fn list(
    registry: &Registry,
    req: &Request,
    name: &RepoName,
) -> Result<Response, ApiError> {
    let page_req = page_request(req)?;
    let page = registry
        .tags(name, page_req.last.as_deref(), page_req.limit)
        .await?;
    let next_after = page.more.then(|| page.items.last().cloned()).flatten();
    let body = serde_json::json!({ "name": name.as_str(), "tags": page.items });
    Ok(listing(req, next_after.as_deref(), page_req.limit, body))
}
