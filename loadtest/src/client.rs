//! The registry client: connections to one target and the OCI distribution calls the
//! scenarios make (push blobs and manifests, pull with digest verification, deletes).
//!
//! A [`Target`] holds one `reqwest::Client` per connection, so "N connections" means
//! N keep-alive TCP connections (HTTP/1.1) or N h2 connections. Every URL the client
//! is sent to, including upload `Location`s and redirects, passes the loopback guard.

use crate::guard::{check_loopback, pinned_localhost};
use crate::image::{sha256_digest, Blob, Image, ACCEPT_MANIFESTS};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

/// How the client reaches the target.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// PEM CA bundle to trust (only these roots) for https targets.
    pub ca: Option<PathBuf>,
    /// Credentials sent with every request.
    pub credentials: Option<Credentials>,
    /// h2 (prior knowledge on http, ALPN h2 only on https) instead of HTTP/1.1.
    pub h2: bool,
    /// Limit for one whole request, body included.
    pub timeout: Duration,
}

/// What every request authenticates with.
#[derive(Clone, Debug)]
pub enum Credentials {
    Basic {
        user: String,
        password: String,
    },
    /// A token from the registry's token endpoint, sent as `Authorization: Bearer`.
    Bearer(String),
}

/// How blobs are uploaded.
#[derive(Clone, Copy, Debug)]
pub enum UploadMode {
    /// POST a session, then one PUT with the whole blob and `?digest=`.
    Monolithic,
    /// POST, PATCH chunks of this size with `Content-Range`, then an empty closing PUT.
    Chunked(usize),
}

/// One registry, reached over `connections` independent connections.
pub struct Target {
    pub base: Url,
    pub options: ClientOptions,
    clients: Vec<reqwest::Client>,
}

impl Target {
    pub fn new(base: Url, options: ClientOptions, connections: usize) -> Result<Target> {
        check_loopback(&base)?;
        let auth = options
            .credentials
            .as_ref()
            .map(|credentials| match credentials {
                Credentials::Basic { user, password } => basic_auth_header(user, password),
                Credentials::Bearer(token) => bearer_header(token),
            })
            .transpose()?;
        let ca = match &options.ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("--ca {}: not a PEM bundle: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        let clients = (0..connections.max(1))
            .map(|_| build_client(&base, &options, auth.clone(), &ca))
            .collect::<Result<Vec<_>>>()?;
        Ok(Target {
            base,
            options,
            clients,
        })
    }

    /// The API on connection `i` (wrapping around).
    pub fn api(&self, i: usize) -> Api {
        Api {
            client: self.clients[i % self.clients.len()].clone(),
            base: self.base.clone(),
            bearer: None,
        }
    }

    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    pub fn protocol(&self) -> &'static str {
        if self.options.h2 {
            "h2"
        } else {
            "http/1.1"
        }
    }
}

fn bearer_header(token: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token is not a valid header value".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// The `Authorization` value reqwest itself would send for these credentials.
fn basic_auth_header(user: &str, password: &str) -> Result<HeaderValue> {
    let request = reqwest::Client::builder()
        .build()
        .map_err(|e| e.to_string())?
        .get("http://127.0.0.1/")
        .basic_auth(user, Some(password))
        .build()
        .map_err(|e| e.to_string())?;
    let mut value = request
        .headers()
        .get(AUTHORIZATION)
        .cloned()
        .ok_or("no Authorization header built")?;
    value.set_sensitive(true);
    Ok(value)
}

fn build_client(
    base: &Url,
    options: &ClientOptions,
    auth: Option<HeaderValue>,
    ca: &[reqwest::Certificate],
) -> Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    if let Some(auth) = auth {
        headers.insert(AUTHORIZATION, auth);
    }
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(options.timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(4)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if let Err(e) = check_loopback(attempt.url()) {
                attempt.error(e)
            } else {
                attempt.follow()
            }
        }));
    if let Some((host, addr)) = pinned_localhost(base) {
        builder = builder.resolve(&host, addr);
    }
    if !ca.is_empty() {
        builder = builder.tls_certs_only(ca.iter().cloned());
    }
    builder = if options.h2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder
        .build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}

/// One connection's view of the OCI API. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: Url,
    /// `Authorization: Bearer` for every request (a token realm's token); reqwest drops
    /// it when a redirect leaves the host, as a blob GET redirected to a CDN needs.
    bearer: Option<HeaderValue>,
}

/// When a blob GET's bytes arrived.
#[derive(Clone, Copy, Debug)]
pub struct BlobTiming {
    /// From sending the request to the first body byte.
    pub first_byte: Duration,
    /// From sending the request to the last body byte (and the digest check).
    pub total: Duration,
    pub bytes: u64,
}

/// A short description of a failed response, with the start of its body.
async fn failure(what: &str, response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    format!("{what}: HTTP {status} {}", body.trim())
}

fn transport(what: &str, e: reqwest::Error) -> String {
    // The innermost cause is usually the informative one (connection refused, reset...).
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{what}: {e} ({cause})")
}

