//! HTTP-level integration tests for the OCI Distribution v1.1 API served by
//! portcullis.  Every test starts its own server through the shared harness in
//! `tests/common/mod.rs` and talks to it over plain HTTP (reqwest), or over a
//! raw `TcpStream` where the test needs control over the wire (dropped
//! connections, `Expect: 100-continue`, un-normalised paths).

#[allow(dead_code)]
mod common;

use common::pseudo_random;

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder, Response, Url};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCTET: &str = "application/octet-stream";

/// Upper bound for any single raw-socket read.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hdr(resp: &Response, name: &str) -> Option<String> {
    resp.headers().get(name).map(|v| {
        v.to_str()
            .expect("header value is not visible ASCII")
            .to_string()
    })
}

fn must_hdr(resp: &Response, name: &str) -> String {
    hdr(resp, name).unwrap_or_else(|| {
        panic!(
            "{} {}: missing header {name}; headers: {:?}",
            resp.status(),
            resp.url(),
            resp.headers()
        )
    })
}

/// Append `digest=<d>` to an upload URL, respecting an existing query string.
fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

/// Parse an upload `Range` header value `0-<end>` into the stored size
/// (`end + 1`).  `0-0` is ambiguous in the protocol; the conventional meaning
/// (used by `POST` on a fresh session) is "nothing stored", so callers that
/// can tell the difference handle it themselves.
fn range_end(v: &str) -> i64 {
    let (start, end) = v
        .split_once('-')
        .unwrap_or_else(|| panic!("malformed upload Range header {v:?}"));
    assert_eq!(start, "0", "upload Range must start at 0: {v:?}");
    end.parse::<i64>()
        .unwrap_or_else(|_| panic!("malformed upload Range header {v:?}"))
}

/// Extract the `rel="next"` target of a `Link` header.
fn next_link(resp: &Response) -> Option<String> {
    let v = hdr(resp, "link")?;
    let start = v
        .find('<')
        .unwrap_or_else(|| panic!("malformed Link header {v:?}"));
    let end = v
        .find('>')
        .unwrap_or_else(|| panic!("malformed Link header {v:?}"));
    assert!(
        v[end..].contains("rel=\"next\"") || v[end..].contains("rel=next"),
        "Link header without rel=\"next\": {v:?}"
    );
    Some(v[start + 1..end].to_string())
}

fn query_param(url: &str, key: &str) -> Option<String> {
    let u = Url::parse(url).unwrap_or_else(|e| panic!("bad url {url:?}: {e}"));
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Send a request; a transport error or any 5xx fails the test immediately.
async fn send(rb: RequestBuilder) -> Response {
    let (client, req) = rb.build_split();
    let req = req.expect("request builds");
    let desc = format!("{} {}", req.method(), req.url());
    let resp = client
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("{desc}: transport error: {e:?}"));
    if resp.status().is_server_error() {
        let st = resp.status();
        let body = resp.text().await.unwrap_or_default();
        panic!("{desc}: server error {st}; body: {body}");
    }
    resp
}

/// Assert `status` and an OCI error body whose codes include one of `codes`
/// (any code if `codes` is empty).  Returns the parsed body.
async fn expect_error(resp: Response, status: u16, codes: &[&str], what: &str) -> Value {
    let st = resp.status().as_u16();
    let url = resp.url().clone();
    let body = resp.text().await.expect("read error body");
    assert_eq!(
        st, status,
        "{what}: {url}: expected {status}, got {st}; body: {body}"
    );
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: {url}: error body is not JSON ({e}): {body:?}"));
    let errs = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {url}: no `errors` array in {body}"));
    assert!(!errs.is_empty(), "{what}: {url}: empty `errors` array");
    let mut found = Vec::new();
    for e in errs {
        let code = e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {url}: error without string code: {body}"));
        if let Some(m) = e.get("message") {
            assert!(m.is_string(), "{what}: {url}: non-string message: {body}");
        }
        found.push(code.to_string());
    }
    if !codes.is_empty() {
        assert!(
            found.iter().any(|c| codes.contains(&c.as_str())),
            "{what}: {url}: expected error code in {codes:?}, got {found:?}; body: {body}"
        );
    }
    v
}

async fn expect_status(resp: Response, status: u16, what: &str) -> Response {
    let st = resp.status().as_u16();
    if st != status {
        let url = resp.url().clone();
        let body = resp.text().await.unwrap_or_default();
        panic!("{what}: {url}: expected {status}, got {st}; body: {body}");
    }
    resp
}

// ---------------------------------------------------------------------------
// Test context
// ---------------------------------------------------------------------------

struct Ctx {
    _server: common::Server,
    c: Client,
    base: String,
    host_port: String,
}

impl Ctx {
    async fn new() -> Ctx {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The harness blocks while it waits for readiness.
        let server = tokio::task::spawn_blocking(common::Server::start)
            .await
            .expect("server start panicked");
        let base = server.base_url().trim_end_matches('/').to_string();
        let host_port = server.host_port();
        let c = Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        Ctx {
            _server: server,
            c,
            base,
            host_port,
        }
    }

    /// Absolute URL for a path (`/v2/...`) or a (possibly relative) location.
    fn url(&self, path_or_url: &str) -> String {
        Url::parse(&format!("{}/", self.base))
            .unwrap()
            .join(path_or_url)
            .unwrap_or_else(|e| panic!("cannot resolve {path_or_url:?}: {e}"))
            .to_string()
    }

    fn req(&self, m: Method, path: &str) -> RequestBuilder {
        self.c.request(m, self.url(path))
    }

    async fn get(&self, path: &str) -> Response {
        send(self.req(Method::GET, path)).await
    }

    async fn head(&self, path: &str) -> Response {
        send(self.req(Method::HEAD, path)).await
    }

    async fn delete(&self, path: &str) -> Response {
        send(self.req(Method::DELETE, path)).await
    }

    /// `POST /v2/<name>/blobs/uploads/`; returns the absolute upload URL.
    async fn start_upload(&self, repo: &str) -> String {
        let r = send(self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))).await;
        let r = expect_status(r, 202, "start upload session").await;
        self.url(&must_hdr(&r, "location"))
    }

    /// Upload a blob through the POST + PUT(with body) flow; returns its digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256_digest(data);
        let loc = self.start_upload(repo).await;
        let r = send(
            self.c
                .put(with_digest(&loc, &d))
                .header("content-type", OCTET)
                .body(data.to_vec()),
        )
        .await;
        let r = expect_status(r, 201, "finish upload with body").await;
        assert_eq!(must_hdr(&r, "docker-content-digest"), d);
        d
    }

    async fn put_manifest(&self, repo: &str, reference: &str, ct: &str, body: &[u8]) -> Response {
        send(
            self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", ct)
                .body(body.to_vec()),
        )
        .await
    }

    /// Push an image manifest (plus its config and layer) under `reference`.
    async fn push_image(&self, repo: &str, reference: &str, seed: u64) -> (Vec<u8>, String) {
        let m = self.image_manifest(repo, seed).await;
        let d = sha256_digest(&m);
        let r = self.put_manifest(repo, reference, OCI_MANIFEST, &m).await;
        let r = expect_status(r, 201, "push image manifest").await;
        assert_eq!(must_hdr(&r, "docker-content-digest"), d);
        (m, d)
    }

    /// Upload a config and a layer and return the serialized image manifest
    /// (not pushed).
    async fn image_manifest(&self, repo: &str, seed: u64) -> Vec<u8> {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        )
        .into_bytes();
        let layer = pseudo_random(1024 + seed as usize, seed);
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()}],
        }))
        .unwrap()
    }

    /// `GET path`, expecting 200; returns the response.
    async fn get_ok(&self, path: &str, what: &str) -> Response {
        expect_status(self.get(path).await, 200, what).await
    }

    /// `GET path`, expecting 200; returns the whole body.
    async fn get_bytes(&self, path: &str, what: &str) -> bytes::Bytes {
        self.get_ok(path, what).await.bytes().await.unwrap()
    }

    /// `GET path`, expecting `status` with an OCI error body carrying one of
    /// `codes` (any code if empty); see [`expect_error`].
    async fn expect_get_error(&self, path: &str, status: u16, codes: &[&str], what: &str) -> Value {
        expect_error(self.get(path).await, status, codes, what).await
    }

    /// `GET path`, expecting 200 and a body equal to `want`, byte for byte.
    async fn assert_get_body(&self, path: &str, what: &str, want: &[u8]) {
        assert_eq!(self.get_bytes(path, what).await.as_ref(), want);
    }

    /// `PATCH` an upload location with an octet-stream chunk and the given
    /// `Content-Range` (`start-end`); returns the response unchecked.
    async fn patch_chunk(&self, loc: &str, content_range: &str, chunk: Vec<u8>) -> Response {
        send(
            self.c
                .patch(loc)
                .header("content-type", OCTET)
                .header("content-range", content_range)
                .body(chunk),
        )
        .await
    }

    /// `PUT` to an upload location with `digest=<d>` and no body (closing the
    /// session); returns the response unchecked.
    async fn put_digest(&self, loc: &str, digest: &str) -> Response {
        send(self.c.put(with_digest(loc, digest))).await
    }

    /// `GET /v2/<repo>/tags/list<query>`, expecting 200; returns the `tags`.
    async fn tags_page(&self, repo: &str, query: &str, what: &str) -> Vec<String> {
        let r = self
            .get_ok(&format!("/v2/{repo}/tags/list{query}"), what)
            .await;
        let v: Value = r.json().await.unwrap();
        tag_array(&v)
    }

    async fn tags(&self, repo: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{repo}/tags/list")).await;
        let r = expect_status(r, 200, "tags list").await;
        let v: Value = r.json().await.expect("tags list JSON");
        assert_eq!(v["name"], repo, "tags list `name` field: {v}");
        tag_array(&v)
    }

    /// Path + query of an absolute URL, for raw HTTP request lines.
    fn target(&self, url: &str) -> String {
        let u = Url::parse(url).unwrap();
        match u.query() {
            Some(q) => format!("{}?{}", u.path(), q),
            None => u.path().to_string(),
        }
    }
}

