//! Operations (issue 11): what the metrics listener reports after real client work,
//! JSON logs, readiness, and the signals: SIGTERM lets in-flight requests finish, and
//! `serve --upgrade` takes over the listening sockets under load without a failed
//! request.
//!
//! Every wait is bounded; no test measures speed (loadtest/ does that).

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    htpasswd_add, is_root, metric, portcullis, raw_exchange, run_ok, run_with_timeout,
    scrape_metrics, sha256_digest, ContainersEnv, ImageFixture, Server, METRICS_PORT, PLAIN_PORT,
};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const USER: &str = "ops-alice";
const PASSWORD: &str = "pw-Sekr3t-0ps-test";

/// `GET path` on the metrics listener: (status line, body).
fn monitoring(server: &Server, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: monitor\r\nConnection: close\r\n\r\n");
    let (status, _, body) = raw_exchange(server.metrics_port(), request.as_bytes(), ANSWER_TIMEOUT);
    (status, body)
}

/// A server with a login, JSON logs and a metrics listener.
fn server_with_login(dir: &Path) -> Server {
    htpasswd_add(&dir.join("htpasswd"), USER, PASSWORD);
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
[auth]
htpasswd = "htpasswd"
[metrics]
listen = "127.0.0.1:{METRICS_PORT}"
[log]
format = "json"
"#
    );
    Server::start_with_config(&config, dir)
}

