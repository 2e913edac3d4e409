//! Webhook notifications against the real binary: a receiver written here (a minimal
//! HTTP/1.1 reader on a loopback port) records what the server POSTs.
//!
//! * skopeo pushes, pulls and deletes over TLS as a logged-in user: the envelopes
//!   carry registry:2's media type, the configured header, and the right actions,
//!   repositories, digests, tags, media types, actor, host and URLs.
//! * A receiver that is down at first gets the event once it is back (retries).
//! * A receiver that answers 500, or nothing listening: exactly 1 + `retries` POSTs,
//!   then the batch is given up: `/metrics` counts it, the log says so.
//! * A small queue behind a stalled receiver: overflow is dropped and counted.
//! * SIGTERM while an event waits to be retried: it is delivered before the exit.
//! * The same push, pull and delete against Debian's `docker-registry` (registry:2)
//!   give events of the same shape, but for the gaps named in that test.

// This suite uses only part of the shared harness.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::distribution::Distribution;
use common::{
    htpasswd_add, metric, portcullis, raw_exchange, run_ok, scrape_metrics, sha256_digest,
    ContainersEnv, ImageFixture, Server, METRICS_PORT, OCI_MANIFEST_TYPE,
};
use serde_json::Value;

const EVENTS_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// Upper bound for one skopeo invocation.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test waits for something the server does on its own.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// The largest request the receiver reads (head and body).
const MAX_REQUEST_BYTES: usize = 4 << 20;
const RAW_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Post {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// No answer until [`Receiver::release`], then 200.
    HoldUntilReleased,
}

struct Receiver {
    port: u16,
    posts: Arc<Mutex<Vec<Post>>>,
    released: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accepting: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        Receiver::start_on(0, answer)
    }

    /// Listens on 127.0.0.1:`port` (0: any free port).
    fn start_on(port: u16, answer: Answer) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let port = listener.local_addr().unwrap().port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let released = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = {
            let (posts, released, stop) = (posts.clone(), released.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (posts, released, stop) =
                                (posts.clone(), released.clone(), stop.clone());
                            thread::spawn(move || {
                                serve_connection(stream, answer, &posts, &released, &stop)
                            });
                        }
                        Err(_) => thread::sleep(POLL),
                    }
                }
            })
        };
        Receiver {
            port,
            posts,
            released,
            stop,
            accepting: Some(accepting),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Every event of every envelope so far, in order of arrival.
    fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|p| p.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Polls until `done` holds for the events received, within [`DEADLINE`].
    fn wait_for_events(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {DEADLINE:?}; events so far: {events:#?}"
            );
            thread::sleep(POLL);
        }
    }

    fn wait_for_posts(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.posts().len() < count {
            assert!(
                Instant::now() < deadline,
                "{} POSTs within {DEADLINE:?}, expected {count}",
                self.posts().len()
            );
            thread::sleep(POLL);
        }
    }

    fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