fn tag_array(v: &Value) -> Vec<String> {
    match &v["tags"] {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(|t| t.as_str().expect("tag is a string").to_string())
            .collect(),
        other => panic!("`tags` is not an array: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over TcpStream
// ---------------------------------------------------------------------------

struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct RawConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn connect(host_port: &str) -> RawConn {
        let s = tokio::time::timeout(RAW_TIMEOUT, TcpStream::connect(host_port))
            .await
            .expect("connect timeout")
            .expect("connect");
        s.set_nodelay(true).ok();
        RawConn { s, buf: Vec::new() }
    }

    async fn write(&mut self, data: &[u8]) {
        tokio::time::timeout(RAW_TIMEOUT, self.s.write_all(data))
            .await
            .expect("write timeout")
            .expect("write");
        self.s.flush().await.expect("flush");
    }

    /// Read more bytes into the buffer; returns false on EOF.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        let n = tokio::time::timeout(RAW_TIMEOUT, self.s.read(&mut tmp))
            .await
            .expect("timed out waiting for the server")
            .expect("read");
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return String::from_utf8_lossy(&line[..p]).into_owned();
            }
            assert!(self.fill().await, "EOF while reading a line");
        }
    }

    /// Read a status line and headers (no body).
    async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.read_line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "bad status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.read_line().await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        (status, headers)
    }

    async fn read_exact_body(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF inside response body");
        }
        self.buf.drain(..n).collect()
    }

    /// Read a full (final) response. `head_request` suppresses body reading.
    async fn read_response(&mut self, head_request: bool) -> RawResp {
        let (status, headers) = self.read_head().await;
        let mut r = RawResp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return r;
        }
        let chunked = r
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            loop {
                let line = self.read_line().await;
                let size_str = line.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size_str, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    // trailers
                    while !self.read_line().await.is_empty() {}
                    break;
                }
                let mut chunk = self.read_exact_body(size + 2).await;
                chunk.truncate(size);
                r.body.extend_from_slice(&chunk);
            }
        } else if let Some(cl) = r.header("content-length") {
            let n: usize = cl.parse().expect("content-length");
            r.body = self.read_exact_body(n).await;
        } else {
            while self.fill().await {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }
}

fn raw_error_codes(r: &RawResp) -> Vec<String> {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.body)
        )
    });
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {v}"))
        .iter()
        .map(|e| e["code"].as_str().expect("code").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Base endpoint
// ---------------------------------------------------------------------------

#[tokio::test]
async fn base_endpoint_reports_api_version() {
    let ctx = Ctx::new().await;
    let r = ctx.get_ok("/v2/", "GET /v2/").await;
    assert_eq!(
        must_hdr(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

// ---------------------------------------------------------------------------
// Blob uploads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn monolithic_post_with_digest_creates_blob() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(3000, 1);
    let d = sha256_digest(&data);
    let r = send(
        ctx.req(
            Method::POST,
            &format!("/v2/mono/app/blobs/uploads/?digest={d}"),
        )
        .header("content-type", OCTET)
        .body(data.clone()),
    )
    .await;
    let r = expect_status(r, 201, "monolithic POST").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let loc = ctx.url(&must_hdr(&r, "location"));
    assert_eq!(
        Url::parse(&loc).unwrap().path(),
        format!("/v2/mono/app/blobs/{d}")
    );
    let g = ctx.get_ok(&loc, "GET created blob").await;
    assert_eq!(must_hdr(&g, "docker-content-digest"), d);
    assert_eq!(g.bytes().await.unwrap().as_ref(), &data[..]);

    // Pushing the same blob again is fine.
    let r = send(
        ctx.req(
            Method::POST,
            &format!("/v2/mono/app/blobs/uploads/?digest={d}"),
        )
        .header("content-type", OCTET)
        .body(data.clone()),
    )
    .await;
    let r = expect_status(r, 201, "repeated monolithic POST").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
}

/// Docker-style streamed PATCHes carry no Content-Range and simply append.
#[tokio::test]
async fn streamed_patch_without_content_range_appends() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(2500, 15);
    let d = sha256_digest(&data);
    let mut loc = ctx.start_upload("streamed").await;
    for (i, part) in [&data[..1000], &data[1000..]].into_iter().enumerate() {
        let r = send(
            ctx.c
                .patch(&loc)
                .header("content-type", OCTET)
                .body(part.to_vec()),
        )
        .await;
        let r = expect_status(r, 202, &format!("streamed PATCH {i}")).await;
        let want = if i == 0 { "0-999" } else { "0-2499" };
        assert_eq!(must_hdr(&r, "range"), want);
        loc = ctx.url(&must_hdr(&r, "location"));
    }
    let r = expect_status(ctx.put_digest(&loc, &d).await, 201, "PUT").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    ctx.assert_get_body(&format!("/v2/streamed/blobs/{d}"), "GET", &data[..])
        .await;
}

#[tokio::test]
async fn monolithic_post_with_wrong_digest_is_rejected_and_not_stored() {
    let ctx = Ctx::new().await;
    // Make sure the repository exists, so "not stored" means BLOB_UNKNOWN.
    ctx.push_blob("mono", b"existing blob").await;

    let data = pseudo_random(2048, 2);
    let real = sha256_digest(&data);
    let claimed = sha256_digest(b"something else entirely");
    let r = send(
        ctx.req(
            Method::POST,
            &format!("/v2/mono/blobs/uploads/?digest={claimed}"),
        )
        .header("content-type", OCTET)
        .body(data.clone()),
    )
    .await;
    expect_error(r, 400, &["DIGEST_INVALID"], "monolithic POST wrong digest").await;

    for d in [&claimed, &real] {
        let h = ctx.head(&format!("/v2/mono/blobs/{d}")).await;
        assert_eq!(h.status().as_u16(), 404, "HEAD {d} after rejected upload");
        ctx.expect_get_error(
            &format!("/v2/mono/blobs/{d}"),
            404,
            &["BLOB_UNKNOWN"],
            "GET blob after rejected upload",
        )
        .await;
    }
}

#[tokio::test]
async fn chunked_upload_session_full_flow() {
    let ctx = Ctx::new().await;
    let repo = "chunky/repo";
    let data = pseudo_random(3000, 3);
    let d = sha256_digest(&data);

    // Open session.
    let r = send(ctx.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))).await;
    let r = expect_status(r, 202, "POST session").await;
    let uuid = must_hdr(&r, "docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert_eq!(must_hdr(&r, "range"), "0-0");
    let first_loc = ctx.url(&must_hdr(&r, "location"));
    let path = Url::parse(&first_loc).unwrap().path().to_string();
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    assert!(
        path.starts_with(&prefix) && path.len() > prefix.len(),
        "upload Location path {path:?} is not under {prefix:?}"
    );

    // Chunk 1: bytes 0..1024
    let r = ctx
        .patch_chunk(&first_loc, "0-1023", data[..1024].to_vec())
        .await;
    let r = expect_status(r, 202, "PATCH chunk 1").await;
    assert_eq!(must_hdr(&r, "range"), "0-1023");
    let loc = ctx.url(&must_hdr(&r, "location"));
    assert!(Url::parse(&loc).unwrap().path().starts_with(&prefix));

    // Status.
    let s = ctx.get(&loc).await;
    let s = expect_status(s, 204, "GET upload status").await;
    assert_eq!(must_hdr(&s, "range"), "0-1023");
    assert!(!must_hdr(&s, "docker-upload-uuid").is_empty());

    // Chunk 2: bytes 1024..2048
    let r = ctx
        .patch_chunk(&loc, "1024-2047", data[1024..2048].to_vec())
        .await;
    let r = expect_status(r, 202, "PATCH chunk 2").await;
    assert_eq!(must_hdr(&r, "range"), "0-2047");
    let loc = ctx.url(&must_hdr(&r, "location"));

    let s = expect_status(ctx.get(&loc).await, 204, "GET upload status 2").await;
    assert_eq!(must_hdr(&s, "range"), "0-2047");

    // Final chunk in the PUT.
    let r = send(
        ctx.c
            .put(with_digest(&loc, &d))
            .header("content-type", OCTET)
            .header("content-range", "2048-2999")
            .body(data[2048..].to_vec()),
    )
    .await;
    let r = expect_status(r, 201, "PUT final chunk").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let blob_loc = ctx.url(&must_hdr(&r, "location"));
    assert_eq!(
        Url::parse(&blob_loc).unwrap().path(),
        format!("/v2/{repo}/blobs/{d}")
    );

    ctx.assert_get_body(&format!("/v2/{repo}/blobs/{d}"), "GET blob", &data[..])
        .await;

    // Session is gone.
    ctx.expect_get_error(&loc, 404, &["BLOB_UPLOAD_UNKNOWN"], "GET finished upload")
        .await;
    ctx.expect_get_error(
        &first_loc,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
        "GET finished upload (first location)",
    )
    .await;
}

#[tokio::test]
async fn chunked_upload_put_without_body() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(1500, 4);
    let d = sha256_digest(&data);
    let loc = ctx.start_upload("nobody").await;
    let r = ctx.patch_chunk(&loc, "0-1499", data.clone()).await;
    let r = expect_status(r, 202, "PATCH whole blob").await;
    assert_eq!(must_hdr(&r, "range"), "0-1499");
    let loc = ctx.url(&must_hdr(&r, "location"));
    let r = ctx.put_digest(&loc, &d).await;
    let r = expect_status(r, 201, "PUT without body").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    ctx.assert_get_body(&format!("/v2/nobody/blobs/{d}"), "GET", &data[..])
        .await;
}

