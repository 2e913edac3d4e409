//! Regression tests for issue 8 (hardening): every request answered, nothing held for
//! ever, no name or secret leaked, spec-exact errors.
//!
//! Requests go over a raw TCP socket wherever a client library would tidy them. Every
//! wait is bounded by a generous deadline; no test measures speed (the load generator
//! does that).

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{htpasswd_add, raw_exchange, raw_header, sha256_digest, Server};

/// Upper bound for any answer the server owes us.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<String> {
        raw_header(&self.head, name)
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `code` of the first OCI error in the body.
    fn oci_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an OCI error body ({e}): {}", self.body_text()));
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A raw client connection that reads responses one at a time (keep-alive,
/// pipelining).
struct RawConn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl RawConn {
    fn open(port: u16) -> RawConn {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        RawConn {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads more bytes; `false` at the end of the stream (or a reset).
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!(
                "no answer within {ANSWER_TIMEOUT:?}: {e}; pending: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
        }
    }

    /// The next response (bodies are framed by Content-Length; HEAD answers by none).
    fn response(&mut self, head_request: bool) -> RawResponse {
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill(),
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let length: usize = if head_request || status == 204 {
            0
        } else {
            raw_header(&head, "content-length")
                .map(|l| l.parse().expect("Content-Length"))
                .unwrap_or(0)
        };
        while self.pending.len() < head_end + 4 + length {
            assert!(self.fill(), "connection closed inside a response body");
        }
        let rest = self.pending.split_off(head_end + 4 + length);
        let body = self.pending[head_end + 4..].to_vec();
        self.pending = rest;
        RawResponse { status, head, body }
    }

    /// Whether the server closes the connection (with nothing more to say) within
    /// `budget`.
    fn closed_within(&mut self, budget: Duration) -> bool {
        self.stream.set_read_timeout(Some(budget)).unwrap();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        self.stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        closed
    }
}

/// One request, one response, on a fresh connection.
fn exchange(port: u16, request: &[u8]) -> RawResponse {
    let mut conn = RawConn::open(port);
    conn.send(request);
    conn.response(request.starts_with(b"HEAD "))
}

/// The server still answers a plain `GET /v2/`.
fn assert_serving(port: u16) {
    let answer = exchange(port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer.status, 200, "{}", answer.head);
}

fn plain_server(dir: &Path, extra: &str) -> Server {
    let config = format!("[server]\nlisten = \"127.0.0.1:{{PLAIN_PORT}}\"\n{extra}");
    Server::start_with_config(&config, dir)
}

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("portcullis-hardening-")
        .tempdir()
        .expect("work dir")
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[test]
fn issue8_malformed_request_heads_get_an_answer_then_a_close() {
    let work = workdir();
    let server = plain_server(work.path(), "");
    let port = server.port();
    let many_headers: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "two different Content-Length",
            b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
        ),
        (
            "Content-Length not a number",
            b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "negative Content-Length",
            b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in a header name",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n".to_vec(),
            400,
        ),
        (
            "header line without colon",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n".to_vec(),
            400,
        ),
        (
            "NUL in a header value",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "1000 header fields",
            format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            "a 2 MiB header field",
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(2 << 20)
            )
            .into_bytes(),
            431,
        ),
        (
            "a 100 KiB target",
            format!(
                "GET /v2/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(100 << 10)
            )
            .into_bytes(),
            414,
        ),
        (
            "a 10 KiB target",
            format!(
                "GET /v2/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(10 << 10)
            )
            .into_bytes(),
            414,
        ),
        (
            "a 100 KiB header section",
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(100 << 10)
            )
            .into_bytes(),
            431,
        ),
        (
            "HTTP/1.2",
            b"GET /v2/ HTTP/1.2\r\nHost: x\r\n\r\n".to_vec(),
            505,
        ),
        (
            "HTTP/3.0",
            b"GET /v2/ HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(),
            505,
        ),
        (
            "unknown Transfer-Encoding",
            b"POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
        (
            "chunked not last",
            b"POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
            501,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST /v2/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "absolute-form target for another host",
            b"GET http://elsewhere.example/v2/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two Host fields",
            b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "userinfo in Host",
            b"GET /v2/ HTTP/1.1\r\nHost: user@x\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, request, expected) in cases {
        let mut conn = RawConn::open(port);
        conn.send(&request);
        let answer = conn.response(false);
        assert_eq!(
            answer.status,
            expected,
            "{what}: {}\n{}",
            answer.head,
            answer.body_text()
        );
        assert_eq!(
            answer.header("connection").as_deref(),
            Some("close"),
            "{what}: {}",
            answer.head
        );
        assert!(!answer.body.is_empty(), "{what}: the answer says why");
        assert!(
            conn.closed_within(ANSWER_TIMEOUT),
            "{what}: the server must close"
        );
    }
    // Control bytes in the target: pingora percent-escapes them, so the request gets an
    // answer for the path it names (no such endpoint), on a connection kept open.
    let control = exchange(port, b"GET /v2/\x01\x7f HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(control.status, 404, "{}", control.head);
    assert_eq!(control.oci_code(), "UNSUPPORTED");
    // The server is fine afterwards.
    assert_serving(port);
}

#[test]
fn issue8_short_or_silent_connections_are_closed_by_the_head_deadline() {
    let work = workdir();
    let server = plain_server(work.path(), "[limits]\nheader_timeout_secs = 1\n");
    let port = server.port();
    // With h2c on, a request shorter than the 24-byte h2 preface is answered at once.
    let answer = exchange(port, b"GET /v2/ HTTP/1.0\r\n\r\n");
    assert_eq!(answer.status, 200, "{}", answer.head);

    // A head that never ends: 408, then a close.
    let mut partial = RawConn::open(port);
    partial.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n");
    let answer = partial.response(false);
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert!(partial.closed_within(ANSWER_TIMEOUT));

    // A few bytes, the start of the h2 preface, or nothing at all: closed.
    for bytes in [&b"G"[..], b"PRI * HTTP/2.0\r\n", b""] {
        let mut conn = RawConn::open(port);
        conn.send(bytes);
        assert!(
            conn.closed_within(ANSWER_TIMEOUT),
            "a connection that sent {bytes:?} must be closed by the deadline"
        );
    }
    assert_serving(port);
}

#[test]
fn issue8_connections_per_client_address_are_capped() {
    let work = workdir();
    let server = plain_server(
        work.path(),
        "[limits]\nmax_connections_per_ip = 3\nheader_timeout_secs = 30\n",
    );
    let port = server.port();
    let mut held: Vec<RawConn> = (0..3)
        .map(|_| {
            let mut conn = RawConn::open(port);
            conn.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(conn.response(false).status, 200);
            conn
        })
        .collect();
    let mut refused = RawConn::open(port);
    assert!(
        refused.closed_within(ANSWER_TIMEOUT),
        "a fourth connection from the same address is closed at once"
    );
    // Closing one frees its place.
    drop(held.pop());
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let mut conn = RawConn::open(port);
        conn.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if !conn.closed_within(Duration::from_secs(2)) || !conn.pending.is_empty() {
            assert!(String::from_utf8_lossy(&conn.pending).starts_with("HTTP/1.1 200"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given out"
        );
    }
}

#[test]
fn issue8_pipelined_requests_are_answered_in_order() {
    let work = workdir();
    let server = plain_server(work.path(), "");
    let mut conn = RawConn::open(server.port());
    conn.send(
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /v2/none/here/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /v2/none/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(conn.response(false).status, 200);
    let catalog = conn.response(false);
    assert_eq!(catalog.status, 200);
    assert!(
        catalog.body_text().contains("repositories"),
        "{}",
        catalog.body_text()
    );
    assert_eq!(conn.response(true).status, 404);
    let last = conn.response(false);
    assert_eq!(last.status, 404);
    assert_eq!(last.oci_code(), "NAME_UNKNOWN");
    assert!(
        conn.closed_within(ANSWER_TIMEOUT),
        "closed after Connection: close"
    );

    // Requests with bodies in the pipeline: each body ends where its Content-Length
    // (or last chunk) says, and the next request follows.
    let digest = sha256_digest(b"hello");
    let mut conn = RawConn::open(server.port());
    let pipeline = format!(
        "POST /v2/team/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         HEAD /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    conn.send(pipeline.as_bytes());
    assert_eq!(conn.response(false).status, 201);
    let head = conn.response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("5"));
    assert_eq!(conn.response(false).status, 202);
    let blob = conn.response(false);
    assert_eq!(blob.status, 200);
    assert_eq!(blob.body, b"hello");
}

#[test]
fn issue8_http10_closes_unless_keep_alive_was_asked_for() {
    let work = workdir();
    let server = plain_server(work.path(), "");
    let mut conn = RawConn::open(server.port());
    conn.send(b"GET /v2/ HTTP/1.0\r\n\r\n");
    assert_eq!(conn.response(false).status, 200);
    assert!(
        conn.closed_within(ANSWER_TIMEOUT),
        "HTTP/1.0 without keep-alive"
    );

    let mut conn = RawConn::open(server.port());
    conn.send(b"GET /v2/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(conn.response(false).status, 200);
    conn.send(b"GET /v2/_catalog HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(
        conn.response(false).status,
        200,
        "the connection stayed open"
    );
}

/// Starts an upload session and returns its path.
fn start_upload(port: u16, repo: &str) -> String {
    let answer = exchange(
        port,
        format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(answer.status, 202, "{}", answer.head);
    answer.header("location").expect("Location")
}

fn upload_range(port: u16, location: &str) -> String {
    let answer = exchange(
        port,
        format!("GET {location} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert_eq!(answer.status, 204, "{}", answer.head);
    answer.header("range").expect("Range")
}

#[test]
fn issue8_chunk_lengths_are_checked_without_overflow() {
    let work = workdir();
    let server = plain_server(work.path(), "");
    let port = server.port();
    let location = start_upload(port, "team/app");
    let patch = |extra: &str, body: &[u8]| {
        let mut request =
            format!("PATCH {location} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes();
        request.extend_from_slice(body);
        exchange(port, &request)
    };

    let wrapped = patch(
        "Content-Range: 0-18446744073709551615\r\nContent-Length: 0\r\n",
        b"",
    );
    assert_eq!(wrapped.status, 416, "{}", wrapped.body_text());
    assert_eq!(wrapped.oci_code(), "RANGE_INVALID");
    let wrapped = patch(
        "Content-Range: 0-18446744073709551615\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
    );
    assert_eq!(wrapped.status, 416, "{}", wrapped.body_text());

    let longer = patch(
        "Content-Range: 0-18446744073709551614\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
    );
    assert_eq!(longer.status, 400, "{}", longer.body_text());
    assert_eq!(longer.oci_code(), "BLOB_UPLOAD_INVALID");

    let empty_size_line = patch(
        "Transfer-Encoding: chunked\r\n",
        b"\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(
        empty_size_line.status,
        400,
        "{}",
        empty_size_line.body_text()
    );

    let short = patch(
        "Content-Range: 0-9\r\nTransfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(short.status, 400, "{}", short.body_text());
    assert!(
        short.body_text().contains("5 of the 10 bytes"),
        "{}",
        short.body_text()
    );

    // A chunk whose Content-Range is true still works, at the offset the session is at.
    let offset = upload_range(port, &location);
    let next: u64 = offset.split('-').nth(1).unwrap().parse::<u64>().unwrap();
    let start = if offset == "0-0" { 0 } else { next + 1 };
    let good = patch(
        &format!(
            "Content-Range: {start}-{}\r\nContent-Length: 5\r\n",
            start + 4
        ),
        b"hello",
    );
    assert_eq!(good.status, 202, "{}", good.body_text());
}

#[test]
fn issue8_catalog_challenges_and_pages_only_visible_names() {
    let work = workdir();
    htpasswd_add(&work.path().join("htpasswd"), "admin", "admin-pw");
    htpasswd_add(&work.path().join("htpasswd"), "alice", "alice-pw");
    let server = plain_server(
        work.path(),
        r#"[auth]
htpasswd = "htpasswd"
[[access]]
repositories = "team/*"
pull = ["alice"]
push = ["admin"]
[[access]]
repositories = "*"
push = ["admin"]
"#,
    );
    let port = server.port();
    let admin = basic("admin", "admin-pw");
    for repo in ["a/hidden", "team/one", "m/hidden", "team/two", "z/hidden"] {
        let digest = sha256_digest(repo.as_bytes());
        let request = format!(
            "POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nAuthorization: {admin}\r\nContent-Length: {}\r\n\r\n{repo}",
            repo.len()
        );
        assert_eq!(
            exchange(port, request.as_bytes()).status,
            201,
            "push to {repo}"
        );
    }
    let catalog = |query: &str, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        exchange(
            port,
            format!("GET /v2/_catalog{query} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
        )
    };

    let anonymous = catalog("", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body_text());
    assert!(anonymous
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Basic ")));

    let alice = basic("alice", "alice-pw");
    let first = catalog("?n=1", Some(&alice));
    assert_eq!(first.status, 200);
    assert_eq!(first.body_text(), r#"{"repositories":["team/one"]}"#);
    let link = first.header("link").expect("a Link to the next page");
    assert!(link.contains("last=team%2Fone"), "{link}");
    let second = catalog("?n=1&last=team%2Fone", Some(&alice));
    assert_eq!(second.body_text(), r#"{"repositories":["team/two"]}"#);
    assert_eq!(
        second.header("link"),
        None,
        "no visible name follows: {}",
        second.head
    );
    for answer in [&first, &second] {
        assert!(!answer.head.contains("hidden") && !answer.body_text().contains("hidden"));
    }
    let all = catalog("", Some(&admin));
    assert!(all.body_text().contains("z/hidden"), "{}", all.body_text());
}

#[test]
fn issue8_malformed_tags_are_unknown_manifests_on_reads() {
    let work = workdir();
    let server = plain_server(work.path(), "");
    let port = server.port();
    for method in ["GET", "HEAD", "DELETE"] {
        let answer = exchange(
            port,
            format!("{method} /v2/team/app/manifests/.INVALID_MANIFEST_NAME HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(answer.status, 404, "{method}: {}", answer.head);
        if method != "HEAD" {
            assert_eq!(answer.oci_code(), "MANIFEST_UNKNOWN");
        }
    }
    let put = exchange(
        port,
        b"PUT /v2/team/app/manifests/.INVALID_MANIFEST_NAME HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(put.status, 400, "{}", put.body_text());
    assert_eq!(put.oci_code(), "TAG_INVALID");
}

#[test]
fn issue8_debug_logs_never_contain_credentials() {
    let work = workdir();
    htpasswd_add(&work.path().join("htpasswd"), "alice", "alice-pw");
    let server = Server::start_with_config_env(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[auth]\nhtpasswd = \"htpasswd\"\n",
        work.path(),
        &[("RUST_LOG", "debug")],
    );
    let port = server.port();
    let secret = basic("alice", "alice-pw");
    let wrong = basic("alice", "wrong-pw");
    let token = secret.trim_start_matches("Basic ").to_string();
    // A head the parser refuses (its error carries the raw head), a bad login, a good one.
    let requests = [
        format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {secret}\r\nBad Header: v\r\n\r\n"),
        format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {wrong}\r\nConnection: close\r\n\r\n"),
        format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {secret}\r\nCookie: session=c00k1e\r\nConnection: close\r\n\r\n"),
    ];
    for request in &requests {
        raw_exchange(port, request.as_bytes(), ANSWER_TIMEOUT);
    }
    let log = server.log();
    assert!(
        log.contains("request head refused"),
        "the debug log ran:\n{log}"
    );
    for leaked in [token.as_str(), wrong.trim_start_matches("Basic "), "c00k1e"] {
        assert!(!log.contains(leaked), "the log contains {leaked:?}:\n{log}");
    }
}

#[test]
fn issue8_temp_files_left_by_a_crash_are_removed_at_start() {
    let work = workdir();
    let leftover = work
        .path()
        .join("data/tmp/3f2504e0-4f89-11d3-9a0c-0305e82c3301");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    let server = plain_server(work.path(), "");
    assert_serving(server.port());
    assert!(!leftover.exists(), "the half-written temp file is gone");
}

#[test]
fn issue8_full_disk_is_507_and_leaves_no_partial_files() {
    let work = workdir();
    let server = plain_server(
        work.path(),
        "[storage]\nmin_free_bytes = 1125899906842624\n",
    );
    let port = server.port();
    // The reserve (here more than any disk has) refuses new uploads before a byte is written.
    let answer = exchange(
        port,
        b"POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(answer.status, 507, "{}", answer.body_text());
    assert_eq!(answer.oci_code(), "UNKNOWN");
    assert!(
        answer.body_text().contains("storage.min_free_bytes"),
        "{}",
        answer.body_text()
    );
    let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let manifest = exchange(
        port,
        format!(
            "PUT /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\n\r\n{index}",
            index.len()
        )
        .as_bytes(),
    );
    assert_eq!(manifest.status, 507, "{}", manifest.body_text());
    drop(server);

    // A real full disk: a 4 MiB tmpfs as the data directory.
    if !common::is_root() {
        eprintln!("skipped the tmpfs half: mounting needs root (CI runs as root)");
        return;
    }
    let tiny = common::Tmpfs::mount(&work.path().join("tiny"), "4m");
    let server = Server::start_with_config(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[storage]\nmin_free_bytes = 0\n",
        tiny.path(),
    );
    let port = server.port();
    let location = start_upload(port, "team/big");
    let chunk = vec![7u8; 1 << 20];
    let mut saw_full = None;
    for i in 0..8 {
        let mut request = format!(
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            chunk.len()
        )
        .into_bytes();
        request.extend_from_slice(&chunk);
        let answer = exchange(port, &request);
        if answer.status == 507 {
            saw_full = Some((i, answer));
            break;
        }
        assert_eq!(answer.status, 202, "chunk {i}: {}", answer.body_text());
    }
    let (chunks_stored, full) = saw_full.expect("a 4 MiB disk fills up within 8 MiB");
    assert_eq!(full.oci_code(), "UNKNOWN");
    assert!(
        full.body_text().contains("storage is full"),
        "{}",
        full.body_text()
    );
    // The failed chunk left nothing behind: the session holds the chunks before it.
    let range = upload_range(port, &location);
    assert_eq!(
        range,
        format!("0-{}", chunks_stored * chunk.len() as u64 - 1)
    );
    // A manifest write that meets the full disk leaves no temp file either.
    let big_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{{"pad":"{}"}}}}"#,
        "x".repeat(3 << 20)
    );
    let answer = exchange(
        port,
        format!(
            "PUT /v2/team/big/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\n\r\n{big_manifest}",
            big_manifest.len()
        )
        .as_bytes(),
    );
    assert_eq!(answer.status, 507, "{}", answer.body_text());
    let tmp = std::fs::read_dir(tiny.path().join("data/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "a failed write left a temp file");
    // Cancelling the upload frees the space: pushes work again.
    let cancel = exchange(
        port,
        format!("DELETE {location} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert_eq!(cancel.status, 204);
    let digest = sha256_digest(b"small");
    let small = exchange(
        port,
        format!("POST /v2/team/big/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nsmall").as_bytes(),
    );
    assert_eq!(small.status, 201, "{}", small.body_text());
    drop(server);
}

#[test]
fn issue8_tls_h2_connection_without_preface_is_closed_by_the_deadline() {
    let work = workdir();
    common::run_ok(
        common::portcullis()
            .args(["certs", "--out"])
            .arg(work.path().join("certs"))
            .args(["--name", "localhost", "--ip", "127.0.0.1"]),
        ANSWER_TIMEOUT,
    );
    let server = Server::start_with_config(
        "[server]\ntls_listen = \"127.0.0.1:{TLS_PORT}\"\n[tls]\ncert = \"certs/server.crt\"\nkey = \"certs/server.key\"\n[limits]\nheader_timeout_secs = 1\n",
        work.path(),
    );
    // openssl negotiates h2, then sends nothing (its stdin stays open and empty).
    let mut client = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", server.tls_port()),
        ])
        .args(["-alpn", "h2", "-servername", "localhost", "-CAfile"])
        .arg(work.path().join("certs/ca.crt"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains("ALPN protocol: h2"),
        "h2 was negotiated:\n{out}"
    );
    assert!(
        status.is_some(),
        "the server must close an h2 connection that sends no preface:\n{out}"
    );
}
