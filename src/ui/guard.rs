//! What keeps other sites out: POSTs must come from this site's own pages, redirects
//! after sign-in stay on this site, and every page tells the browser to run only this
//! site's scripts and never to show the page inside another site's frame.
//!
//! The per-session CSRF token (`session.rs`) is the main defence for forms; the origin
//! check here refuses cross-site POSTs even before a session is looked at (the sign-in
//! form has no session yet).

use crate::api::{Request, Response};

/// Every UI response: scripts, styles and images only from this site (no inline
/// script or style), forms only to it, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn with_security_headers(response: Response) -> Response {
    response
        .header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .header("X-Content-Type-Options", "nosniff")
        .header("Referrer-Policy", "same-origin")
        .header("X-Frame-Options", "DENY")
}

/// Whether a POST came from one of this site's pages. Browsers say where a request
/// started in `Sec-Fetch-Site` and `Origin`; either, when present, must name this
/// site. Requests without both (older browsers, scripts) pass here and meet the CSRF
/// token. `Origin` is compared with `Host` by authority only: behind a proxy that ends
/// TLS the scheme seen here differs from the browser's.
pub fn same_origin(req: &Request) -> bool {
    if let Some(site) = req.header("sec-fetch-site") {
        // "none": the user started it (a bookmark, the address bar).
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match req.header("origin") {
        None => true,
        Some(origin) => {
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            authority.is_some() && authority == req.header("host")
        }
    }
}

/// Where to go after signing in: only a path of this UI (`/ui...`), never another
/// site, nor one a browser could read as another site (`//host`, `/\host`).
pub fn safe_next(next: &str) -> Option<&str> {
    let in_ui = next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?");
    let plain = !next.contains('\\') && !next.contains("//") && !next.chars().any(char::is_control);
    (in_ui && plain && next.len() <= 2048).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: &[(&'static str, &str)]) -> Request {
        let mut map = http::HeaderMap::new();
        map.insert("host", "registry.example:5000".parse().unwrap());
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        Request {
            method: http::Method::POST,
            path: "/ui/tokens".into(),
            query: None,
            headers: map,
            secure: false,
        }
    }

    #[test]
    fn posts_from_other_sites_are_refused() {
        assert!(same_origin(&post(&[])));
        assert!(same_origin(&post(&[(
            "origin",
            "http://registry.example:5000"
        )])));
        assert!(same_origin(&post(&[(
            "origin",
            "https://registry.example:5000"
        )])));
        assert!(same_origin(&post(&[("sec-fetch-site", "same-origin")])));
        assert!(same_origin(&post(&[("sec-fetch-site", "none")])));
        assert!(!same_origin(&post(&[("origin", "http://evil.example")])));
        assert!(!same_origin(&post(&[(
            "origin",
            "http://registry.example"
        )])));
        assert!(!same_origin(&post(&[("origin", "null")])));
        assert!(!same_origin(&post(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&post(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&post(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://evil.example")
        ])));
    }

    #[test]
    fn only_paths_of_the_ui_are_followed_after_sign_in() {
        for good in [
            "/ui",
            "/ui/",
            "/ui/teams/web",
            "/ui/activity?actor=alice&from=2024-01-01",
        ] {
            assert_eq!(safe_next(good), Some(good), "{good}");
        }
        for bad in [
            "",
            "https://evil.example/ui/",
            "//evil.example/ui/",
            "/\\evil.example",
            "/ui\\..\\x",
            "/ui//evil.example",
            "/uix",
            "/v2/",
            "ui/teams",
            "/ui/\nx",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
        assert_eq!(safe_next(&format!("/ui/{}", "a".repeat(3000))), None);
    }
}