#[tokio::test]
async fn chunk_not_at_current_offset_is_rejected_with_416() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(4096, 5);
    let d = sha256_digest(&data);
    let loc = ctx.start_upload("ooo").await;
    let r = ctx.patch_chunk(&loc, "0-1023", data[..1024].to_vec()).await;
    let r = expect_status(r, 202, "PATCH first chunk").await;
    let mut loc = ctx.url(&must_hdr(&r, "location"));

    // gap, overlap, restart-at-zero
    for (start, end) in [(2048usize, 3071usize), (512, 1535), (0, 1023), (1025, 2047)] {
        let r = ctx
            .patch_chunk(&loc, &format!("{start}-{end}"), data[start..=end].to_vec())
            .await;
        let range = hdr(&r, "range");
        expect_error(
            r,
            416,
            &["RANGE_INVALID", "BLOB_UPLOAD_INVALID"],
            &format!("PATCH {start}-{end} at offset 1024"),
        )
        .await;
        assert_eq!(
            range.as_deref(),
            Some("0-1023"),
            "416 for chunk {start}-{end} must report the current Range"
        );
        let s = expect_status(ctx.get(&loc).await, 204, "status after 416").await;
        assert_eq!(
            must_hdr(&s, "range"),
            "0-1023",
            "rejected chunk changed the upload"
        );
    }

    // The session is still usable with the right offset.
    let r = ctx
        .patch_chunk(&loc, "1024-4095", data[1024..].to_vec())
        .await;
    let r = expect_status(r, 202, "PATCH correct continuation").await;
    assert_eq!(must_hdr(&r, "range"), "0-4095");
    loc = ctx.url(&must_hdr(&r, "location"));
    let r = expect_status(ctx.put_digest(&loc, &d).await, 201, "PUT").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    assert_eq!(
        sha256_digest(&ctx.get_bytes(&format!("/v2/ooo/blobs/{d}"), "GET").await),
        d
    );
}

/// Like [`send`], but a transport error is reported as the server having
/// dropped the connection before the client could read its answer.
async fn send_big(rb: RequestBuilder, what: &str) -> Response {
    let (client, req) = rb.build_split();
    let req = req.expect("request builds");
    let desc = format!("{} {}", req.method(), req.url());
    match client.execute(req).await {
        Ok(r) => {
            assert!(
                !r.status().is_server_error(),
                "{what}: {desc}: {}",
                r.status()
            );
            r
        }
        Err(e) => panic!(
            "{what}: {desc}: no response: the server closed the connection while the \
             (large) request body was still being sent, so the client never saw the \
             error response: {e:?}"
        ),
    }
}

/// Errors decided before the body is read must still reach a client that
/// sends a large body without `Expect: 100-continue`.
#[tokio::test]
async fn early_upload_errors_reach_clients_sending_large_bodies() {
    let ctx = Ctx::new().await;
    let big = pseudo_random(8 * 1024 * 1024, 14);
    let loc = ctx.start_upload("bigerr").await;
    let r = ctx.patch_chunk(&loc, "0-9", big[..10].to_vec()).await;
    let r = expect_status(r, 202, "first chunk").await;
    let loc = ctx.url(&must_hdr(&r, "location"));

    // Out-of-order 8 MiB chunk: the 416 and its Range are what a client needs
    // to resume.
    let r = send_big(
        ctx.c
            .patch(&loc)
            .header("content-type", OCTET)
            .header("content-range", format!("100-{}", 100 + big.len() - 1))
            .body(big.clone()),
        "out-of-order 8 MiB PATCH",
    )
    .await;
    let range = hdr(&r, "range");
    expect_error(
        r,
        416,
        &["RANGE_INVALID", "BLOB_UPLOAD_INVALID"],
        "out-of-order big PATCH",
    )
    .await;
    assert_eq!(range.as_deref(), Some("0-9"));

    // Unknown session.
    let unknown = format!("/v2/bigerr/blobs/uploads/{}", uuid::Uuid::new_v4());
    let r = send_big(
        ctx.req(Method::PATCH, &unknown)
            .header("content-type", OCTET)
            .header("content-range", format!("0-{}", big.len() - 1))
            .body(big.clone()),
        "8 MiB PATCH to unknown session",
    )
    .await;
    expect_error(
        r,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
        "big PATCH to unknown session",
    )
    .await;
}

#[tokio::test]
async fn put_with_wrong_digest_is_rejected() {
    let ctx = Ctx::new().await;
    ctx.push_blob("wrongput", b"keeps the repo alive").await;
    let data = pseudo_random(1000, 6);
    let real = sha256_digest(&data);
    let claimed = sha256_digest(b"not the data");
    let loc = ctx.start_upload("wrongput").await;
    let r = send(
        ctx.c
            .put(with_digest(&loc, &claimed))
            .header("content-type", OCTET)
            .body(data.clone()),
    )
    .await;
    expect_error(r, 400, &["DIGEST_INVALID"], "PUT wrong digest").await;
    for d in [&claimed, &real] {
        let h = ctx.head(&format!("/v2/wrongput/blobs/{d}")).await;
        assert_eq!(
            h.status().as_u16(),
            404,
            "blob {d} must not exist after bad PUT"
        );
    }
}

#[tokio::test]
async fn put_without_digest_is_rejected() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(1000, 7);
    let loc = ctx.start_upload("nodigest").await;
    let r = send(
        ctx.c
            .put(&loc)
            .header("content-type", OCTET)
            .body(data.clone()),
    )
    .await;
    expect_error(r, 400, &["DIGEST_INVALID"], "PUT without digest").await;
    let h = ctx
        .head(&format!("/v2/nodigest/blobs/{}", sha256_digest(&data)))
        .await;
    assert_eq!(h.status().as_u16(), 404);
}

#[tokio::test]
async fn delete_upload_session() {
    let ctx = Ctx::new().await;
    let loc = ctx.start_upload("cancel").await;
    let r = ctx.patch_chunk(&loc, "0-99", vec![7u8; 100]).await;
    let r = expect_status(r, 202, "PATCH").await;
    let loc = ctx.url(&must_hdr(&r, "location"));
    let r = ctx.delete(&loc).await;
    expect_status(r, 204, "DELETE upload session").await;
    ctx.expect_get_error(&loc, 404, &["BLOB_UPLOAD_UNKNOWN"], "GET deleted session")
        .await;
    let p = ctx.patch_chunk(&loc, "100-199", vec![7u8; 100]).await;
    expect_error(p, 404, &["BLOB_UPLOAD_UNKNOWN"], "PATCH deleted session").await;
    let d = ctx.delete(&loc).await;
    expect_error(d, 404, &["BLOB_UPLOAD_UNKNOWN"], "DELETE deleted session").await;
}