/// Reads requests from one connection until it closes, answering each.
fn serve_connection(
    stream: TcpStream,
    answer: Answer,
    posts: &Mutex<Vec<Post>>,
    released: &AtomicBool,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    while let Some(post) = read_post(&mut reader) {
        posts.lock().unwrap().push(post);
        let status = match answer {
            Answer::Status(status) => status,
            Answer::HoldUntilReleased => {
                while !released.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    thread::sleep(POLL);
                }
                200
            }
        };
        let reply = format!("HTTP/1.1 {status} Answer\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// One request: head, then a `Content-Length` body (all the server sends), as JSON.
fn read_post(reader: &mut BufReader<TcpStream>) -> Option<Post> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let path = line.split_whitespace().nth(1)?.to_string();
    assert!(line.starts_with("POST "), "not a POST: {line:?}");
    let mut headers = Vec::new();
    let mut head_bytes = line.len();
    loop {
        let mut line = String::new();
        head_bytes += reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
        assert!(head_bytes < MAX_REQUEST_BYTES, "request head too long");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("the server sends a Content-Length");
    assert!(length < MAX_REQUEST_BYTES, "body of {length} bytes");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let body = serde_json::from_slice(&body).expect("the body is JSON");
    Some(Post {
        path,
        headers,
        body,
    })
}

/// A loopback port that nothing listens on (right now).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A plain-HTTP server without authentication, with a metrics listener, notifying
/// one endpoint, `sync`, at `url`; `extra` adds keys to its [[notifications]] table.
fn plain_server(dir: &Path, url: &str, extra: &str) -> Server {
    Server::start_with_config(
        &format!(
            "[server]\nlisten = \"127.0.0.1:{{PLAIN_PORT}}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n\
             [[notifications]]\nname = \"sync\"\nurl = \"{url}\"\n{extra}"
        ),
        dir,
    )
}

/// The endpoint `sync`'s notification metrics: POSTs by result, drops by reason,
/// and what waits in its queue.
#[derive(Debug, PartialEq)]
struct Counts {
    sent: f64,
    failed: f64,
    queue_full: f64,
    retries_exhausted: f64,
    queued: f64,
}

fn counts(server: &Server) -> Counts {
    let scrape = scrape_metrics(server);
    let posts = |result| {
        let labels = [("endpoint", "sync"), ("result", result)];
        metric(&scrape, "portcullis_notifications_total", &labels)
    };
    let dropped = |reason| {
        let labels = [("endpoint", "sync"), ("reason", reason)];
        metric(&scrape, "portcullis_notifications_dropped_total", &labels)
    };
    let queued = [("endpoint", "sync")];
    Counts {
        sent: posts("sent"),
        failed: posts("failed"),
        queue_full: dropped("queue_full"),
        retries_exhausted: dropped("retries_exhausted"),
        queued: metric(&scrape, "portcullis_notifications_queued", &queued),
    }
}

/// Polls `/metrics` until `done` holds, within [`DEADLINE`].
fn wait_for_counts(server: &Server, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let counts = counts(server);
        if done(&counts) {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {DEADLINE:?}: {counts:?}"
        );
        thread::sleep(POLL);
    }
}

/// Pushes a small blob in one POST (one push event) and returns its digest.
fn push_blob(server: &Server, repo: &str, content: &[u8]) -> String {
    let digest = sha256_digest(content);
    let mut request = format!(
        "POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.host_port(),
        content.len()
    )
    .into_bytes();
    request.extend_from_slice(content);
    let (status, _, body) = raw_exchange(server.port(), &request, RAW_TIMEOUT);
    assert!(status.contains(" 201 "), "{status}: {body}");
    digest
}

/// The server's log without colours (`field=value` as plain text).
fn plain_log(server: &Server) -> String {
    let log = server.log();
    let mut plain = String::with_capacity(log.len());
    let mut rest = log.as_str();
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    plain.push_str(rest);
    plain
}

/// Polls the server's log until `fragments` all appear on one line; returns that line.
fn wait_for_log_line(server: &Server, fragments: &[&str]) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = plain_log(server);
        if let Some(line) = log
            .lines()
            .find(|line| fragments.iter().all(|f| line.contains(f)))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {fragments:?} within {DEADLINE:?}; log:\n{log}"
        );
        thread::sleep(POLL);
    }
}

fn log_lines_with(server: &Server, fragment: &str) -> usize {
    plain_log(server)
        .lines()
        .filter(|l| l.contains(fragment))
        .count()
}

