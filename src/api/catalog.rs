//! `GET /v2/_catalog`: every repository the caller may pull, sorted, paginated with `n`/`last`.

use super::pagination::{listing, page_request};
use super::{ApiError, Caller, Request, Response};
use crate::oci::RepoName;
use crate::store::{Registry, StoreError};

/// Names read from the metadata store per step while a page is filled.
const SCAN_BATCH: usize = 1000;

/// Up to `limit` names after `after` that start with `prefix` and pass `visible`, and
/// whether more follow. With a prefix the scan starts at it and stops past it, since
/// names are sorted.
pub(crate) async fn visible_page(
    registry: &Registry,
    after: Option<String>,
    prefix: &str,
    limit: usize,
    visible: impl Fn(&str) -> bool,
) -> Result<(Vec<String>, bool), StoreError> {
    let mut after = match after {
        Some(last) if last.as_str() >= prefix => Some(last),
        _ if prefix.is_empty() => None,
        _ => Some(prefix.to_string()),
    };
    let mut shown = Vec::new();
    loop {
        let page = registry.catalog(after.as_deref(), SCAN_BATCH).await?;
        for name in page.items {
            if !name.starts_with(prefix) {
                return Ok((shown, false));
            }
            if visible(&name) {
                if shown.len() == limit {
                    return Ok((shown, true));
                }
                shown.push(name.clone());
            }
            after = Some(name);
        }
        if !page.more {
            return Ok((shown, false));
        }
    }
}

/// Lists only repositories the caller may pull, so private names stay private. Pages
/// are cut after filtering: a page holds `n` visible names, and its `Link` names the
/// last of them, never a repository the caller may not see.
pub async fn list(
    registry: &Registry,
    caller: &Caller<'_>,
    req: &Request,
) -> Result<Response, ApiError> {
    let page_req = page_request(req)?;
    let visible = |name: &str| RepoName::parse(name).is_ok_and(|n| caller.may_list(&n));
    let (shown, more) = match page_req.limit {
        0 => (Vec::new(), false),
        limit => visible_page(registry, page_req.last.clone(), "", limit, visible).await?,
    };
    let next_after = more.then(|| shown.last().cloned()).flatten();
    let body = serde_json::json!({ "repositories": shown });
    Ok(listing(req, next_after.as_deref(), page_req.limit, body))
}