#[tokio::test]
async fn unknown_or_invalid_upload_id() {
    let ctx = Ctx::new().await;
    ctx.push_blob("ups", b"x").await;
    let random = uuid::Uuid::new_v4().to_string();
    for id in [random.as_str(), "not-a-uuid", "..%2F..%2Fetc"] {
        let p = format!("/v2/ups/blobs/uploads/{id}");
        ctx.expect_get_error(&p, 404, &["BLOB_UPLOAD_UNKNOWN"], "GET unknown upload")
            .await;
        let r = send(
            ctx.req(Method::PATCH, &p)
                .header("content-type", OCTET)
                .header("content-range", "0-3")
                .body(b"abcd".to_vec()),
        )
        .await;
        expect_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"], "PATCH unknown upload").await;
        let r = send(
            ctx.req(Method::PUT, &with_digest(&p, &sha256_digest(b"abcd")))
                .header("content-type", OCTET)
                .body(b"abcd".to_vec()),
        )
        .await;
        expect_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"], "PUT unknown upload").await;
        expect_error(
            ctx.delete(&p).await,
            404,
            &["BLOB_UPLOAD_UNKNOWN"],
            "DELETE unknown upload",
        )
        .await;
    }
}

/// An upload session belongs to the repository it was opened in.
#[tokio::test]
async fn upload_session_is_scoped_to_its_repository() {
    let ctx = Ctx::new().await;
    ctx.push_blob("other", b"other repo exists").await;
    let loc = ctx.start_upload("owner").await;
    let path = Url::parse(&loc).unwrap().path().to_string();
    let id = path.rsplit('/').next().unwrap().to_string();
    let foreign = format!("/v2/other/blobs/uploads/{id}");
    ctx.expect_get_error(
        &foreign,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
        "GET session via foreign repo",
    )
    .await;
    let data = b"hijack";
    let r = send(
        ctx.req(Method::PUT, &with_digest(&foreign, &sha256_digest(data)))
            .header("content-type", OCTET)
            .body(data.to_vec()),
    )
    .await;
    expect_error(
        r,
        404,
        &["BLOB_UPLOAD_UNKNOWN"],
        "PUT session via foreign repo",
    )
    .await;
    // The real session is unaffected.
    let s = expect_status(ctx.get(&loc).await, 204, "original session still there").await;
    assert_eq!(must_hdr(&s, "range"), "0-0");
}

#[tokio::test]
async fn upload_resumes_after_dropped_connection() {
    let ctx = Ctx::new().await;
    const TOTAL: usize = 1_000_000;
    const SENT: usize = 300_000;
    let data = pseudo_random(TOTAL, 8);
    let d = sha256_digest(&data);
    let loc = ctx.start_upload("resume/me").await;

    // Start a PATCH that promises 1,000,000 bytes but dies after 300,000.
    let mut conn = RawConn::connect(&ctx.host_port).await;
    let head = format!(
        "PATCH {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCTET}\r\nContent-Length: {TOTAL}\r\nContent-Range: 0-{}\r\n\r\n",
        ctx.target(&loc),
        ctx.host_port,
        TOTAL - 1
    );
    conn.write(head.as_bytes()).await;
    conn.write(&data[..SENT]).await;
    let _ = conn.s.shutdown().await;
    drop(conn);

    // Poll the status until it is stable.
    let mut last: Option<String> = None;
    let mut stable = 0;
    let mut range = String::new();
    for _ in 0..100 {
        let s = ctx.get(&loc).await;
        let s = expect_status(s, 204, "upload status after dropped connection").await;
        range = must_hdr(&s, "range");
        if last.as_deref() == Some(range.as_str()) {
            stable += 1;
            if stable >= 4 {
                break;
            }
        } else {
            stable = 0;
            last = Some(range.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stable >= 4,
        "upload status never stabilised (last {range:?})"
    );
    let end = range_end(&range);
    let stored = if range == "0-0" {
        0
    } else {
        (end + 1) as usize
    };
    assert!(
        stored <= SENT,
        "server claims {stored} bytes stored but only {SENT} were sent"
    );
    eprintln!("after the dropped PATCH the server kept {stored} of {SENT} bytes");

    // Resume from exactly the stored offset.
    let r = ctx
        .patch_chunk(
            &loc,
            &format!("{stored}-{}", TOTAL - 1),
            data[stored..].to_vec(),
        )
        .await;
    let r = expect_status(r, 202, &format!("resume PATCH from {stored}")).await;
    assert_eq!(must_hdr(&r, "range"), format!("0-{}", TOTAL - 1));
    let loc = ctx.url(&must_hdr(&r, "location"));
    let r = expect_status(ctx.put_digest(&loc, &d).await, 201, "PUT after resume").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);

    let g = ctx.get_ok(&format!("/v2/resume/me/blobs/{d}"), "GET").await;
    let body = g.bytes().await.unwrap();
    assert_eq!(body.len(), TOTAL);
    assert_eq!(sha256_digest(&body), d);
}

#[tokio::test]
async fn expect_100_continue_on_patch_and_put() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(8192, 9);
    let d = sha256_digest(&data);
    let loc = ctx.start_upload("continue").await;

    // PATCH with Expect: 100-continue.
    let mut conn = RawConn::connect(&ctx.host_port).await;
    let head = format!(
        "PATCH {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCTET}\r\nContent-Length: 4096\r\nContent-Range: 0-4095\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        ctx.target(&loc),
        ctx.host_port
    );
    conn.write(head.as_bytes()).await;
    let (st, _) = conn.read_head().await;
    assert_eq!(
        st, 100,
        "PATCH with Expect: 100-continue must get an interim 100"
    );
    conn.write(&data[..4096]).await;
    let r = conn.read_response(false).await;
    assert_eq!(
        r.status,
        202,
        "final PATCH response; body {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("range"), Some("0-4095"));
    let loc = ctx.url(r.header("location").expect("Location on PATCH"));
    drop(conn);

    // PUT (final chunk) with Expect: 100-continue.
    let mut conn = RawConn::connect(&ctx.host_port).await;
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCTET}\r\nContent-Length: 4096\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        ctx.target(&with_digest(&loc, &d)),
        ctx.host_port
    );
    conn.write(head.as_bytes()).await;
    let (st, _) = conn.read_head().await;
    assert_eq!(
        st, 100,
        "PUT with Expect: 100-continue must get an interim 100"
    );
    conn.write(&data[4096..]).await;
    let r = conn.read_response(false).await;
    assert_eq!(
        r.status,
        201,
        "final PUT response; body {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));

    ctx.assert_get_body(&format!("/v2/continue/blobs/{d}"), "GET", &data[..])
        .await;
}

// ---------------------------------------------------------------------------
// Blob reads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn blob_get_and_head() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(5000, 10);
    let d = ctx.push_blob("reader", &data).await;
    let p = format!("/v2/reader/blobs/{d}");

    let g = ctx.get_ok(&p, "GET blob").await;
    assert_eq!(must_hdr(&g, "content-length"), "5000");
    assert_eq!(must_hdr(&g, "docker-content-digest"), d);
    assert_eq!(g.bytes().await.unwrap().as_ref(), &data[..]);

    let h = expect_status(ctx.head(&p).await, 200, "HEAD blob").await;
    assert_eq!(must_hdr(&h, "content-length"), "5000");
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert!(
        h.bytes().await.unwrap().is_empty(),
        "HEAD must not have a body"
    );
}

#[tokio::test]
async fn blob_range_reads() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(100, 11);
    let d = ctx.push_blob("ranges", &data).await;
    let p = format!("/v2/ranges/blobs/{d}");

    let cases: [(&str, &str, std::ops::Range<usize>); 4] = [
        ("bytes=0-9", "bytes 0-9/100", 0..10),
        ("bytes=10-", "bytes 10-99/100", 10..100),
        ("bytes=-5", "bytes 95-99/100", 95..100),
        ("bytes=50-50", "bytes 50-50/100", 50..51),
    ];
    for (range, content_range, slice) in cases {
        let r = send(ctx.req(Method::GET, &p).header("range", range)).await;
        let r = expect_status(r, 206, &format!("GET {range}")).await;
        assert_eq!(must_hdr(&r, "content-range"), content_range, "for {range}");
        assert_eq!(
            must_hdr(&r, "content-length"),
            slice.len().to_string(),
            "for {range}"
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &data[slice],
            "body for {range}"
        );
    }

    let r = send(ctx.req(Method::GET, &p).header("range", "bytes=100-")).await;
    let r = expect_status(r, 416, "GET bytes=100-").await;
    assert_eq!(must_hdr(&r, "content-range"), "bytes */100");
}