#[test]
fn metrics_and_json_logs_follow_a_push_and_a_pull() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_login(dir.path());
    let image = ImageFixture::build("v1", &[200 * 1024, 50 * 1024]);
    // The config and the layers; the manifest is no blob upload.
    let blobs: Vec<String> = image.blob_digests()[1..].to_vec();
    let blob_bytes: usize = blobs.iter().map(|d| image.blob(d).len()).sum();
    let blob_count = blobs.len() as f64;
    let env = ContainersEnv::new();
    let creds = format!("{USER}:{PASSWORD}");
    let remote = format!("docker://{}/team/app:v1", server.host_port());

    let (status, body) = monitoring(&server, "/healthz");
    assert!(status.contains(" 200 "), "{status} {body}");
    let before = scrape_metrics(&server);
    let src = format!("oci:{}:{}", image.layout.display(), image.tag);
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &src,
            &remote,
        ]),
        CLIENT_TIMEOUT,
    );
    let pushed = scrape_metrics(&server);
    let delta = |after: &str, name: &str, labels: &[(&str, &str)]| {
        metric(after, name, labels) - metric(&before, name, labels)
    };
    let requests = "portcullis_http_requests_total";
    assert_eq!(
        delta(
            &pushed,
            requests,
            &[("route", "manifest"), ("method", "PUT"), ("status", "201")]
        ),
        1.0,
        "one manifest pushed:\n{pushed}"
    );
    assert_eq!(
        delta(
            &pushed,
            "portcullis_upload_sessions_total",
            &[("event", "completed")]
        ),
        blob_count,
        "every blob uploaded once"
    );
    let received = |scrape: &str| {
        ["upload", "upload_start"]
            .iter()
            .map(|r| {
                delta(
                    scrape,
                    "portcullis_http_received_bytes_total",
                    &[("route", r)],
                )
            })
            .sum::<f64>()
    };
    assert_eq!(
        received(&pushed),
        blob_bytes as f64,
        "blob bytes read exactly"
    );
    assert_eq!(
        delta(
            &pushed,
            "portcullis_http_received_bytes_total",
            &[("route", "manifest")]
        ),
        image.manifest.len() as f64
    );
    assert!(
        delta(
            &pushed,
            "portcullis_auth_attempts_total",
            &[("result", "success")]
        ) >= 1.0
    );
    assert_eq!(
        delta(
            &pushed,
            "portcullis_auth_attempts_total",
            &[("result", "failure")]
        ),
        0.0
    );
    assert!(
        metric(&pushed, "portcullis_store_bytes", &[("origin", "pushed")]) >= blob_bytes as f64,
        "stored bytes counted:\n{pushed}"
    );
    assert_eq!(
        metric(&pushed, "portcullis_http_requests_in_flight", &[]),
        0.0
    );
    assert_eq!(metric(&pushed, "portcullis_uploads_active", &[]), 0.0);

    let pulled_dir = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:v1", pulled_dir.path().join("layout").display());
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &remote,
            &dest,
        ]),
        CLIENT_TIMEOUT,
    );
    let pulled = scrape_metrics(&server);
    let pull_delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&pulled, name, labels) - metric(&pushed, name, labels)
    };
    assert_eq!(
        pull_delta(
            requests,
            &[("route", "blob"), ("method", "GET"), ("status", "200")]
        ),
        blob_count,
        "each blob pulled once"
    );
    assert_eq!(
        pull_delta("portcullis_http_sent_bytes_total", &[("route", "blob")]),
        blob_bytes as f64,
        "blob bytes sent exactly"
    );
    assert!(
        pull_delta(
            requests,
            &[("route", "manifest"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
    let latency = "portcullis_http_request_duration_seconds_count";
    assert!(
        metric(&pulled, latency, &[("route", "blob"), ("method", "GET")]) >= blob_count,
        "latency observed per request"
    );

    // JSON mode: every line is an object; access lines name the user; no secret.
    let log = server.full_log();
    let encoded = base64_of(&creds);
    assert!(!log.contains(PASSWORD), "the password reached the log");
    assert!(
        !log.contains(&encoded),
        "the Basic credentials reached the log"
    );
    let mut access = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        if value["target"] == "access" {
            access.push(value);
        }
    }
    let manifest_put = access
        .iter()
        .find(|a| a["method"] == "PUT" && a["path"] == "/v2/team/app/manifests/v1")
        .unwrap_or_else(|| panic!("no access line for the manifest push in:\n{log}"));
    assert_eq!(manifest_put["user"], USER);
    assert_eq!(manifest_put["status"], "201");
    assert_eq!(manifest_put["client"], "127.0.0.1");
    assert!(manifest_put["agent"].as_str().unwrap().contains("skopeo"));
    let blob_get = access
        .iter()
        .find(|a| a["method"] == "GET" && a["path"].as_str().unwrap().contains("/blobs/sha256:"))
        .expect("an access line for a blob pull");
    assert!(blob_get["sent"].as_u64().unwrap() > 0);
    assert!(blob_get["ms"].as_f64().is_some());
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn readiness_fails_while_the_store_is_read_only() {
    if !is_root() {
        eprintln!("skipped: making the data directory read-only needs a mount (root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n"
    );
    let server = Server::start_with_config(&config, dir.path());
    let readyz = format!("http://127.0.0.1:{}/readyz", server.metrics_port());
    let health =
        |url: &str| run_with_timeout(portcullis().args(["health", "--url", url]), ANSWER_TIMEOUT);
    let (status, body) = monitoring(&server, "/readyz");
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(health(&readyz).status.success());

    // A read-only bind mount over the data directory: what the server opens from
    // now on is read-only, while the files it holds open stay writable (a remount
    // of the whole file system would be refused as busy).
    let read_only = ReadOnlyBind::over(server.data_dir());
    let (status, body) = monitoring(&server, "/readyz");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    drop(read_only);
    assert!(status.contains(" 503 "), "{status} {body}");
    assert_eq!(ready["ready"], false);
    assert!(
        ready["checks"]["store"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{body}"
    );
    assert_eq!(ready["checks"]["metadata"], "ok");
    // Alive all the same: /healthz is about the process.
    let (status, _) = monitoring(&server, "/healthz");
    assert!(status.contains(" 200 "), "{status}");

    let (status, body) = monitoring(&server, "/readyz");
    assert!(status.contains(" 200 "), "writable again: {status} {body}");
    let refused = health(&format!(
        "http://127.0.0.1:{}/nothing",
        server.metrics_port()
    ));
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    assert!(refused.stderr.contains("404"), "{}", refused.stderr);
}

/// A read-only bind mount of a directory over itself, undone on drop.
struct ReadOnlyBind(std::path::PathBuf);

impl ReadOnlyBind {
    fn over(dir: &Path) -> ReadOnlyBind {
        let mount = |args: &[&str]| {
            run_ok(
                Command::new("mount").args(args).arg(dir).arg(dir),
                ANSWER_TIMEOUT,
            );
        };
        mount(&["--bind"]);
        let guard = ReadOnlyBind(dir.to_path_buf());
        run_ok(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(dir),
            ANSWER_TIMEOUT,
        );
        guard
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Pushes one blob of `bytes` monolithically; its digest.
fn push_blob(port: u16, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let head = format!(
        "POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(bytes);
    let (status, _, body) = raw_exchange(port, &request, ANSWER_TIMEOUT);
    assert!(status.contains(" 201 "), "{status} {body}");
    digest
}

/// Reads a response head and a `Content-Length` body off `stream`, slowly.
fn read_slowly(stream: &mut TcpStream, pause_every: usize) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let (head, len) = loop {
        let n = stream.read(&mut buf).expect("read head");
        assert!(n > 0, "closed before the head");
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("Content-Length");
            data.drain(..end + 4);
            break (head, len);
        }
    };
    let mut reads = 0;
    while data.len() < len {
        let n = stream.read(&mut buf).expect("read body");
        assert!(n > 0, "closed after {} of {len} body bytes", data.len());
        data.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads % pause_every == 0 {
            thread::sleep(Duration::from_millis(10));
        }
    }
    (head, data)
}

#[test]
fn sigterm_finishes_the_download_in_flight_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\nshutdown_grace_secs = 60\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n"
    );
    let mut server = Server::start_with_config(&config, dir.path());
    let blob = common::pseudo_random(24 << 20, 11);
    let digest = push_blob(server.port(), "big/blob", &blob);

    // A kept-alive idle connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], server.port()))).unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let mut download =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], server.port()))).unwrap();
    download.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    download
        .write_all(
            format!(
                "GET /v2/big/blob/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    // The answer has begun: its head is on the way before the signal goes out.
    let mut peek = [0u8; 1];
    download.peek(&mut peek).unwrap();
    let killed = run_with_timeout(
        Command::new("kill")
            .arg("-TERM")
            .arg(server.pid().to_string()),
        ANSWER_TIMEOUT,
    );
    assert!(killed.status.success());
    let (head, body) = read_slowly(&mut download, 64);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(sha256_digest(&body), digest, "the whole blob arrived");

    let status = server
        .wait_exit(Duration::from_secs(45))
        .expect("the server exits once the download is done");
    assert!(status.success(), "exit status {status}");
    let log = server.full_log();
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        !server.data_dir().join("portcullis.pid").exists(),
        "a clean stop removes its pid file"
    );
    assert!(
        !log.contains("closing connections still open"),
        "the idle connection held the shutdown up:\n{log}"
    );
    let refused = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], server.port())),
        Duration::from_secs(2),
    );
    assert!(refused.is_err(), "no longer accepting");
}

/// One GET over a kept-alive connection, reconnecting as HTTP clients do when the
/// server closed an idle connection: a failure is a refused or reset fresh
/// connection, or an answer that is not 200.
struct KeepAliveClient {
    port: u16,
    stream: Option<TcpStream>,
}

impl KeepAliveClient {
    fn get(&mut self, path: &str) -> Result<(), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            let stream = match self.stream.take() {
                Some(stream) => stream,
                None => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
                    let stream = TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT)
                        .map_err(|e| format!("connect: {e}"))?;
                    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
                    stream
                }
            };
            match exchange(stream, &request) {
                Ok((status, stream)) => {
                    self.stream = stream;
                    return match status {
                        200 => Ok(()),
                        other => Err(format!("status {other}")),
                    };
                }
                // Closed while idle (before any answer byte): reconnect once.
                Err(None) if reused && attempt == 0 => continue,
                Err(e) => return Err(e.unwrap_or_else(|| "closed with no answer".into())),
            }
        }
        Err("closed twice".into())
    }
}