impl Api {
    pub fn url(&self, path: &str) -> Result<Url> {
        let url = self
            .base
            .join(path)
            .map_err(|e| format!("bad URL {path:?}: {e}"))?;
        check_loopback(&url)?;
        Ok(url)
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        request.send().await.map_err(|e| transport(what, e))
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.bearer {
            Some(token) => request.header(AUTHORIZATION, token.clone()),
            None => request,
        }
    }

    /// This API with `Authorization: Bearer <token>` on every request.
    pub fn with_bearer(&self, token: &str) -> Result<Api> {
        Ok(Api {
            bearer: Some(bearer_header(token)?),
            ..self.clone()
        })
    }

    /// Any request: `path` is relative to the target or an absolute (loopback) URL,
    /// `json` the body. The response is returned whatever its status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let url = self.url(path)?;
        let what = format!("{method} {url}");
        let mut request = self.request(method, url);
        if let Some(json) = json {
            request = request.json(json);
        }
        self.send(&what, request).await
    }

    /// `GET /v2/`: 200 expected.
    pub async fn ping(&self) -> Result<u64> {
        let what = "GET /v2/";
        let response = self
            .send(what, self.request(Method::GET, self.url("/v2/")?))
            .await?;
        if response.status() != StatusCode::OK {
            return Err(failure(what, response).await);
        }
        let body = response.bytes().await.map_err(|e| transport(what, e))?;
        Ok(body.len() as u64)
    }

    /// `HEAD` a manifest: its `Docker-Content-Digest`, or `None` on 404.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<String>> {
        let what = format!("HEAD {repo}:{reference}");
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let response = self
            .send(
                &what,
                self.request(Method::HEAD, url)
                    .header(ACCEPT, ACCEPT_MANIFESTS),
            )
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(failure(&what, response).await),
        }
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{what}: no Docker-Content-Digest header"))?;
        Ok(Some(digest.to_string()))
    }

    /// `GET` a manifest; its bytes are checked against `Docker-Content-Digest` (and
    /// against `expected` when given).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        expected: Option<&str>,
    ) -> Result<Bytes> {
        let what = format!("GET manifest {repo}:{reference}");
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let response = self
            .send(
                &what,
                self.request(Method::GET, url)
                    .header(ACCEPT, ACCEPT_MANIFESTS),
            )
            .await?;
        if response.status() != StatusCode::OK {
            return Err(failure(&what, response).await);
        }
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.map_err(|e| transport(&what, e))?;
        let actual = sha256_digest(&body);
        if let Some(header) = header {
            if header != actual {
                return Err(format!(
                    "{what}: body digest {actual} but Docker-Content-Digest {header}"
                ));
            }
        }
        if let Some(expected) = expected {
            if expected != actual {
                return Err(format!("{what}: got {actual}, expected {expected}"));
            }
        }
        Ok(body)
    }

    /// `PUT` a manifest under `reference`: 201 with the manifest's digest expected.
    pub async fn put_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> Result<()> {
        let what = format!("PUT manifest {repo}:{reference}");
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let response = self
            .send(
                &what,
                self.request(Method::PUT, url)
                    .header(CONTENT_TYPE, crate::image::MANIFEST_TYPE)
                    .body(manifest.data.clone()),
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(failure(&what, response).await);
        }
        match response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(d) if d == manifest.digest => Ok(()),
            other => Err(format!(
                "{what}: Docker-Content-Digest {other:?}, expected {}",
                manifest.digest
            )),
        }
    }

    /// The status of `HEAD /v2/<repo>/blobs/<digest>`.
    pub async fn blob_status(&self, repo: &str, digest: &str) -> Result<StatusCode> {
        let what = format!("HEAD blob {repo}@{digest}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let response = self.send(&what, self.request(Method::HEAD, url)).await?;
        Ok(response.status())
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        match self.blob_status(repo, digest).await? {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(format!("HEAD blob {repo}@{digest}: HTTP {other}")),
        }
    }

    fn location(&self, what: &str, response: &reqwest::Response) -> Result<Url> {
        let raw = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{what}: no Location header"))?;
        let url = self
            .base
            .join(raw)
            .map_err(|e| format!("{what}: bad Location {raw:?}: {e}"))?;
        check_loopback(&url)?;
        Ok(url)
    }

    /// Uploads a blob (whether or not the registry has it).
    pub async fn upload_blob(&self, repo: &str, blob: &Blob, mode: UploadMode) -> Result<()> {
        let what = format!("upload {repo}@{}", blob.digest);
        let start = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let response = self.send(&what, self.request(Method::POST, start)).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(failure(&format!("{what} (POST)"), response).await);
        }
        let mut location = self.location(&what, &response)?;
        let last_chunk = match mode {
            UploadMode::Monolithic => blob.data.clone(),
            UploadMode::Chunked(size) => {
                let size = size.max(1);
                let mut offset = 0;
                // Bounded by the blob's size: one PATCH per chunk.
                while offset < blob.data.len() {
                    let end = (offset + size).min(blob.data.len());
                    let response = self
                        .send(
                            &what,
                            self.request(Method::PATCH, location.clone())
                                .header(CONTENT_TYPE, "application/octet-stream")
                                .header("Content-Range", format!("{offset}-{}", end - 1))
                                .body(blob.data.slice(offset..end)),
                        )
                        .await?;
                    if response.status() != StatusCode::ACCEPTED {
                        return Err(failure(&format!("{what} (PATCH at {offset})"), response).await);
                    }
                    location = self.location(&what, &response)?;
                    offset = end;
                }
                Bytes::new()
            }
        };
        location
            .query_pairs_mut()
            .append_pair("digest", &blob.digest);
        let response = self
            .send(
                &what,
                self.request(Method::PUT, location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(last_chunk),
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(failure(&format!("{what} (PUT)"), response).await);
        }
        Ok(())
    }

    /// Uploads a blob unless `HEAD` says the repository already has it, as real
    /// clients do. Returns the bytes sent.
    pub async fn ensure_blob(&self, repo: &str, blob: &Blob, mode: UploadMode) -> Result<u64> {
        if self.blob_exists(repo, &blob.digest).await? {
            return Ok(0);
        }
        self.upload_blob(repo, blob, mode).await?;
        Ok(blob.size())
    }

    /// `GET` a blob, streaming it through sha256; fails on a short, long or wrong body.
    pub async fn get_blob(&self, repo: &str, digest: &str, size: u64, verify: bool) -> Result<u64> {
        let timing = self
            .get_blob_observed(repo, digest, size, verify, |_| {})
            .await?;
        Ok(timing.bytes)
    }

    /// [`Api::get_blob`] that also times the first and last byte and tells
    /// `progress` the bytes received so far after every chunk.
    pub async fn get_blob_observed(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        verify: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<BlobTiming> {
        let what = format!("GET blob {repo}@{digest}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let started = Instant::now();
        let mut response = self.send(&what, self.request(Method::GET, url)).await?;
        if response.status() != StatusCode::OK {
            return Err(failure(&what, response).await);
        }
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut first_byte = None;
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&what, e))? {
            if chunk.is_empty() {
                continue;
            }
            first_byte.get_or_insert_with(|| started.elapsed());
            received += chunk.len() as u64;
            if received > size {
                return Err(format!("{what}: more than the expected {size} bytes"));
            }
            if verify {
                hasher.update(&chunk);
            }
            progress(received);
        }
        let total = started.elapsed();
        if received != size {
            return Err(format!("{what}: {received} bytes, expected {size}"));
        }
        if verify {
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != digest {
                return Err(format!("{what}: content digest is {actual}"));
            }
        }
        Ok(BlobTiming {
            first_byte: first_byte.unwrap_or(total),
            total,
            bytes: received,
        })
    }

    /// `DELETE` a manifest by tag or digest; returns the status.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<StatusCode> {
        let what = format!("DELETE manifest {repo}:{reference}");
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let response = self.send(&what, self.request(Method::DELETE, url)).await?;
        Ok(response.status())
    }

    /// `DELETE` a blob from a repository; returns the status.
    pub async fn delete_blob(&self, repo: &str, digest: &str) -> Result<StatusCode> {
        let what = format!("DELETE blob {repo}@{digest}");
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let response = self.send(&what, self.request(Method::DELETE, url)).await?;
        Ok(response.status())
    }

    /// Pushes an image as docker does: blobs in parallel (HEAD, upload if missing),
    /// then the manifest under `tag`. Returns the blob bytes sent.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        mode: UploadMode,
    ) -> Result<u64> {
        let mut tasks = tokio::task::JoinSet::new();
        for blob in image.blobs() {
            let (api, repo, blob) = (self.clone(), repo.to_string(), blob.clone());
            tasks.spawn(async move { api.ensure_blob(&repo, &blob, mode).await });
        }
        let mut sent = 0;
        while let Some(joined) = tasks.join_next().await {
            sent += joined.map_err(|e| format!("upload task failed: {e}"))??;
        }
        self.put_manifest(repo, tag, &image.manifest).await?;
        Ok(sent)
    }

    /// Pulls an image as containers/image does: manifest by tag, then every blob in
    /// parallel, each checked against its digest. Returns the bytes received.
    pub async fn pull_image(&self, repo: &str, tag: &str, expected: Option<&str>) -> Result<u64> {
        let manifest = self.get_manifest(repo, tag, expected).await?;
        let mut received = manifest.len() as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for (digest, size) in crate::image::manifest_blobs(&manifest)? {
            let (api, repo) = (self.clone(), repo.to_string());
            tasks.spawn(async move { api.get_blob(&repo, &digest, size, true).await });
        }
        while let Some(joined) = tasks.join_next().await {
            received += joined.map_err(|e| format!("download task failed: {e}"))??;
        }
        Ok(received)
    }
}