#[tokio::test]
async fn blob_of_another_repository_is_not_visible() {
    let ctx = Ctx::new().await;
    let data = pseudo_random(512, 12);
    let d = ctx.push_blob("one/x", &data).await;
    ctx.push_blob("two", b"two exists").await;
    let h = ctx.head(&format!("/v2/two/blobs/{d}")).await;
    assert_eq!(h.status().as_u16(), 404, "HEAD foreign blob");
    ctx.expect_get_error(
        &format!("/v2/two/blobs/{d}"),
        404,
        &["BLOB_UNKNOWN"],
        "GET foreign blob",
    )
    .await;
    // Still visible where it was pushed.
    expect_status(
        ctx.head(&format!("/v2/one/x/blobs/{d}")).await,
        200,
        "HEAD own blob",
    )
    .await;
}

#[tokio::test]
async fn malformed_digests_are_rejected() {
    let ctx = Ctx::new().await;
    ctx.push_blob("digests", b"present").await;
    let md5 = format!("md5:{}", "0".repeat(32));
    let short = format!("sha256:{}", "a".repeat(63));
    let upper = format!("sha256:{}", "A".repeat(64));
    for bad in ["sha256:xyz", md5.as_str(), short.as_str(), upper.as_str()] {
        ctx.expect_get_error(
            &format!("/v2/digests/blobs/{bad}"),
            400,
            &["DIGEST_INVALID"],
            &format!("GET blob {bad}"),
        )
        .await;
        let h = ctx.head(&format!("/v2/digests/blobs/{bad}")).await;
        assert_eq!(h.status().as_u16(), 400, "HEAD blob {bad}");
    }
    let r = send(
        ctx.req(Method::POST, "/v2/digests/blobs/uploads/?digest=sha256:xyz")
            .header("content-type", OCTET)
            .body(b"abc".to_vec()),
    )
    .await;
    expect_error(
        r,
        400,
        &["DIGEST_INVALID"],
        "monolithic POST with malformed digest",
    )
    .await;
}

#[tokio::test]
async fn invalid_repository_names() {
    let ctx = Ctx::new().await;
    let d = ctx.push_blob("lower/b", b"blob").await;

    for name in [
        "UPPER",
        "lower/UPPER",
        "foo..bar",
        "a//b",
        "-dash",
        "trailing-",
    ] {
        ctx.expect_get_error(
            &format!("/v2/{name}/blobs/{d}"),
            400,
            &["NAME_INVALID"],
            &format!("GET blob in repo {name:?}"),
        )
        .await;
    }
    let r = send(
        ctx.req(Method::POST, "/v2/UPPER/blobs/uploads/")
            .header("content-type", OCTET),
    )
    .await;
    expect_error(r, 400, &["NAME_INVALID"], "POST upload to UPPER").await;
    let r = ctx
        .put_manifest("UPPER", "latest", OCI_MANIFEST, br#"{"schemaVersion":2}"#)
        .await;
    expect_error(r, 400, &["NAME_INVALID"], "PUT manifest in UPPER").await;

    // A literal `..` path segment (sent raw so no client normalises it) must
    // never resolve to another repository.
    for target in [
        format!("/v2/x/../lower/b/blobs/{d}"),
        format!("/v2/lower/../lower/b/blobs/{d}"),
        format!("/v2/../v2/lower/b/blobs/{d}"),
    ] {
        let mut conn = RawConn::connect(&ctx.host_port).await;
        conn.write(
            format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                ctx.host_port
            )
            .as_bytes(),
        )
        .await;
        let r = conn.read_response(false).await;
        let codes = raw_error_codes(&r);
        let ok = (r.status == 400 && codes.iter().any(|c| c == "NAME_INVALID"))
            || (r.status == 404
                && codes
                    .iter()
                    .any(|c| c == "NAME_UNKNOWN" || c == "NAME_INVALID"));
        assert!(
            ok,
            "GET {target}: expected 400 NAME_INVALID or 404 NAME_UNKNOWN, got {} {codes:?}",
            r.status
        );
    }
}

#[tokio::test]
async fn blob_delete() {
    let ctx = Ctx::new().await;
    let d = ctx.push_blob("deleter", &pseudo_random(600, 13)).await;
    ctx.push_blob("deleter", b"survivor").await;
    let p = format!("/v2/deleter/blobs/{d}");
    expect_status(ctx.head(&p).await, 200, "HEAD before delete").await;
    expect_status(ctx.delete(&p).await, 202, "DELETE blob").await;
    assert_eq!(
        ctx.head(&p).await.status().as_u16(),
        404,
        "HEAD after delete"
    );
    ctx.expect_get_error(&p, 404, &["BLOB_UNKNOWN"], "GET after delete")
        .await;
    expect_error(
        ctx.delete(&p).await,
        404,
        &["BLOB_UNKNOWN"],
        "second DELETE",
    )
    .await;
    let other = sha256_digest(b"survivor");
    expect_status(
        ctx.head(&format!("/v2/deleter/blobs/{other}")).await,
        200,
        "other blob",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn manifest_put_get_head_by_tag_and_digest() {
    let ctx = Ctx::new().await;
    let repo = "img/app";
    let m = ctx.image_manifest(repo, 20).await;
    let d = sha256_digest(&m);

    let r = ctx.put_manifest(repo, "v1", OCI_MANIFEST, &m).await;
    let r = expect_status(r, 201, "PUT manifest by tag").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let loc = ctx.url(&must_hdr(&r, "location"));
    let loc_path = Url::parse(&loc).unwrap().path().to_string();
    assert!(
        loc_path == format!("/v2/{repo}/manifests/{d}")
            || loc_path == format!("/v2/{repo}/manifests/v1"),
        "manifest Location {loc_path:?}"
    );

    for reference in ["v1", d.as_str()] {
        let p = format!("/v2/{repo}/manifests/{reference}");
        let g = send(ctx.req(Method::GET, &p).header("accept", OCI_MANIFEST)).await;
        let g = expect_status(g, 200, &format!("GET manifest {reference}")).await;
        assert_eq!(must_hdr(&g, "content-type"), OCI_MANIFEST);
        assert_eq!(must_hdr(&g, "docker-content-digest"), d);
        assert_eq!(must_hdr(&g, "content-length"), m.len().to_string());
        assert_eq!(
            g.bytes().await.unwrap().as_ref(),
            &m[..],
            "exact bytes via {reference}"
        );

        let h = send(ctx.req(Method::HEAD, &p).header("accept", OCI_MANIFEST)).await;
        let h = expect_status(h, 200, &format!("HEAD manifest {reference}")).await;
        assert_eq!(must_hdr(&h, "content-type"), OCI_MANIFEST);
        assert_eq!(must_hdr(&h, "docker-content-digest"), d);
        assert_eq!(must_hdr(&h, "content-length"), m.len().to_string());
        assert!(h.bytes().await.unwrap().is_empty());
    }

    // GET without an Accept header still works.
    ctx.assert_get_body(&format!("/v2/{repo}/manifests/v1"), "GET no accept", &m[..])
        .await;
}

#[tokio::test]
async fn manifest_referencing_unknown_blob_is_rejected() {
    let ctx = Ctx::new().await;
    let repo = "refs";
    let config = b"{}".to_vec();
    let cd = ctx.push_blob(repo, &config).await;
    let layer = pseudo_random(300, 21);
    let ld = ctx.push_blob(repo, &layer).await;
    let missing = sha256_digest(b"never uploaded");

    let bad_layer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config.len()},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()},
            {"mediaType": OCI_LAYER, "digest": missing, "size": 14},
        ],
    }))
    .unwrap();
    let r = ctx
        .put_manifest(repo, "badlayer", OCI_MANIFEST, &bad_layer)
        .await;
    expect_error(
        r,
        400,
        &["MANIFEST_BLOB_UNKNOWN"],
        "manifest with unknown layer",
    )
    .await;

    let bad_config = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": missing, "size": 14},
        "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    let r = ctx
        .put_manifest(repo, "badconfig", OCI_MANIFEST, &bad_config)
        .await;
    expect_error(
        r,
        400,
        &["MANIFEST_BLOB_UNKNOWN"],
        "manifest with unknown config",
    )
    .await;

    // Blob known in another repository only is still unknown here.
    let foreign = pseudo_random(200, 22);
    let fd = ctx.push_blob("elsewhere", &foreign).await;
    let cross = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": fd, "size": foreign.len()}],
    }))
    .unwrap();
    let r = ctx.put_manifest(repo, "cross", OCI_MANIFEST, &cross).await;
    expect_error(
        r,
        400,
        &["MANIFEST_BLOB_UNKNOWN"],
        "manifest with blob of another repo",
    )
    .await;

    for t in ["badlayer", "badconfig", "cross"] {
        ctx.expect_get_error(
            &format!("/v2/{repo}/manifests/{t}"),
            404,
            &["MANIFEST_UNKNOWN"],
            "rejected manifest must not be tagged",
        )
        .await;
    }
}