/// Sends one request; the status and, if it stays open, the connection. `Err(None)`:
/// closed before any byte of an answer.
fn exchange(
    mut stream: TcpStream,
    request: &str,
) -> Result<(u16, Option<TcpStream>), Option<String>> {
    if stream.write_all(request.as_bytes()).is_err() {
        return Err(None);
    }
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) if data.is_empty() => return Err(None),
            Ok(0) => return Err(Some("answer cut short".into())),
            Ok(n) => n,
            Err(e) => return Err(Some(format!("reading the answer: {e}"))),
        };
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if data.len() < end + 4 + len {
            continue;
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let open = !head.contains("connection: close");
        return Ok((status, open.then_some(stream)));
    }
}

#[test]
fn upgrade_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\nshutdown_grace_secs = 20\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n"
    );
    let mut old = Server::start_with_config(&config, dir.path());
    let port = old.port();
    let blob = common::pseudo_random(64 * 1024, 5);
    let digest = push_blob(port, "load/app", &blob);
    let blob_path = format!("/v2/load/app/blobs/{digest}");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, done, blob_path) = (stop.clone(), done.clone(), blob_path.clone());
            thread::spawn(move || {
                let mut client = KeepAliveClient { port, stream: None };
                let mut failures = Vec::new();
                // Bounded: the loop ends on `stop` or after this many requests.
                for n in 0..200_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Half the workers open a connection per request.
                    if i % 2 == 1 {
                        client.stream = None;
                    }
                    let path = if n % 2 == 0 { "/v2/" } else { &blob_path };
                    if let Err(e) = client.get(path) {
                        failures.push(format!("request {n} ({path}): {e}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    let wait_for = |what: &str, limit: Duration, ready: &dyn Fn() -> bool| {
        let deadline = Instant::now() + limit;
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(20));
        }
    };
    let before = done.load(Ordering::Relaxed);
    wait_for("load to start", ANSWER_TIMEOUT, &|| {
        done.load(Ordering::Relaxed) > before + 200
    });

    let new_log = dir.path().join("upgraded.log");
    let log_file = std::fs::File::create(&new_log).unwrap();
    let mut new = portcullis()
        .args(["serve", "--upgrade", "--config"])
        .arg(dir.path().join("portcullis.toml"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let old_status = old
        .wait_exit(Duration::from_secs(60))
        .expect("the old server hands over and exits");
    let after_handover = done.load(Ordering::Relaxed);
    wait_for("load on the new server", Duration::from_secs(30), &|| {
        done.load(Ordering::Relaxed) > after_handover + 500
    });
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let new_pid = std::fs::read_to_string(dir.path().join("data/portcullis.pid")).unwrap();
    let new_text = std::fs::read_to_string(&new_log).unwrap();
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        failures.is_empty(),
        "{} failed of {} requests: {:?}\nnew server log:\n{new_text}",
        failures.len(),
        done.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    assert!(old_status.success(), "old server: {old_status}");
    assert_eq!(
        new_pid.trim(),
        new.id().to_string(),
        "the pid file names the new server"
    );
    assert!(
        new_text.contains(r#"target":"access""#) || new_text.contains("access:"),
        "the new server answered requests:\n{new_text}"
    );
    assert!(old.full_log().contains("shutdown complete"));
    assert!(
        !old.full_log().contains("ERROR") && !new_text.contains("ERROR"),
        "an upgrade is no error:\n{}\n{new_text}",
        old.full_log()
    );
    // A pid file naming another program is refused, not signalled.
    std::fs::write(
        dir.path().join("data/portcullis.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let refused = run_with_timeout(
        portcullis()
            .args(["serve", "--upgrade", "--config"])
            .arg(dir.path().join("portcullis.toml"))
            .arg("--data")
            .arg(dir.path().join("data")),
        ANSWER_TIMEOUT,
    );
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not a portcullis server"),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_collection_is_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n"
    );
    let server = Server::start_with_config(&config, dir.path());
    // A blob no manifest references: what a collection without grace deletes.
    let blob = common::pseudo_random(300 * 1024, 9);
    push_blob(server.port(), "gc/orphan", &blob);
    let before = scrape_metrics(&server);
    assert!(
        metric(&before, "portcullis_store_bytes", &[("origin", "pushed")]) >= blob.len() as f64,
        "{before}"
    );
    let request = b"POST /admin/gc?grace=0s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (status, _, body) = raw_exchange(server.port(), request, Duration::from_secs(60));
    assert!(status.contains(" 200 "), "{status} {body}");
    let after = scrape_metrics(&server);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        delta("portcullis_gc_runs_total", &[("result", "ok")]),
        1.0,
        "{after}"
    );
    assert_eq!(delta("portcullis_gc_deleted_blobs_total", &[]), 1.0);
    assert_eq!(
        delta("portcullis_gc_freed_bytes_total", &[]),
        blob.len() as f64
    );
    assert_eq!(delta("portcullis_gc_duration_seconds_count", &[]), 1.0);
    assert_eq!(
        metric(&after, "portcullis_store_bytes", &[("origin", "pushed")]),
        0.0,
        "measured again by the collection"
    );
}
