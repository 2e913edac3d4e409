//! `GET /v2/_catalog`: every repository, sorted, paginated with `n`/`last`.

use super::pagination::{listing, page_request};
use super::{ApiError, Request, Response};
use crate::store::Registry;

pub async fn list(registry: &Registry, req: &Request) -> Result<Response, ApiError> {
    let page_req = page_request(req)?;
    let page = registry.catalog(page_req.last.as_deref(), page_req.limit).await?;
    let body = serde_json::json!({ "repositories": page.items });
    Ok(listing(req, &page, page_req.limit, body))
}