#[tokio::test]
async fn manifest_invalid_json_is_rejected() {
    let ctx = Ctx::new().await;
    ctx.push_image("badjson", "ok", 23).await;
    let bodies: [&[u8]; 4] = [
        b"{not json",
        b"",
        b"[1,2,3]",
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":"#,
    ];
    for body in bodies {
        let r = ctx
            .put_manifest("badjson", "broken", OCI_MANIFEST, body)
            .await;
        expect_error(
            r,
            400,
            &["MANIFEST_INVALID"],
            &format!("PUT invalid manifest {:?}", String::from_utf8_lossy(body)),
        )
        .await;
    }
    ctx.expect_get_error(
        "/v2/badjson/manifests/broken",
        404,
        &["MANIFEST_UNKNOWN"],
        "invalid manifest must not be stored",
    )
    .await;
}

/// A syntactically valid manifest body just over the 4 MiB limit.
fn oversized_manifest() -> Vec<u8> {
    let pad = "a".repeat(4 * 1024 * 1024 + 1024);
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(b"x"), "size": 1},
        "layers": [],
        "annotations": {"pad": pad},
    }))
    .unwrap();
    assert!(body.len() > 4 * 1024 * 1024);
    body
}

/// An ordinary client (no `Expect`) sends the whole body and must be able to
/// read the 413.
#[tokio::test]
async fn manifest_over_4_mib_is_rejected_with_413() {
    let ctx = Ctx::new().await;
    ctx.push_image("huge", "ok", 24).await;
    let body = oversized_manifest();
    let req = ctx
        .req(Method::PUT, "/v2/huge/manifests/big")
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .build()
        .unwrap();
    let r = match ctx.c.execute(req).await {
        Ok(r) => r,
        Err(e) => panic!(
            "PUT /v2/huge/manifests/big (4 MiB + 1 KiB, Content-Length set): the client never \
             received a response because the server closed the connection while the body was \
             still being sent: {e:?}"
        ),
    };
    expect_error(r, 413, &[], "PUT 4 MiB+ manifest").await;
    ctx.expect_get_error(
        "/v2/huge/manifests/big",
        404,
        &["MANIFEST_UNKNOWN"],
        "oversized manifest must not be stored",
    )
    .await;
    ctx.get_ok("/v2/huge/manifests/ok", "server still healthy")
        .await;
}

/// With `Expect: 100-continue` the server can refuse by Content-Length alone.
#[tokio::test]
async fn manifest_over_4_mib_with_expect_continue_gets_413_before_body() {
    let ctx = Ctx::new().await;
    ctx.push_image("huge", "ok", 24).await;
    let len = oversized_manifest().len();
    let mut conn = RawConn::connect(&ctx.host_port).await;
    conn.write(
        format!(
            "PUT /v2/huge/manifests/big HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            ctx.host_port
        )
        .as_bytes(),
    )
    .await;
    let r = conn.read_response(false).await;
    assert_eq!(
        r.status, 413,
        "expected a final 413 instead of 100 Continue"
    );
    assert!(!raw_error_codes(&r).is_empty());
    drop(conn);
    ctx.expect_get_error(
        "/v2/huge/manifests/big",
        404,
        &["MANIFEST_UNKNOWN"],
        "oversized manifest must not be stored",
    )
    .await;
}

#[tokio::test]
async fn manifest_put_by_digest() {
    let ctx = Ctx::new().await;
    let repo = "bydigest";
    let m = ctx.image_manifest(repo, 25).await;
    let d = sha256_digest(&m);
    let wrong = sha256_digest(b"different bytes");
    let r = ctx.put_manifest(repo, &wrong, OCI_MANIFEST, &m).await;
    expect_error(
        r,
        400,
        &["DIGEST_INVALID"],
        "PUT manifest with mismatching digest",
    )
    .await;
    ctx.expect_get_error(
        &format!("/v2/{repo}/manifests/{wrong}"),
        404,
        &["MANIFEST_UNKNOWN"],
        "GET mismatching digest",
    )
    .await;

    let r = ctx.put_manifest(repo, &d, OCI_MANIFEST, &m).await;
    let r = expect_status(r, 201, "PUT manifest by matching digest").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    ctx.assert_get_body(&format!("/v2/{repo}/manifests/{d}"), "GET", &m[..])
        .await;
    // Untagged: not in tags list.
    assert!(ctx.tags(repo).await.is_empty());
}

#[tokio::test]
async fn invalid_tags_are_rejected() {
    let ctx = Ctx::new().await;
    let repo = "tagcheck";
    let m = ctx.image_manifest(repo, 26).await;
    let long_bad = "a".repeat(129);
    for tag in ["-bad", ".bad", long_bad.as_str(), "b@d"] {
        let r = ctx.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        expect_error(
            r,
            400,
            &["TAG_INVALID"],
            &format!("PUT manifest with tag {tag:?}"),
        )
        .await;
    }
    // Boundary: 128 characters, and the full allowed alphabet, are fine.
    let long_ok = format!("A{}", "b".repeat(127));
    for tag in [long_ok.as_str(), "_Under.score-1", "9"] {
        let r = ctx.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        expect_status(r, 201, &format!("PUT manifest with valid tag {tag:?}")).await;
    }
    let mut tags = ctx.tags(repo).await;
    tags.sort();
    let mut want = vec![
        long_ok.clone(),
        "_Under.score-1".to_string(),
        "9".to_string(),
    ];
    want.sort();
    assert_eq!(tags, want);
}

#[tokio::test]
async fn unknown_manifests() {
    let ctx = Ctx::new().await;
    ctx.push_image("known", "v1", 27).await;
    ctx.expect_get_error(
        "/v2/known/manifests/nope",
        404,
        &["MANIFEST_UNKNOWN"],
        "unknown tag",
    )
    .await;
    assert_eq!(
        ctx.head("/v2/known/manifests/nope").await.status().as_u16(),
        404
    );
    let d = sha256_digest(b"no such manifest");
    ctx.expect_get_error(
        &format!("/v2/known/manifests/{d}"),
        404,
        &["MANIFEST_UNKNOWN"],
        "unknown digest",
    )
    .await;
    ctx.expect_get_error(
        "/v2/never/pushed/manifests/latest",
        404,
        &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"],
        "unknown repository",
    )
    .await;
    let r = ctx.delete(&format!("/v2/known/manifests/{d}")).await;
    expect_error(r, 404, &["MANIFEST_UNKNOWN"], "DELETE unknown manifest").await;
}

#[tokio::test]
async fn manifests_are_stored_byte_exact() {
    let ctx = Ctx::new().await;
    let repo = "exact";
    let compact = ctx.image_manifest(repo, 28).await;
    let v: Value = serde_json::from_slice(&compact).unwrap();
    let pretty = serde_json::to_vec_pretty(&v).unwrap();
    let mut newline = compact.clone();
    newline.push(b'\n');

    let mut digests = Vec::new();
    for (tag, body) in [
        ("compact", &compact),
        ("pretty", &pretty),
        ("newline", &newline),
    ] {
        let r = ctx.put_manifest(repo, tag, OCI_MANIFEST, body).await;
        let r = expect_status(r, 201, &format!("PUT {tag}")).await;
        let d = must_hdr(&r, "docker-content-digest");
        assert_eq!(
            d,
            sha256_digest(body),
            "digest of {tag} is over the exact bytes"
        );
        digests.push(d.clone());
        for reference in [tag, d.as_str()] {
            let g = ctx
                .get_ok(
                    &format!("/v2/{repo}/manifests/{reference}"),
                    &format!("GET {reference}"),
                )
                .await;
            assert_eq!(must_hdr(&g, "docker-content-digest"), d);
            assert_eq!(
                g.bytes().await.unwrap().as_ref(),
                &body[..],
                "bytes of {reference}"
            );
        }
    }
    assert_ne!(digests[0], digests[1]);
    assert_ne!(digests[0], digests[2]);
    assert_ne!(digests[1], digests[2]);
}

#[tokio::test]
async fn docker_schema2_manifest_is_accepted() {
    let ctx = Ctx::new().await;
    let repo = "docker/style";
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let layer = pseudo_random(700, 29);
    let cd = ctx.push_blob(repo, &config).await;
    let ld = ctx.push_blob(repo, &layer).await;
    let m = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.len(), "digest": cd},
        "layers": [{"mediaType": DOCKER_LAYER, "size": layer.len(), "digest": ld}],
    }))
    .unwrap();
    let d = sha256_digest(&m);
    let r = ctx.put_manifest(repo, "latest", DOCKER_MANIFEST, &m).await;
    let r = expect_status(r, 201, "PUT docker manifest").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    for reference in ["latest", d.as_str()] {
        let g = send(
            ctx.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", DOCKER_MANIFEST),
        )
        .await;
        let g = expect_status(g, 200, "GET docker manifest").await;
        assert_eq!(must_hdr(&g, "content-type"), DOCKER_MANIFEST);
        assert_eq!(must_hdr(&g, "docker-content-digest"), d);
        assert_eq!(g.bytes().await.unwrap().as_ref(), &m[..]);
    }
}

