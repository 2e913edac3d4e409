//! One upstream registry: HTTP client (reqwest on rustls), the token dance, redirects,
//! timeouts, rate limits and health.
//!
//! - Tokens are kept per scope and fetched before they expire. Once an upstream has
//!   shown its challenge, requests carry a token from the start, not after a 401.
//! - Redirects (Docker Hub sends blobs to a CDN with a 307) are followed here, so that
//!   `Authorization` is dropped whenever the redirect leaves the upstream's origin.
//! - Connect, response-head and body-idle timeouts bound every call; after repeated
//!   failures the upstream is marked down and a background probe brings it back.

use super::policy::{self, Challenge, Health};
use crate::config::{Credentials, UpstreamConfig};
use crate::metrics;
use crate::oci::RepoName;
use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use reqwest::Url;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_REDIRECTS: usize = 5;
/// Tokens kept per upstream; past this the table starts over (each is refetched once).
const MAX_TOKENS: usize = 10_000;
/// A probe of a down upstream gets this long to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an upstream could not give an answer. Statuses such as 404 or 401 are
/// answers and come back as responses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("mirror.offline is set, so upstream {upstream} is not contacted")]
    Offline { upstream: String },
    #[error(
        "upstream {upstream} is marked down after repeated failures (probing it in the background)"
    )]
    Down { upstream: String },
    #[error("upstream {upstream} is unreachable: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {secs} s")]
    Timeout { upstream: String, secs: u64 },
    #[error("upstream {upstream} is rate-limiting this registry; retry after {} s", retry_after.as_secs())]
    RateLimited {
        upstream: String,
        retry_after: Duration,
    },
    #[error("too many blob downloads from upstream {upstream} are in progress; retry shortly")]
    Busy { upstream: String },
    #[error("upstream {upstream} answered {status}")]
    Status { upstream: String, status: u16 },
    #[error("upstream {upstream} sent a bad response: {reason}")]
    Invalid { upstream: String, reason: String },
}

impl UpstreamError {
    /// The error's kind, for the `portcullis_upstream_errors_total` label.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Offline { .. } => "offline",
            UpstreamError::Down { .. } => "down",
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::RateLimited { .. } => "rate_limited",
            UpstreamError::Busy { .. } => "busy",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Invalid { .. } => "invalid",
        }
    }
}

/// A GET or HEAD of one API path, scoped to one repository (for the token).
pub struct UpstreamRequest<'a> {
    pub method: Method,
    pub repo: &'a RepoName,
    /// From `/v2/`, with any query.
    pub path: String,
    pub accept: Vec<String>,
    /// `Range: bytes=N-`, to resume a blob.
    pub from_byte: Option<u64>,
}

impl UpstreamRequest<'_> {
    /// `/v2/<repo>/<tail>`
    pub fn new<'a>(method: Method, repo: &'a RepoName, tail: &str) -> UpstreamRequest<'a> {
        UpstreamRequest {
            method,
            repo,
            path: format!("/v2/{repo}/{tail}"),
            accept: Vec::new(),
            from_byte: None,
        }
    }
}

struct Token {
    value: HeaderValue,
    refresh_at: Instant,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

pub struct Upstream {
    pub name: String,
    base: Url,
    client: reqwest::Client,
    credentials: Option<Credentials>,
    pub tag_ttl: Duration,
    response_timeout: Duration,
    /// What the upstream's 401 asked for, once seen.
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Token>>,
    /// One token fetch at a time, so concurrent cold requests share it.
    token_fetch: tokio::sync::Mutex<()>,
    health: Mutex<Health>,
    /// After a 429: no request before this instant (its `Retry-After`).
    rate_limited_until: Mutex<Option<Instant>>,
    probing: std::sync::atomic::AtomicBool,
    /// The last `ratelimit-remaining` the upstream reported (Docker Hub's pull quota).
    rate_limit_remaining: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Arc<Upstream>, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = Url::parse(config.url.trim_end_matches('/'))
            .map_err(|e| format!("upstream {}: url {:?}: {e}", config.name, config.url))?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.idle_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        // A proxy from the environment is for the internet, never for this machine.
        if is_loopback(&base) {
            builder = builder.no_proxy();
        }
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("upstream {}: ca {}: {e}", config.name, ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("upstream {}: ca {}: {e}", config.name, ca.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("upstream {}: cannot build an HTTP client: {e}", config.name))?;
        let upstream = Arc::new(Upstream {
            name: config.name.clone(),
            base,
            client,
            credentials: config.credentials.clone(),
            tag_ttl: config.tag_ttl,
            response_timeout: config.response_timeout,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            token_fetch: tokio::sync::Mutex::new(()),
            health: Mutex::new(Health::default()),
            rate_limited_until: Mutex::new(None),
            probing: false.into(),
            rate_limit_remaining: Mutex::new(None),
        });
        upstream.set_up_gauge(true);
        Ok(upstream)
    }