fn events_with<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["action"] == action).collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn skopeo_push_pull_and_delete_reach_the_endpoint_in_registry_2_format() {
    let receiver = Receiver::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    run_ok(
        portcullis().args(["certs", "--out"]).arg(&certs).args([
            "--name",
            "localhost",
            "--ip",
            "127.0.0.1",
        ]),
        Duration::from_secs(60),
    );
    htpasswd_add(&dir.path().join("htpasswd"), "alice", "alice-pw");
    let server = Server::start_with_config(
        &format!(
            r#"
[server]
tls_listen = "127.0.0.1:{{TLS_PORT}}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
[auth]
htpasswd = "htpasswd"
[[notifications]]
name = "sync"
url = "{}"
headers = {{ Authorization = "Bearer receiver-token" }}
"#,
            receiver.url()
        ),
        dir.path(),
    );
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    let host = server.tls_host_port();
    // skopeo reads every *.crt of the directory as a CA and wants a *.cert for each key.
    let trust = dir.path().join("trust");
    std::fs::create_dir(&trust).unwrap();
    std::fs::copy(certs.join("ca.crt"), trust.join("ca.crt")).unwrap();
    let cert_dir = trust.display().to_string();
    let remote = format!("docker://{host}/team/app:1.0");
    let creds = ["--creds", "alice:alice-pw", "--cert-dir", cert_dir.as_str()];

    let src = format!("oci:{}:{}", img.layout.display(), img.tag);
    let mut copy = vec![
        "copy",
        "--preserve-digests",
        "--dest-creds",
        "alice:alice-pw",
    ];
    copy.extend([
        "--dest-cert-dir",
        cert_dir.as_str(),
        src.as_str(),
        remote.as_str(),
    ]);
    run_ok(&mut env.skopeo(&copy), SKOPEO_TIMEOUT);
    let events = receiver.wait_for_events("manifest push", |events| {
        events
            .iter()
            .any(|e| e["action"] == "push" && e["target"]["tag"] == "1.0")
    });
    let pushes = events_with(&events, "push");
    let manifest = pushes.iter().find(|e| e["target"]["tag"] == "1.0").unwrap();
    let target = &manifest["target"];
    assert_eq!(target["digest"], img.manifest_digest.as_str());
    assert_eq!(target["mediaType"], OCI_MANIFEST_TYPE);
    assert_eq!(target["size"], img.manifest.len());
    assert_eq!(target["length"], img.manifest.len());
    assert_eq!(target["repository"], "team/app");
    assert_eq!(
        target["url"],
        format!(
            "https://{host}/v2/team/app/manifests/{}",
            img.manifest_digest
        )
    );
    assert_eq!(manifest["actor"]["name"], "alice");
    let request = &manifest["request"];
    assert_eq!(request["method"], "PUT");
    assert_eq!(request["host"], host.as_str());
    assert_eq!(request["addr"], "127.0.0.1");
    assert!(
        !request["useragent"].as_str().unwrap().is_empty(),
        "{request}"
    );
    assert!(humantime::parse_rfc3339(manifest["timestamp"].as_str().unwrap()).is_ok());
    // Every blob was pushed before the manifest, each as a push of its digest.
    let pushed_blobs: BTreeSet<&str> = pushes
        .iter()
        .filter(|e| e["target"]["tag"].is_null())
        .map(|e| e["target"]["digest"].as_str().unwrap())
        .collect();
    let mut blobs = vec![img.config_digest.as_str()];
    blobs.extend(img.layer_digests.iter().map(String::as_str));
    assert_eq!(pushed_blobs, blobs.iter().copied().collect(), "{pushes:#?}");

    let out = dir.path().join("pulled");
    let dest = format!("oci:{}:1.0", out.display());
    let mut pull = vec!["copy", "--src-creds", "alice:alice-pw", "--src-cert-dir"];
    pull.extend([cert_dir.as_str(), remote.as_str(), dest.as_str()]);
    run_ok(&mut env.skopeo(&pull), SKOPEO_TIMEOUT);
    let events = receiver.wait_for_events("pulls of every blob", |events| {
        let pulled: BTreeSet<&str> = events_with(events, "pull")
            .iter()
            .filter_map(|e| e["target"]["digest"].as_str())
            .collect();
        blobs.iter().all(|b| pulled.contains(b)) && pulled.contains(img.manifest_digest.as_str())
    });
    let pulls = events_with(&events, "pull");
    let manifest_pull = pulls
        .iter()
        .find(|e| e["target"]["digest"] == img.manifest_digest.as_str())
        .unwrap();
    assert_eq!(manifest_pull["target"]["mediaType"], OCI_MANIFEST_TYPE);
    assert_eq!(manifest_pull["request"]["method"], "GET");
    let layer = &img.layer_digests[0];
    let layer_pull = pulls
        .iter()
        .find(|e| e["target"]["digest"] == layer.as_str())
        .unwrap();
    assert_eq!(layer_pull["target"]["size"], img.blob(layer).len());
    assert_eq!(
        layer_pull["target"]["url"],
        format!("https://{host}/v2/team/app/blobs/{layer}")
    );

    // Over HTTP/2 the host arrives as `:authority`, and is reported all the same.
    let url = format!("https://{host}/v2/team/app/blobs/{}", img.config_digest);
    let curl = run_ok(
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--http2", "--noproxy", "*"])
            .args(["--output", "/dev/null", "--write-out", "%{http_version}"])
            .arg("--cacert")
            .arg(certs.join("ca.crt"))
            .args(["--user", "alice:alice-pw", &url]),
        Duration::from_secs(60),
    );
    assert_eq!(curl.stdout_str(), "2", "curl spoke HTTP/2");
    let events = receiver.wait_for_events("the pull by curl", |events| {
        events.iter().any(|e| {
            e["request"]["useragent"]
                .as_str()
                .unwrap()
                .starts_with("curl/")
        })
    });
    let by_curl = events
        .iter()
        .find(|e| {
            e["request"]["useragent"]
                .as_str()
                .unwrap()
                .starts_with("curl/")
        })
        .unwrap();
    assert_eq!(by_curl["request"]["host"], host.as_str());
    assert_eq!(by_curl["target"]["url"], url.as_str());

    let by_digest = format!("docker://{host}/team/app@{}", img.manifest_digest);
    let mut delete = vec!["delete"];
    delete.extend(creds);
    delete.push(by_digest.as_str());
    run_ok(&mut env.skopeo(&delete), SKOPEO_TIMEOUT);
    let events = receiver.wait_for_events("manifest delete", |events| {
        !events_with(events, "delete").is_empty()
    });
    let deleted = events_with(&events, "delete");
    assert_eq!(deleted.len(), 1, "{deleted:#?}");
    assert_eq!(
        deleted[0]["target"],
        serde_json::json!({ "repository": "team/app", "digest": img.manifest_digest })
    );
    assert_eq!(deleted[0]["actor"]["name"], "alice");

    // Every envelope is registry:2's, with the configured header; one instance.
    for post in receiver.posts() {
        assert_eq!(post.path, "/events");
        assert_eq!(post.header("content-type"), Some(EVENTS_TYPE));
        assert_eq!(post.header("authorization"), Some("Bearer receiver-token"));
    }
    let sources: BTreeSet<String> = events.iter().map(|e| e["source"].to_string()).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    let source = &events[0]["source"];
    let port = server.tls_port().to_string();
    assert!(source["addr"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{port}")));
    assert!(!source["instanceID"].as_str().unwrap().is_empty());
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    assert!(
        !server.log().contains("receiver-token"),
        "a header value was logged"
    );
}

#[test]
fn events_wait_for_a_receiver_that_comes_back() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/events");
    let server = plain_server(dir.path(), &url, "retries = 10\nbackoff_secs = 1\n");
    let digest = push_blob(&server, "team/app", b"while the receiver is down");
    wait_for_log_line(&server, &["notification POST failed", "retry 1 of 10"]);

    let receiver = Receiver::start_on(port, Answer::Status(202));
    let events = receiver.wait_for_events("the push", |events| !events.is_empty());
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["target"]["digest"], digest.as_str());
    assert_eq!(events[0]["actor"], serde_json::json!({}), "anonymous");
    // Later events go straight through.
    let second = push_blob(&server, "team/app", b"after it came back");
    receiver.wait_for_events("the second push", |events| {
        events
            .iter()
            .any(|e| e["target"]["digest"] == second.as_str())
    });
    assert_eq!(log_lines_with(&server, "every attempt failed"), 0);
    let counts = wait_for_counts(&server, "two sent POSTs", |c| c.sent == 2.0);
    assert!(counts.failed >= 1.0, "{counts:?}");
    assert_eq!(counts.retries_exhausted + counts.queue_full, 0.0);
    assert_eq!(counts.queued, 0.0);
}