#[tokio::test]
async fn oci_index_is_accepted_and_checked() {
    let ctx = Ctx::new().await;
    let repo = "multi";
    let (m, md) = ctx.push_image(repo, "amd64", 30).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let d = sha256_digest(&index);
    let r = ctx.put_manifest(repo, "latest", OCI_INDEX, &index).await;
    let r = expect_status(r, 201, "PUT index").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    let g = send(
        ctx.req(Method::GET, &format!("/v2/{repo}/manifests/latest"))
            .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}")),
    )
    .await;
    let g = expect_status(g, 200, "GET index").await;
    assert_eq!(must_hdr(&g, "content-type"), OCI_INDEX);
    assert_eq!(must_hdr(&g, "docker-content-digest"), d);
    assert_eq!(g.bytes().await.unwrap().as_ref(), &index[..]);

    let missing = sha256_digest(b"no such child manifest");
    let bad = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": md, "size": m.len()},
            {"mediaType": OCI_MANIFEST, "digest": missing, "size": 123},
        ],
    }))
    .unwrap();
    let r = ctx.put_manifest(repo, "broken", OCI_INDEX, &bad).await;
    expect_error(
        r,
        400,
        &["MANIFEST_BLOB_UNKNOWN"],
        "index with unknown child",
    )
    .await;
    ctx.expect_get_error(
        &format!("/v2/{repo}/manifests/broken"),
        404,
        &["MANIFEST_UNKNOWN"],
        "rejected index must not be tagged",
    )
    .await;
}

#[tokio::test]
async fn pushing_a_tag_again_moves_it() {
    let ctx = Ctx::new().await;
    let repo = "retag";
    let (a, ad) = ctx.push_image(repo, "latest", 34).await;
    let (b, bd) = ctx.push_image(repo, "latest", 35).await;
    assert_ne!(ad, bd);
    let g = ctx
        .get_ok(&format!("/v2/{repo}/manifests/latest"), "GET")
        .await;
    assert_eq!(must_hdr(&g, "docker-content-digest"), bd);
    assert_eq!(g.bytes().await.unwrap().as_ref(), &b[..]);
    ctx.assert_get_body(&format!("/v2/{repo}/manifests/{ad}"), "old", &a[..])
        .await;
    assert_eq!(ctx.tags(repo).await, vec!["latest"]);
}

#[tokio::test]
async fn delete_manifest_by_tag_keeps_digest() {
    let ctx = Ctx::new().await;
    let repo = "untag";
    let (m, d) = ctx.push_image(repo, "keep", 31).await;
    let r = ctx.put_manifest(repo, "gone", OCI_MANIFEST, &m).await;
    expect_status(r, 201, "second tag").await;
    let mut tags = ctx.tags(repo).await;
    tags.sort();
    assert_eq!(tags, vec!["gone", "keep"]);

    expect_status(
        ctx.delete(&format!("/v2/{repo}/manifests/gone")).await,
        202,
        "DELETE tag",
    )
    .await;
    assert_eq!(ctx.tags(repo).await, vec!["keep"]);
    ctx.expect_get_error(
        &format!("/v2/{repo}/manifests/gone"),
        404,
        &["MANIFEST_UNKNOWN"],
        "GET deleted tag",
    )
    .await;
    ctx.assert_get_body(
        &format!("/v2/{repo}/manifests/{d}"),
        "GET by digest",
        &m[..],
    )
    .await;
    ctx.assert_get_body(
        &format!("/v2/{repo}/manifests/keep"),
        "GET other tag",
        &m[..],
    )
    .await;
}

#[tokio::test]
async fn delete_manifest_by_digest_removes_tags() {
    let ctx = Ctx::new().await;
    let repo = "undigest";
    let (m, d) = ctx.push_image(repo, "b1", 32).await;
    expect_status(
        ctx.put_manifest(repo, "b2", OCI_MANIFEST, &m).await,
        201,
        "tag b2",
    )
    .await;
    let (_, other) = ctx.push_image(repo, "other", 33).await;
    assert_ne!(d, other);

    expect_status(
        ctx.delete(&format!("/v2/{repo}/manifests/{d}")).await,
        202,
        "DELETE by digest",
    )
    .await;
    ctx.expect_get_error(
        &format!("/v2/{repo}/manifests/{d}"),
        404,
        &["MANIFEST_UNKNOWN"],
        "GET deleted digest",
    )
    .await;
    assert_eq!(
        ctx.head(&format!("/v2/{repo}/manifests/{d}"))
            .await
            .status()
            .as_u16(),
        404
    );
    for t in ["b1", "b2"] {
        ctx.expect_get_error(
            &format!("/v2/{repo}/manifests/{t}"),
            404,
            &["MANIFEST_UNKNOWN"],
            "GET tag of deleted manifest",
        )
        .await;
    }
    assert_eq!(ctx.tags(repo).await, vec!["other"]);
    ctx.get_ok(&format!("/v2/{repo}/manifests/{other}"), "other survives")
        .await;
}

// ---------------------------------------------------------------------------
// Tags list and catalog
// ---------------------------------------------------------------------------

/// The tags of `sorted` that come lexically after `last`.
fn tags_after(sorted: &[String], last: &str) -> Vec<String> {
    sorted
        .iter()
        .filter(|t| t.as_str() > last)
        .cloned()
        .collect()
}

