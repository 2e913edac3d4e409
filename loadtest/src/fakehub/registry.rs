//! The normal answers: Docker Hub's registry API and token realm, and the CDN.

use super::auth::{self, Denial};
use super::content::{digest_hex, paginate, Layout};
use super::http::{parse_range, query_pairs, Body, RangeChoice, Request, Response};
use super::routes::{cdn_route, RegistryRoute};
use super::{AuthMode, Hub, RATE_LIMIT};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a CDN redirect claims to stay valid (it is not checked).
const REDIRECT_VALIDITY: Duration = Duration::from_secs(20 * 60);
/// The window Docker Hub's rate-limit headers name (six hours).
const RATE_WINDOW: &str = "w=21600";

/// An OCI error response: `{"errors":[{"code":..,"message":..}]}`.
pub fn oci_error(status: u16, code: &str, message: &str) -> Response {
    Response::new(status).json(&json!({
        "errors": [{"code": code, "message": message}]
    }))
}

/// The answer of a `status` fault.
pub fn injected_status(status: u16) -> Response {
    let code = match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    oci_error(status, code, &format!("injected fault: status {status}"))
}

fn with_rate_headers(response: Response, remaining: u32) -> Response {
    response
        .header("ratelimit-limit", format!("{RATE_LIMIT};{RATE_WINDOW}"))
        .header("ratelimit-remaining", format!("{remaining};{RATE_WINDOW}"))
}