#[test]
fn a_failing_receiver_gets_exactly_one_try_plus_the_retries() {
    let receiver = Receiver::start(Answer::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let server = plain_server(
        dir.path(),
        &receiver.url(),
        "retries = 3\nbackoff_secs = 0\n",
    );
    push_blob(&server, "team/app", b"never accepted");
    let counts = wait_for_counts(&server, "the give-up", |c| c.retries_exhausted == 1.0);
    assert_eq!((counts.failed, counts.sent, counts.queued), (4.0, 0.0, 0.0));
    assert_eq!(receiver.posts().len(), 4);
    let gave_up = wait_for_log_line(&server, &["every attempt failed", "answered 500"]);
    assert!(
        gave_up.contains("attempts=4") && gave_up.contains("events=1"),
        "{gave_up}"
    );
    assert_eq!(log_lines_with(&server, "notification POST failed"), 3);
    // The next event is a new batch with its own attempts.
    push_blob(&server, "team/app", b"also never accepted");
    let counts = wait_for_counts(&server, "the second give-up", |c| {
        c.retries_exhausted == 2.0
    });
    assert_eq!(counts.failed, 8.0);
    assert_eq!(receiver.posts().len(), 8);
}

#[test]
fn nothing_listening_is_given_up_after_the_retries() {
    let url = format!("http://127.0.0.1:{}/events", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let server = plain_server(dir.path(), &url, "retries = 2\nbackoff_secs = 0\n");
    push_blob(&server, "team/app", b"refused");
    let counts = wait_for_counts(&server, "the give-up", |c| c.retries_exhausted == 1.0);
    assert_eq!((counts.failed, counts.sent), (3.0, 0.0));
    let gave_up = wait_for_log_line(&server, &["every attempt failed", "endpoint=sync"]);
    assert!(gave_up.contains("attempts=3"), "{gave_up}");
    assert_eq!(log_lines_with(&server, "notification POST failed"), 2);
    assert!(!gave_up.contains(&url), "the URL is not logged: {gave_up}");
}

#[test]
fn a_full_queue_drops_new_events() {
    let receiver = Receiver::start(Answer::HoldUntilReleased);
    let dir = tempfile::tempdir().unwrap();
    let server = plain_server(
        dir.path(),
        &receiver.url(),
        "queue = 1\ntimeout_secs = 60\n",
    );
    // The worker takes the first event and waits for the stalled receiver.
    let first = push_blob(&server, "team/app", b"event 0");
    receiver.wait_for_posts(1);
    // One event fits in the queue; the next three are dropped.
    let queued = push_blob(&server, "team/app", b"event 1");
    for i in 2..5 {
        push_blob(&server, "team/app", format!("event {i}").as_bytes());
    }
    let counts = counts(&server);
    assert_eq!((counts.queue_full, counts.queued), (3.0, 1.0), "{counts:?}");
    let full = wait_for_log_line(&server, &["notification queue full", "endpoint=sync"]);
    assert!(full.contains("queue=1"), "{full}");
    assert_eq!(
        log_lines_with(&server, "notification queue full"),
        1,
        "one warning"
    );
    receiver.release();
    let events = receiver.wait_for_events("the queued event", |events| events.len() >= 2);
    let digests: Vec<&str> = events
        .iter()
        .map(|e| e["target"]["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [first.as_str(), queued.as_str()]);
    // A later event is queued again (and warned about again only on a new overflow).
    let later = push_blob(&server, "team/app", b"event 5");
    receiver.wait_for_events("the later event", |events| {
        events
            .iter()
            .any(|e| e["target"]["digest"] == later.as_str())
    });
    assert_eq!(receiver.events().len(), 3);
    let counts = wait_for_counts(&server, "three sent POSTs", |c| c.sent == 3.0);
    assert_eq!(
        (counts.queue_full, counts.queued, counts.failed),
        (3.0, 0.0, 0.0)
    );
}

#[test]
fn sigterm_delivers_what_waits_for_a_retry() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/events");
    let mut server = plain_server(dir.path(), &url, "backoff_secs = 60\n");
    let digest = push_blob(&server, "team/app", b"waiting at shutdown");
    wait_for_log_line(
        &server,
        &["notification POST failed", "retry 1 of 5 in 60s"],
    );
    let receiver = Receiver::start_on(port, Answer::Status(200));
    // The next try would be a minute away; the shutdown's flush does not wait for it.
    let started = Instant::now();
    run_ok(
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(server.pid().to_string()),
        Duration::from_secs(10),
    );
    let status = server.wait_exit(DEADLINE).expect("the server exits");
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let events = receiver.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["target"]["digest"], digest.as_str());
    assert_eq!(log_lines_with(&server, "not delivered before shutdown"), 0);
}

#[test]
fn endpoints_get_only_the_events_and_repositories_they_ask_for() {
    let receiver = Receiver::start(Answer::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let server = plain_server(
        dir.path(),
        &receiver.url(),
        "events = [\"delete\"]\nrepositories = [\"team/*\"]\n",
    );
    let digest = push_blob(&server, "team/app", b"pushed, not told");
    push_blob(&server, "other/app", b"elsewhere");
    for repo in ["other/app", "team/app"] {
        let content = if repo == "team/app" {
            "pushed, not told"
        } else {
            "elsewhere"
        };
        let request = format!(
            "DELETE /v2/{repo}/blobs/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            sha256_digest(content.as_bytes())
        );
        let (status, _, _) = raw_exchange(server.port(), request.as_bytes(), RAW_TIMEOUT);
        assert!(status.contains(" 202 "), "{status}");
    }
    let events = receiver.wait_for_events("the delete", |events| !events.is_empty());
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "delete");
    assert_eq!(events[0]["target"]["repository"], "team/app");
    assert_eq!(events[0]["target"]["digest"], digest.as_str());
}

/// Every key path of a JSON value (`target.mediaType`, ...).
fn key_paths(value: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(object) => {
            for (key, inner) in object {
                key_paths(inner, &format!("{prefix}{key}."), paths);
            }
        }
        None => {
            paths.insert(prefix.trim_end_matches('.').to_string());
        }
    }
}

/// The key paths of each kind of event: (action, method, what it names).
fn shapes(events: &[Value], manifest_digest: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut shapes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for event in events {
        let target = &event["target"];
        let names = if target["digest"].is_null() {
            "tag"
        } else if target["digest"] == manifest_digest {
            "manifest"
        } else {
            "blob"
        };
        let kind = format!("{} {} {names}", event["action"], event["request"]["method"]);
        key_paths(event, "", shapes.entry(kind).or_default());
    }
    shapes
}

#[test]
fn events_have_the_shape_registry_2_sends() {
    let from_registry = Receiver::start(Answer::Status(200));
    let from_portcullis = Receiver::start(Answer::Status(200));
    let registry = Distribution::start_notifying(&from_registry.url());
    let dir = tempfile::tempdir().unwrap();
    let server = plain_server(dir.path(), &from_portcullis.url(), "");
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    let src = format!("oci:{}:{}", img.layout.display(), img.tag);
    for (host, receiver) in [
        (registry.host_port(), &from_registry),
        (server.host_port(), &from_portcullis),
    ] {
        let remote = format!("docker://{host}/team/app:1.0");
        let push = ["copy", "--preserve-digests", "--dest-tls-verify=false"];
        run_ok(
            &mut env.skopeo(&[&push[..], &[&src, &remote]].concat()),
            SKOPEO_TIMEOUT,
        );
        let out = dir
            .path()
            .join(format!("pulled-{}", host.replace(':', "-")));
        let dest = format!("oci:{}:1.0", out.display());
        let pull = [
            "copy",
            "--src-tls-verify=false",
            remote.as_str(),
            dest.as_str(),
        ];
        run_ok(&mut env.skopeo(&pull), SKOPEO_TIMEOUT);
        let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
        let request = format!(
            "DELETE /v2/team/app/manifests/{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            img.manifest_digest
        );
        let (status, _, body) = raw_exchange(port, request.as_bytes(), RAW_TIMEOUT);
        assert!(status.contains(" 202 "), "{host}: {status}: {body}");
        receiver.wait_for_events("the delete", |events| {
            events.iter().any(|e| e["action"] == "delete")
        });
    }
    // registry:2 sends a tag's delete after the manifest's; wait for it too.
    let registry_events = from_registry.wait_for_events("the tag delete", |events| {
        events
            .iter()
            .any(|e| e["action"] == "delete" && e["target"]["tag"] == "1.0")
    });
    let mut expected = shapes(&registry_events, &img.manifest_digest);
    let got = shapes(&from_portcullis.events(), &img.manifest_digest);
    // The known gaps: a closing PUT does not show a blob's size, and a manifest's
    // delete does not list the tags it took along.
    let blob_push = expected
        .get_mut("\"push\" \"PUT\" blob")
        .expect("blob pushes");
    blob_push.remove("target.size");
    blob_push.remove("target.length");
    expected.remove("\"delete\" \"DELETE\" tag");
    assert_eq!(got, expected);
    for post in from_registry.posts() {
        assert_eq!(
            post.header("content-type"),
            Some(EVENTS_TYPE),
            "registry:2's type"
        );
    }
}