#[tokio::test]
async fn tags_list_sorted_and_paginated() {
    let ctx = Ctx::new().await;
    let repo = "paged/tags";
    let (m, _) = ctx.push_image(repo, "latest", 40).await;
    let mut expected: Vec<String> = vec!["latest".into()];
    for t in [
        "t05", "a", "t00", "t09", "t01", "t02", "t08", "t03", "t04", "t07", "t06", "B",
    ] {
        expect_status(
            ctx.put_manifest(repo, t, OCI_MANIFEST, &m).await,
            201,
            "tag",
        )
        .await;
        expected.push(t.to_string());
    }
    expected.sort();

    // Full list, lexically sorted.
    assert_eq!(ctx.tags(repo).await, expected);

    // n=3: first page plus a Link to the next one.
    let r = ctx
        .get_ok(&format!("/v2/{repo}/tags/list?n=3"), "n=3")
        .await;
    let link = next_link(&r).expect("Link header on a partial page");
    let link = ctx.url(&link);
    assert_eq!(
        Url::parse(&link).unwrap().path(),
        format!("/v2/{repo}/tags/list")
    );
    assert_eq!(query_param(&link, "n").as_deref(), Some("3"));
    let v: Value = r.json().await.unwrap();
    let page = tag_array(&v);
    assert_eq!(page, expected[..3].to_vec());
    assert_eq!(
        query_param(&link, "last").as_deref(),
        Some(expected[2].as_str())
    );

    // Follow links to the end.
    let mut all = page;
    let mut next = Some(link);
    let mut pages = 1;
    while let Some(url) = next.take() {
        pages += 1;
        assert!(pages <= 20, "too many pages following Link headers");
        let r = ctx.get_ok(&url, "follow Link").await;
        next = next_link(&r).map(|l| ctx.url(&l));
        let v: Value = r.json().await.unwrap();
        let page = tag_array(&v);
        assert!(page.len() <= 3, "page larger than n=3: {page:?}");
        if next.is_some() {
            assert_eq!(page.len(), 3, "non-final page must be full");
        }
        all.extend(page);
    }
    assert_eq!(all, expected);

    // n larger than the number of tags: everything, no Link.
    let r = ctx
        .get_ok(&format!("/v2/{repo}/tags/list?n=100"), "n=100")
        .await;
    assert!(
        hdr(&r, "link").is_none(),
        "no Link when the page is complete"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(tag_array(&v), expected);

    // n=0 → empty list.
    let page = ctx.tags_page(repo, "?n=0", "n=0").await;
    assert!(page.is_empty(), "n=0 must return no tags: {page:?}");

    // last=x → only tags after x.
    assert_eq!(
        ctx.tags_page(repo, "?last=t04", "last").await,
        tags_after(&expected, "t04")
    );
    // last= a value that is not itself a tag.
    assert_eq!(
        ctx.tags_page(repo, "?last=s", "last=s").await,
        tags_after(&expected, "s")
    );
    // n and last combined.
    assert_eq!(
        ctx.tags_page(repo, "?n=2&last=t00", "n+last").await,
        vec!["t01", "t02"]
    );

    // Bad n.
    ctx.expect_get_error(&format!("/v2/{repo}/tags/list?n=abc"), 400, &[], "n=abc")
        .await;
    ctx.expect_get_error(&format!("/v2/{repo}/tags/list?n=-1"), 400, &[], "n=-1")
        .await;

    // Unknown repository.
    ctx.expect_get_error(
        "/v2/no/such/repo/tags/list",
        404,
        &["NAME_UNKNOWN"],
        "tags of unknown repo",
    )
    .await;
}

#[tokio::test]
async fn catalog_sorted_and_paginated() {
    let ctx = Ctx::new().await;
    let repos = ["zeta/x", "alpha", "a/b/c", "mid", "a/b"];
    for (i, r) in repos.iter().enumerate() {
        ctx.push_image(r, "latest", 50 + i as u64).await;
    }
    let mut expected: Vec<String> = repos.iter().map(|s| s.to_string()).collect();
    expected.sort();

    let read = |v: Value| -> Vec<String> {
        match &v["repositories"] {
            Value::Null => Vec::new(),
            Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
            other => panic!("`repositories` not an array: {other}"),
        }
    };

    let r = ctx.get_ok("/v2/_catalog", "catalog").await;
    assert_eq!(read(r.json().await.unwrap()), expected);

    let r = ctx.get_ok("/v2/_catalog?n=2", "catalog n=2").await;
    let link = ctx.url(&next_link(&r).expect("Link header on partial catalog page"));
    assert_eq!(Url::parse(&link).unwrap().path(), "/v2/_catalog");
    assert_eq!(query_param(&link, "n").as_deref(), Some("2"));
    assert_eq!(
        query_param(&link, "last").as_deref(),
        Some(expected[1].as_str())
    );
    let mut all = read(r.json().await.unwrap());
    assert_eq!(all, expected[..2].to_vec());
    let mut next = Some(link);
    let mut pages = 1;
    while let Some(url) = next.take() {
        pages += 1;
        assert!(pages <= 20, "too many catalog pages");
        let r = ctx.get_ok(&url, "follow catalog Link").await;
        next = next_link(&r).map(|l| ctx.url(&l));
        let page = read(r.json().await.unwrap());
        assert!(page.len() <= 2);
        all.extend(page);
    }
    assert_eq!(all, expected);

    ctx.expect_get_error("/v2/_catalog?n=abc", 400, &[], "catalog n=abc")
        .await;
}

// ---------------------------------------------------------------------------
// Referrers
// ---------------------------------------------------------------------------

async fn push_artifact(
    ctx: &Ctx,
    repo: &str,
    subject: (&[u8], &str),
    artifact_type: Option<&str>,
    config_media_type: &str,
    seed: u64,
) -> (Vec<u8>, String, Response) {
    let empty = b"{}".to_vec();
    let cd = ctx.push_blob(repo, &empty).await;
    let payload = pseudo_random(64, seed);
    let pd = ctx.push_blob(repo, &payload).await;
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": cd, "size": empty.len()},
        "layers": [{"mediaType": "application/vnd.example.blob", "digest": pd, "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.1, "size": subject.0.len()},
        "annotations": {"seed": seed.to_string()},
    });
    if let Some(at) = artifact_type {
        v["artifactType"] = json!(at);
    }
    let body = serde_json::to_vec(&v).unwrap();
    let d = sha256_digest(&body);
    let r = ctx.put_manifest(repo, &d, OCI_MANIFEST, &body).await;
    let r = expect_status(r, 201, "PUT referrer").await;
    assert_eq!(must_hdr(&r, "docker-content-digest"), d);
    (body, d, r)
}

/// GET the referrers index; returns the `OCI-Filters-Applied` header and the
/// `manifests` array.
async fn referrers(
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    query: &str,
) -> (Option<String>, Vec<Value>) {
    let r = ctx
        .get(&format!("/v2/{repo}/referrers/{digest}{query}"))
        .await;
    let r = expect_status(r, 200, "GET referrers").await;
    let ct = must_hdr(&r, "content-type");
    assert!(ct.starts_with(OCI_INDEX), "referrers content-type {ct:?}");
    let filters = hdr(&r, "oci-filters-applied");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2, "referrers index: {v}");
    assert_eq!(v["mediaType"], OCI_INDEX, "referrers index: {v}");
    let list = v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("`manifests` must be an array: {v}"))
        .clone();
    (filters, list)
}

#[tokio::test]
async fn referrers_api() {
    let ctx = Ctx::new().await;
    let repo = "refer/rers";
    let (subject, sd) = ctx.push_image(repo, "v1", 60).await;

    let (sbom, sbom_d, r) = push_artifact(
        &ctx,
        repo,
        (&subject, &sd),
        Some("application/vnd.example.sbom"),
        OCI_EMPTY,
        61,
    )
    .await;
    assert_eq!(must_hdr(&r, "oci-subject"), sd);
    let (sig, sig_d, r) = push_artifact(
        &ctx,
        repo,
        (&subject, &sd),
        Some("application/vnd.example.sig"),
        OCI_EMPTY,
        62,
    )
    .await;
    assert_eq!(must_hdr(&r, "oci-subject"), sd);

    let (_, list) = referrers(&ctx, repo, &sd, "").await;
    assert_eq!(list.len(), 2, "two referrers: {list:?}");
    for (body, d, at) in [
        (&sbom, &sbom_d, "application/vnd.example.sbom"),
        (&sig, &sig_d, "application/vnd.example.sig"),
    ] {
        let e = list
            .iter()
            .find(|e| e["digest"] == d.as_str())
            .unwrap_or_else(|| panic!("referrer {d} missing from {list:?}"));
        assert_eq!(e["mediaType"], OCI_MANIFEST);
        assert_eq!(e["size"], body.len());
        assert_eq!(e["artifactType"], at);
    }
    // The subject itself is not its own referrer.
    assert!(list.iter().all(|e| e["digest"] != sd.as_str()));

    // Filtering.
    let (filters, list) = referrers(
        &ctx,
        repo,
        &sd,
        "?artifactType=application/vnd.example.sbom",
    )
    .await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(list.len(), 1, "filtered: {list:?}");
    assert_eq!(list[0]["digest"], sbom_d.as_str());

    // Unknown (well-formed) digest → empty index.
    let unknown = sha256_digest(b"nobody refers to me");
    let (_, list) = referrers(&ctx, repo, &unknown, "").await;
    assert!(list.is_empty());

    // Malformed digest → 400.
    ctx.expect_get_error(
        &format!("/v2/{repo}/referrers/sha256:xyz"),
        400,
        &[],
        "referrers of malformed digest",
    )
    .await;

    // Deleting the referrer removes it from the list.
    expect_status(
        ctx.delete(&format!("/v2/{repo}/manifests/{sbom_d}")).await,
        202,
        "DELETE referrer",
    )
    .await;
    let (_, list) = referrers(&ctx, repo, &sd, "").await;
    assert_eq!(list.len(), 1, "after delete: {list:?}");
    assert_eq!(list[0]["digest"], sig_d.as_str());
}

/// Without `artifactType`, the referrers entry uses the config media type.
#[tokio::test]
async fn referrers_artifact_type_falls_back_to_config_media_type() {
    let ctx = Ctx::new().await;
    let repo = "refer/fallback";
    let (subject, sd) = ctx.push_image(repo, "v1", 70).await;
    let (_, d, r) = push_artifact(
        &ctx,
        repo,
        (&subject, &sd),
        None,
        "application/vnd.example.config.v1+json",
        71,
    )
    .await;
    assert_eq!(must_hdr(&r, "oci-subject"), sd);
    let (_, list) = referrers(&ctx, repo, &sd, "").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], d.as_str());
    assert_eq!(
        list[0]["artifactType"],
        "application/vnd.example.config.v1+json"
    );
}

// ---------------------------------------------------------------------------
// Routing errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsupported_methods_and_unknown_paths() {
    let ctx = Ctx::new().await;
    ctx.push_image("routes", "latest", 80).await;
    for (m, p) in [
        (Method::PUT, "/v2/"),
        (Method::POST, "/v2/routes/tags/list"),
        (Method::PATCH, "/v2/routes/manifests/latest"),
        (Method::DELETE, "/v2/_catalog"),
    ] {
        let r = send(ctx.req(m.clone(), p).body(Vec::<u8>::new())).await;
        expect_error(r, 405, &["UNSUPPORTED"], &format!("{m} {p}")).await;
    }
    for p in [
        "/v2/routes/frobnicate/x",
        "/v2/routes/blobs/uploads/a/b/c",
        "/v2/routes/nothing",
    ] {
        ctx.expect_get_error(p, 404, &[], &format!("GET {p}")).await;
    }
}
