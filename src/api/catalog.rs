//! `GET /v2/_catalog`: every repository the caller may pull, sorted, paginated with `n`/`last`.

use super::pagination::{listing, page_request};
use super::{ApiError, Caller, Request, Response};
use crate::auth::access::Action;
use crate::oci::RepoName;
use crate::store::Registry;

/// Lists only repositories the caller may pull, so private names stay private; a page
/// can then hold fewer than `n` entries, which the spec allows.
pub async fn list(
    registry: &Registry,
    caller: &Caller<'_>,
    req: &Request,
) -> Result<Response, ApiError> {
    let page_req = page_request(req)?;
    let mut page = registry
        .catalog(page_req.last.as_deref(), page_req.limit)
        .await?;
    // The next page starts after the last name read, whether or not it is shown.
    let next_after = page.more.then(|| page.items.last().cloned()).flatten();
    page.items
        .retain(|name| RepoName::parse(name).is_ok_and(|n| caller.may(&n, Action::Pull)));
    let body = serde_json::json!({ "repositories": page.items });
    Ok(listing(req, next_after.as_deref(), page_req.limit, body))
}
