//! `n` / `last` query parameters and the `Link` header of paginated listings.

use super::errors::{ApiError, ErrorCode};
use super::route::{query_pairs, query_value};
use super::{Request, Response};

/// Results per page when the client sends no `n`.
pub const DEFAULT_PAGE: usize = 1000;
/// The most results one page may hold, whatever `n` asks (bounds response size).
pub const MAX_PAGE: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub last: Option<String>,
    pub limit: usize,
    /// `n` was given, so the `Link` header repeats it.
    pub explicit_n: bool,
}

pub fn page_request(req: &Request) -> Result<PageRequest, ApiError> {
    let pairs = query_pairs(req.query.as_deref());
    let last = query_value(&pairs, "last").map(str::to_string);
    let (limit, explicit_n) = match query_value(&pairs, "n") {
        None => (DEFAULT_PAGE, false),
        Some(n) => {
            let n: usize = n.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::PaginationNumberInvalid,
                    format!("n={n:?} must be a non-negative integer"),
                )
            })?;
            (n.min(MAX_PAGE), true)
        }
    };
    Ok(PageRequest {
        last,
        limit,
        explicit_n,
    })
}

/// `Link: <path?n=N&last=L>; rel="next"` for the page after `last_item`; a request's
/// `ns` goes along, so the next page comes from the same registry.
pub fn next_link(path: &str, limit: usize, last_item: &str, ns: Option<&str>) -> String {
    let encode = |s| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC);
    let ns = ns.map_or_else(String::new, |ns| format!("&ns={}", encode(ns)));
    format!(
        "<{path}?n={limit}&last={}{ns}>; rel=\"next\"",
        encode(last_item)
    )
}

/// A listing response: `body` as JSON, plus a `Link` to the page after `next_after`.
pub fn listing(
    req: &Request,
    next_after: Option<&str>,
    limit: usize,
    body: serde_json::Value,
) -> Response {
    let response = Response::new(200).json(&body, "application/json", false);
    let pairs = query_pairs(req.query.as_deref());
    let ns = query_value(&pairs, "ns");
    match next_after {
        Some(last) => response.header("Link", next_link(&req.path, limit, last, ns)),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: Option<&str>) -> Request {
        Request {
            method: http::Method::GET,
            path: "/v2/_catalog".into(),
            query: query.map(str::to_string),
            headers: http::HeaderMap::new(),
            secure: false,
        }
    }

    #[test]
    fn defaults_and_limits() {
        let p = page_request(&req(None)).unwrap();
        assert_eq!(
            p,
            PageRequest {
                last: None,
                limit: DEFAULT_PAGE,
                explicit_n: false
            }
        );
        let p = page_request(&req(Some("n=5&last=a%2Fb"))).unwrap();
        assert_eq!(
            p,
            PageRequest {
                last: Some("a/b".into()),
                limit: 5,
                explicit_n: true
            }
        );
        assert_eq!(
            page_request(&req(Some("n=99999999"))).unwrap().limit,
            MAX_PAGE
        );
        assert_eq!(page_request(&req(Some("n=0"))).unwrap().limit, 0);
        for bad in ["n=abc", "n=-1", "n="] {
            let err = page_request(&req(Some(bad))).unwrap_err();
            assert_eq!(err.code, ErrorCode::PaginationNumberInvalid, "{bad}");
        }
    }

    #[test]
    fn link_encodes_last() {
        assert_eq!(
            next_link("/v2/_catalog", 2, "a/b", None),
            "</v2/_catalog?n=2&last=a%2Fb>; rel=\"next\""
        );
        assert_eq!(
            next_link("/v2/library/x/tags/list", 1, "v1", Some("docker.io")),
            "</v2/library/x/tags/list?n=1&last=v1&ns=docker%2Eio>; rel=\"next\""
        );
    }
}