    /// The longest wait for a response head, also used for waits on its behalf.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    pub fn rate_limit_remaining(&self) -> Option<String> {
        lock(&self.rate_limit_remaining).clone()
    }

    fn error(&self, reason: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends a request: with a token, following redirects, within the response
    /// timeout. 429s and 5xx become errors (and count against the upstream's health);
    /// every other status is returned.
    pub async fn send(
        self: &Arc<Self>,
        request: UpstreamRequest<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let now = Instant::now();
        // Docker Hub's pull limit counts manifest GETs; blobs and HEADs still go.
        let counts_as_pull = request.method == Method::GET && request.path.contains("/manifests/");
        let held = counts_as_pull
            .then(|| *lock(&self.rate_limited_until))
            .flatten();
        if let Some(until) = held.filter(|until| now < *until) {
            return Err(UpstreamError::RateLimited {
                upstream: self.name.clone(),
                retry_after: until - now,
            });
        }
        if lock(&self.health).is_down(now) {
            return Err(UpstreamError::Down {
                upstream: self.name.clone(),
            });
        }
        let outcome = tokio::time::timeout(self.response_timeout, self.authorized(&request)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                secs: self.response_timeout.as_secs(),
            }),
        };
        let m = metrics::get();
        if matches!(
            &result,
            Err(UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. })
        ) {
            m.upstream_requests
                .with_label_values(&[&self.name, request.method.as_str(), "error"])
                .inc();
        }
        let result = result.and_then(|response| {
            let status = response.status();
            m.upstream_requests
                .with_label_values(&[&self.name, request.method.as_str(), status.as_str()])
                .inc();
            self.judge(response, counts_as_pull)
        });
        match &result {
            // Bad responses were counted where they were found (`invalid`).
            Err(UpstreamError::Invalid { .. }) | Ok(_) => {}
            Err(e) => self.count_error(e),
        }
        match &result {
            Ok(_) => self.record_success(),
            // Only trouble reaching the upstream counts against its health; a refused
            // token or a bad answer says nothing about whether it is up.
            Err(
                UpstreamError::Unreachable { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Status { .. },
            ) => self.record_failure(),
            Err(_) => {}
        }
        result
    }

    /// Statuses that are the upstream's trouble, not an answer about the content.
    fn judge(
        &self,
        response: reqwest::Response,
        counts_as_pull: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        if let Some(remaining) = response.headers().get("ratelimit-remaining") {
            let remaining = remaining.to_str().unwrap_or("").to_string();
            tracing::debug!(upstream = %self.name, %remaining, "upstream rate limit");
            if let Some(count) = policy::rate_limit_count(&remaining) {
                metrics::get()
                    .upstream_ratelimit_remaining
                    .with_label_values(&[&self.name])
                    .set(count);
            }
            *lock(&self.rate_limit_remaining) = Some(remaining);
        }
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = policy::retry_after(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
            );
            tracing::warn!(upstream = %self.name, retry_after_secs = wait.as_secs(), "upstream rate limit reached");
            if counts_as_pull {
                *lock(&self.rate_limited_until) = Some(Instant::now() + wait);
            }
            return Err(UpstreamError::RateLimited {
                upstream: self.name.clone(),
                retry_after: wait,
            });
        }
        if status.is_server_error() {
            return Err(UpstreamError::Status {
                upstream: self.name.clone(),
                status: status.as_u16(),
            });
        }
        Ok(response)
    }

    /// Counts a failure in `portcullis_upstream_errors_total`.
    fn count_error(&self, error: &UpstreamError) {
        metrics::get()
            .upstream_errors
            .with_label_values(&[&self.name, error.kind()])
            .inc();
    }

    /// Whether the upstream is considered reachable (not marked down), for `/readyz`.
    pub fn is_up(&self) -> bool {
        !lock(&self.health).marked_down()
    }

    fn record_success(&self) {
        lock(&self.health).record_success();
        self.set_up_gauge(true);
    }

    fn set_up_gauge(&self, up: bool) {
        metrics::get()
            .upstream_up
            .with_label_values(&[&self.name])
            .set(i64::from(up));
    }

    fn record_failure(self: &Arc<Self>) {
        let backoff = lock(&self.health).record_failure(Instant::now());
        if let Some(backoff) = backoff {
            self.set_up_gauge(false);
            tracing::warn!(upstream = %self.name, backoff_secs = backoff.as_secs(), "upstream marked down");
            self.start_probe();
        }
    }

    /// While the upstream is marked down, asks `GET /v2/` after each back-off until
    /// it answers at all (any status means it is reachable again).
    fn start_probe(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let upstream = self.clone();
        tokio::spawn(async move {
            loop {
                let until = lock(&upstream.health).down_until();
                let Some(until) = until else { break };
                tokio::time::sleep_until(until.into()).await;
                if !lock(&upstream.health).marked_down() {
                    break;
                }
                let url = upstream.base.join("/v2/").expect("a fixed path joins");
                let probe = tokio::time::timeout(PROBE_TIMEOUT, upstream.client.get(url).send());
                if let Ok(Ok(_)) = probe.await {
                    tracing::info!(upstream = %upstream.name, "upstream reachable again");
                    upstream.record_success();
                    break;
                }
                lock(&upstream.health).record_failure(Instant::now());
            }
            upstream.probing.store(false, Ordering::Release);
        });
    }

    /// The request with credentials: a token (or Basic) if the upstream's challenge
    /// is known; on a 401 the challenge is learned and the request sent once more.
    async fn authorized(
        &self,
        request: &UpstreamRequest<'_>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{}:pull", request.repo);
        let known = lock(&self.challenge).clone();
        let auth = match &known {
            Some(challenge) => self.authorization(challenge, &scope, false).await?,
            None => None,
        };
        let response = self.follow(request, auth).await?;
        // Only the upstream itself says how to log in to it: never a host it
        // redirected to, and never over plain HTTP for an https upstream.
        if response.status() != StatusCode::UNAUTHORIZED || !same_origin(response.url(), &self.base)
        {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(policy::parse_challenge)
            .filter(|c| self.realm_allowed(c))
        else {
            return Ok(response);
        };
        // A token we just sent was refused: it may have been revoked early.
        let stale_token = known.as_ref() == Some(&challenge);
        *lock(&self.challenge) = Some(challenge.clone());
        let Some(auth) = self.authorization(&challenge, &scope, stale_token).await? else {
            return Ok(response);
        };
        self.follow(request, Some(auth)).await
    }

    fn realm_allowed(&self, challenge: &Challenge) -> bool {
        match challenge {
            Challenge::Bearer { realm, .. } => {
                self.base.scheme() != "https" || realm.starts_with("https://")
            }
            Challenge::Basic => true,
        }
    }

    /// The `Authorization` value for `scope`, fetching a token when needed.
    async fn authorization(
        &self,
        challenge: &Challenge,
        scope: &str,
        refetch: bool,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let (realm, service) = match challenge {
            Challenge::Basic => return Ok(self.credentials.as_ref().map(basic_auth)),
            Challenge::Bearer { realm, service } => (realm, service),
        };
        let cached = |tokens: &HashMap<String, Token>| {
            tokens
                .get(scope)
                .filter(|t| !refetch && Instant::now() < t.refresh_at)
                .map(|t| t.value.clone())
        };
        if let Some(token) = cached(&lock(&self.tokens)) {
            return Ok(Some(token));
        }
        let _one_at_a_time = self.token_fetch.lock().await;
        if let Some(token) = cached(&lock(&self.tokens)) {
            return Ok(Some(token));
        }
        let mut url = Url::parse(realm).map_err(|e| self.invalid(format!("token realm: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
            if let Some(c) = &self.credentials {
                query.append_pair("account", &c.username);
            }
        }
        let mut token_request = self.client.get(url);
        if let Some(c) = &self.credentials {
            token_request = token_request.header(AUTHORIZATION, basic_auth(c));
        }
        let response = token_request
            .send()
            .await
            .map_err(|e| self.error(format!("token realm: {}", describe(e))))?;
        if !response.status().is_success() {
            return Err(if response.status().is_server_error() {
                UpstreamError::Status {
                    upstream: self.name.clone(),
                    status: response.status().as_u16(),
                }
            } else {
                self.invalid(format!(
                    "the token realm refused a token for {scope} ({}); check the upstream's credentials",
                    response.status()
                ))
            });
        }
        let body: TokenResponse = read_json(response, 64 * 1024)
            .await
            .map_err(|e| self.invalid(format!("token response: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.invalid("token response without a token"))?;
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| self.invalid("token with characters not allowed in a header"))?;
        value.set_sensitive(true);
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= MAX_TOKENS {
            tokens.clear();
        }
        tokens.insert(
            scope.to_string(),
            Token {
                value: value.clone(),
                refresh_at: Instant::now() + policy::token_refresh_after(body.expires_in),
            },
        );
        Ok(Some(value))
    }

    /// The upstream answered something that cannot be right (502 for clients).
    /// A bad response (wrong digest, truncated, unparsable), counted as an error.
    pub fn invalid(&self, reason: impl Into<String>) -> UpstreamError {
        let error = UpstreamError::Invalid {
            upstream: self.name.clone(),
            reason: reason.into(),
        };
        self.count_error(&error);
        error
    }

    /// Sends the request and follows redirects; `Authorization` goes only to the
    /// upstream's own origin.
    async fn follow(
        &self,
        request: &UpstreamRequest<'_>,
        auth: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut url = self
            .base
            .join(&request.path)
            .map_err(|e| self.invalid(format!("path {}: {e}", request.path)))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut builder = self.client.request(request.method.clone(), url.clone());
            for accept in &request.accept {
                builder = builder.header(ACCEPT, accept);
            }
            if let Some(from) = request.from_byte {
                builder = builder.header(RANGE, format!("bytes={from}-"));
            }
            if let Some(auth) = auth.as_ref().filter(|_| same_origin(&url, &self.base)) {
                builder = builder.header(AUTHORIZATION, auth.clone());
            }
            let response = builder.send().await.map_err(|e| {
                if e.is_timeout() {
                    UpstreamError::Timeout {
                        upstream: self.name.clone(),
                        secs: self.response_timeout.as_secs(),
                    }
                } else {
                    self.error(describe(e))
                }
            })?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| self.invalid("a redirect without Location"))?;
            url = url
                .join(location)
                .map_err(|e| self.invalid(format!("redirect to {location:?}: {e}")))?;
        }
        Err(self.invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }
}

fn basic_auth(c: &Credentials) -> HeaderValue {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// reqwest's error with its causes, which say what actually failed (refused, reset),
/// and the URL without its query (a CDN's signed URL carries credentials there).
pub fn describe(e: reqwest::Error) -> String {
    let url = e.url().map(|u| {
        let mut u = u.clone();
        u.set_query(None);
        u.to_string()
    });
    let e = e.without_url();
    let mut text = e.to_string();
    if let Some(url) = url {
        text.push_str(&format!(" ({url})"));
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a small body (a token, a manifest, a tag list) of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(format!("body over the {limit}-byte limit"));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > limit {
            return Err(format!("body over the {limit}-byte limit"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    limit: usize,
) -> Result<T, String> {
    let body = read_limited(response, limit).await?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

impl Upstream {
    /// A small body (a manifest, a tag list page), whole within the response timeout,
    /// so nobody queued behind it waits on a trickling upstream; `what` names it.
    pub async fn read_small(
        &self,
        response: reqwest::Response,
        limit: usize,
        what: &str,
    ) -> Result<bytes::Bytes, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, read_limited(response, limit)).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(reason)) => Err(self.invalid(format!("{what}: {reason}"))),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                secs: self.response_timeout.as_secs(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_an_https_realm_of_an_https_upstream() {
        let hub = Upstream::new(&UpstreamConfig::named("docker.io", None)).unwrap();
        let bearer = |realm: &str| Challenge::Bearer {
            realm: realm.into(),
            service: None,
        };
        assert!(hub.realm_allowed(&bearer("https://auth.docker.io/token")));
        assert!(!hub.realm_allowed(&bearer("http://auth.docker.io/token")));
        let local = Upstream::new(&UpstreamConfig::named(
            "lan",
            Some("http://127.0.0.1:5000".into()),
        ))
        .unwrap();
        assert!(local.realm_allowed(&bearer("http://127.0.0.1:5000/token")));
    }

    #[test]
    fn origins() {
        let hub = Url::parse("https://registry-1.docker.io/v2/x").unwrap();
        assert!(same_origin(
            &hub,
            &Url::parse("https://registry-1.docker.io:443/y").unwrap()
        ));
        assert!(!same_origin(
            &hub,
            &Url::parse("https://production.cloudflare.docker.com/").unwrap()
        ));
        assert!(!same_origin(
            &hub,
            &Url::parse("http://registry-1.docker.io/").unwrap()
        ));
        let local = Url::parse("http://127.0.0.1:5000/").unwrap();
        assert!(!same_origin(
            &local,
            &Url::parse("http://127.0.0.1:5001/").unwrap()
        ));
        assert!(is_loopback(&local));
        assert!(is_loopback(&Url::parse("http://[::1]:9/").unwrap()));
        assert!(!is_loopback(&hub));
    }
}