/// The answer of a `rate_limit` fault, as Docker Hub sends it when the limit is spent.
pub fn rate_limited(retry_after_secs: u64) -> Response {
    let response = oci_error(
        429,
        "TOOMANYREQUESTS",
        "You have reached your unauthenticated pull rate limit (injected fault)",
    )
    .header("Retry-After", retry_after_secs.to_string());
    with_rate_headers(response, 0)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn method_not_allowed(allowed: &str) -> Response {
    oci_error(405, "UNSUPPORTED", "this fake hub only serves pulls").header("Allow", allowed)
}

fn is_read(request: &Request) -> bool {
    matches!(request.method.as_str(), "GET" | "HEAD")
}

impl Hub {
    pub(super) fn respond_registry(&self, request: &Request, route: &RegistryRoute) -> Response {
        match route {
            RegistryRoute::Token => self.token(request),
            RegistryRoute::Unknown | RegistryRoute::Control(_) => {
                Response::new(404).text("404 page not found")
            }
            _ => self
                .registry_api(request, route)
                .header("Docker-Distribution-API-Version", "registry/2.0"),
        }
    }

    /// The `/v2/` endpoints, behind the authentication check.
    fn registry_api(&self, request: &Request, route: &RegistryRoute) -> Response {
        if !is_read(request) {
            return method_not_allowed("GET, HEAD");
        }
        let layout = match self.check_access(request, route.repository()) {
            Ok(layout) => layout,
            Err(refusal) => return refusal,
        };
        match (route, layout) {
            (RegistryRoute::Manifest { reference, .. }, Some(layout)) => {
                self.manifest(&layout, reference, request.method == "GET")
            }
            (RegistryRoute::Blob { digest, .. }, Some(layout)) => {
                self.blob(&layout, digest, request.method == "GET")
            }
            (RegistryRoute::Tags { name }, Some(layout)) => tags(&layout, name, request.query()),
            _ => Response::new(200).json(&json!({})),
        }
    }

    /// Authentication and the repository's existence: the layout of `repository`, or
    /// the refusal Docker Hub would send.
    fn check_access(
        &self,
        request: &Request,
        repository: Option<&str>,
    ) -> Result<Option<Layout>, Response> {
        let layout = repository.map(|name| self.content.repository(name));
        match self.auth.mode {
            AuthMode::None => match layout {
                Some(None) => Err(oci_error(
                    404,
                    "NAME_UNKNOWN",
                    "repository name not known to registry",
                )),
                other => Ok(other.flatten()),
            },
            AuthMode::Token => {
                let authorized = self.tokens.authorize(
                    request.header("authorization"),
                    repository,
                    Instant::now(),
                );
                match (authorized, layout) {
                    (Err(denial), _) => Err(self.unauthorized(repository, denial)),
                    // Docker Hub does not reveal whether a repository exists.
                    (Ok(()), Some(None)) => {
                        Err(self.unauthorized(repository, Denial::InsufficientScope))
                    }
                    (Ok(()), layout) => Ok(layout.flatten()),
                }
            }
        }
    }

    fn unauthorized(&self, repository: Option<&str>, denial: Denial) -> Response {
        let realm = format!("http://{}/token", self.registry_addr);
        let detail = repository.map(
            |name| json!([{"Type": "repository", "Class": "", "Name": name, "Action": "pull"}]),
        );
        Response::new(401)
            .json(&json!({
                "errors": [{
                    "code": "UNAUTHORIZED",
                    "message": "authentication required",
                    "detail": detail,
                }]
            }))
            .header(
                "WWW-Authenticate",
                auth::challenge(&realm, &self.auth.service, repository, denial),
            )
    }

    fn manifest(&self, layout: &Layout, reference: &str, is_get: bool) -> Response {
        let manifest = match layout.manifest(reference) {
            Ok(Some(manifest)) => manifest,
            Ok(None) => {
                let remaining = self.rate_remaining.load(Ordering::Relaxed);
                let unknown = oci_error(
                    404,
                    "MANIFEST_UNKNOWN",
                    &format!("manifest unknown: {reference}"),
                );
                return with_rate_headers(unknown, remaining);
            }
            Err(e) => return oci_error(500, "UNKNOWN", &e),
        };
        // Docker Hub counts manifest GETs only; HEAD is free.
        let remaining = if is_get {
            let before = self
                .rate_remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    Some(r.saturating_sub(1))
                })
                .unwrap_or(0);
            before.saturating_sub(1)
        } else {
            self.rate_remaining.load(Ordering::Relaxed)
        };
        let response = Response::new(200)
            .bytes(&manifest.media_type, manifest.bytes)
            .header("Docker-Content-Digest", manifest.digest.as_str())
            .header("ETag", format!("\"{}\"", manifest.digest));
        with_rate_headers(response, remaining)
    }

    fn blob(&self, layout: &Layout, digest: &str, is_get: bool) -> Response {
        let Some(hex) = digest_hex(digest) else {
            return oci_error(400, "DIGEST_INVALID", &format!("invalid digest {digest:?}"));
        };
        let Some(blob) = layout.blob(digest) else {
            return oci_error(404, "BLOB_UNKNOWN", &format!("blob unknown: {digest}"));
        };
        if is_get {
            let expires = unix_now() + REDIRECT_VALIDITY.as_secs();
            return Response::new(307).header(
                "Location",
                format!(
                    "http://{}/blobs/sha256/{hex}?expires={expires}",
                    self.cdn_addr
                ),
            );
        }
        let mut response = Response::new(200)
            .header("Content-Type", "application/octet-stream")
            .header("Docker-Content-Digest", digest);
        // A HEAD answer: the length is announced, the file is never read.
        response.body = Body::File {
            path: blob.path,
            offset: 0,
            len: blob.len,
        };
        response
    }

    /// The token realm: `GET /token?service=..&scope=..`.
    fn token(&self, request: &Request) -> Response {
        if request.method != "GET" {
            return method_not_allowed("GET");
        }
        if let Some((user, password)) = &self.auth.credentials {
            let given = request.header("authorization").and_then(auth::parse_basic);
            if given.as_ref() != Some(&(user.clone(), password.clone())) {
                return Response::new(401)
                    .json(&json!({"details": "incorrect username or password"}))
                    .header("WWW-Authenticate", "Basic realm=\"fake-hub\"");
            }
        }
        let params = query_pairs(request.query());
        let service = params.iter().find(|(k, _)| k == "service");
        if let Some((_, service)) = service.filter(|(_, s)| *s != self.auth.service) {
            return Response::new(400).json(&json!({
                "details": format!("unknown service {service:?}; this realm serves {:?}", self.auth.service)
            }));
        }
        let scopes = auth::parse_scopes(
            params
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        );
        let scopes = match scopes {
            Ok(scopes) => scopes,
            Err(e) => return Response::new(400).json(&json!({"details": e})),
        };
        // Like auth.docker.io: pull is granted on repositories that exist, nothing else.
        let granted = auth::pull_repositories(&scopes)
            .into_iter()
            .filter(|name| self.content.repository(name).is_some())
            .collect();
        let expires_secs = self.auth.token_expires_secs;
        let lifetime = match expires_secs {
            0 => auth::IMPLIED_LIFETIME,
            secs => Duration::from_secs(secs),
        };
        let token = self.tokens.issue(granted, lifetime, Instant::now());
        let mut body = json!({
            "token": token,
            "access_token": token,
            "issued_at": auth::rfc3339(unix_now()),
        });
        if expires_secs > 0 {
            body["expires_in"] = json!(expires_secs);
        }
        Response::new(200).json(&body)
    }

    /// The CDN: blobs by digest, with single ranges; foreign credentials refused.
    pub(super) fn respond_cdn(&self, request: &Request) -> Response {
        if request.header("authorization").is_some() {
            return Response::new(400).text(
                "this CDN refuses requests with an Authorization header \
                 (credentials meant for the registry must not follow a redirect to another host)",
            );
        }
        if !is_read(request) {
            return Response::new(405)
                .text("the CDN serves GET and HEAD")
                .header("Allow", "GET, HEAD");
        }
        let Some(blob) = cdn_route(request.path()).and_then(|hex| self.content.find_blob(hex))
        else {
            return Response::new(404).text("no such blob");
        };
        let len = blob.len;
        let (status, offset, part_len) = match parse_range(request.header("range"), len) {
            RangeChoice::Full => (200, 0, len),
            RangeChoice::Partial { start, end } => (206, start, end - start + 1),
            RangeChoice::Unsatisfiable => {
                return Response::new(416)
                    .text("range not satisfiable")
                    .header("Content-Range", format!("bytes */{len}"));
            }
        };
        let mut response = Response::new(status)
            .header("Content-Type", "application/octet-stream")
            .header("Accept-Ranges", "bytes");
        if status == 206 {
            response = response.header(
                "Content-Range",
                format!("bytes {offset}-{}/{len}", offset + part_len - 1),
            );
        }
        response.body = Body::File {
            path: blob.path,
            offset,
            len: part_len,
        };
        response
    }
}

/// `GET /v2/<name>/tags/list?n=..&last=..`
fn tags(layout: &Layout, name: &str, query: &str) -> Response {
    let all = match layout.tags() {
        Ok(all) => all,
        Err(e) => return oci_error(500, "UNKNOWN", &e),
    };
    let params = query_pairs(query);
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let n = match param("n").map(str::parse::<usize>).transpose() {
        Ok(n) => n,
        Err(_) => {
            return oci_error(
                400,
                "PAGINATION_NUMBER_INVALID",
                "n must be a non-negative whole number",
            )
        }
    };
    let (page, more) = paginate(&all, n, param("last"));
    let mut response = Response::new(200).json(&json!({"name": name, "tags": page}));
    // Tags never need percent-encoding, so the last one goes into the link as it is.
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        response = response.header(
            "Link",
            format!("</v2/{name}/tags/list?last={last}&n={n}>; rel=\"next\""),
        );
    }
    response
}
