//! `GET /v2/<name>/tags/list`: the repository's tags, sorted, paginated with `n`/`last`.

use super::pagination::{listing, page_request};
use super::{ApiError, Request, Response};
use crate::mirror::{Mirror, Target};
use crate::oci::RepoName;

/// For a mirrored repository: the upstream's tags (cached, served stale when the
/// upstream is down); the `name` is the one the client asked for.
pub async fn list(
    mirror: &Mirror,
    req: &Request,
    name: &RepoName,
    target: &Target,
) -> Result<Response, ApiError> {
    let page_req = page_request(req)?;
    let page = mirror
        .tags(target, page_req.last.as_deref(), page_req.limit)
        .await?;
    let next_after = page.more.then(|| page.items.last().cloned()).flatten();
    let body = serde_json::json!({ "name": name.as_str(), "tags": page.items });
    Ok(listing(req, next_after.as_deref(), page_req.limit, body))
}
