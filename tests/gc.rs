//! Garbage collection, retention, the cache's byte cap and upload expiry, against the
//! real binary: `portcullis gc` on a stopped store, `POST /admin/gc` on a running one,
//! skopeo pushing while collections run, and a reader streaming a blob being evicted.

#[allow(dead_code)]
mod common;

use common::fakehub::{mirror_config, place_image, FakeHub, FakeHubOptions};
use common::{
    portcullis, run_ok, run_with_timeout, sha256_digest, skopeo_push, ContainersEnv, ImageFixture,
    Server, PLAIN_PORT,
};
use reqwest::Client;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Pushes content over the API of one server.
struct Pusher {
    base: String,
    client: Client,
}

impl Pusher {
    fn new(server: &Server) -> Pusher {
        Pusher {
            base: server.base_url(),
            client: client(),
        }
    }

    /// A monolithic upload; returns the digest.
    async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let url = format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", self.base);
        let response = self
            .client
            .post(url)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "upload {digest}");
        digest
    }

    /// An image manifest over a config and layers (pushed first); returns
    /// (digest, bytes).
    async fn image(
        &self,
        repo: &str,
        reference: Option<&str>,
        config: &[u8],
        layers: &[&[u8]],
        subject: Option<&(String, Vec<u8>)>,
    ) -> (String, Vec<u8>) {
        let config_digest = self.blob(repo, config).await;
        let mut descriptors = Vec::new();
        for layer in layers {
            let digest = self.blob(repo, layer).await;
            descriptors.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest, "size": layer.len()
            }));
        }
        let mut manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": descriptors,
        });
        if let Some((digest, bytes)) = subject {
            manifest["subject"] =
                json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len()});
            manifest["artifactType"] = json!("application/vnd.example.signature");
        }
        self.manifest(repo, reference, OCI_MANIFEST, manifest).await
    }

    async fn manifest(
        &self,
        repo: &str,
        reference: Option<&str>,
        media_type: &str,
        manifest: Value,
    ) -> (String, Vec<u8>) {
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256_digest(&bytes);
        let reference = reference.unwrap_or(&digest);
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let response = self
            .client
            .put(url)
            .header("Content-Type", media_type)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "manifest {repo}:{reference}");
        (digest, bytes)
    }

    async fn delete(&self, repo: &str, reference: &str) {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let response = self.client.delete(url).send().await.unwrap();
        assert_eq!(response.status(), 202, "delete {repo}:{reference}");
    }

    async fn status(&self, path: &str) -> u16 {
        let url = format!("{}{path}", self.base);
        self.client.get(url).send().await.unwrap().status().as_u16()
    }
}

/// The digests of every blob file in a store.
fn stored(data: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let root = data.join("blobs").join("sha256");
    for prefix in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            found.insert(format!(
                "sha256:{}",
                file.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn gc(data: &Path, args: &[&str]) -> String {
    let out = run_ok(
        portcullis().arg("gc").arg("--data").arg(data).args(args),
        COMMAND_TIMEOUT,
    );
    out.stdout_str()
}

fn fsck_ok(data: &Path) {
    let out = run_with_timeout(
        portcullis().arg("fsck").arg("--data").arg(data),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "fsck: {}", out.stdout_str());
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Shared layers, an untagged manifest, a signature, an index with children, a
/// deleted tag, a manifest deleted by digest and a stray upload: GC removes exactly
/// what nothing needs, first keeping untagged manifests, then not.
#[tokio::test]
async fn gc_removes_exactly_the_unreferenced_content() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = Server::start_with_data(&data);
    let p = Pusher::new(&server);

    let shared: &[u8] = b"shared base layer";
    let m1 = p
        .image("a", Some("v1"), b"cfg1", &[shared, b"app1"], None)
        .await;
    let m2 = p
        .image("a", Some("v2"), b"cfg2", &[shared, b"app2"], None)
        .await;
    p.delete("a", "v2").await; // m2 stays, untagged
    let sig = p
        .image("a", None, b"sigcfg", &[b"signature"], Some(&m1))
        .await;
    let amd = p.image("b", None, b"cfg-x", &[shared, b"amd"], None).await;
    let arm = p.image("b", None, b"cfg-x", &[shared, b"arm"], None).await;
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.0, "size": amd.1.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.0, "size": arm.1.len(),
             "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    });
    let idx = p.manifest("b", Some("latest"), OCI_INDEX, index).await;
    let stray = p.blob("a", b"uploaded, never referenced").await;
    let m3 = p.image("c", Some("1"), b"cfg3", &[b"only-c"], None).await;
    p.delete("c", &m3.0).await;
    drop(server);

    let d = |bytes: &[u8]| sha256_digest(bytes);
    let before = stored(&data);
    // A dry run lists what would go and changes nothing.
    let dry = gc(&data, &["--grace", "0s", "--dry-run"]);
    let m3_gone: BTreeSet<String> = set(&[&m3.0, &d(b"cfg3"), &d(b"only-c"), &stray]);
    for digest in &m3_gone {
        assert!(
            dry.contains(&format!("would delete blob {digest}")),
            "{dry}"
        );
    }
    assert!(dry.contains("would free"), "{dry}");
    assert_eq!(stored(&data), before);

    // Untagged manifests kept: exactly the deleted manifest's content and the stray go.
    let out = gc(&data, &["--grace", "0s"]);
    assert!(out.contains("freed"), "{out}");
    let after: BTreeSet<String> = before.difference(&m3_gone).cloned().collect();
    assert_eq!(stored(&data), after);

    // Untagged collected: m2 with what only it references; the shared layer, the
    // signature of m1 and the index's children stay.
    gc(&data, &["--grace", "0s", "--delete-untagged"]);
    let m2_gone = set(&[&m2.0, &d(b"cfg2"), &d(b"app2")]);
    let after: BTreeSet<String> = after.difference(&m2_gone).cloned().collect();
    assert_eq!(stored(&data), after);
    for kept in [
        &m1.0,
        &sig.0,
        &idx.0,
        &amd.0,
        &arm.0,
        &d(shared),
        &d(b"signature"),
    ] {
        assert!(after.contains(kept), "{kept} must stay");
    }
    fsck_ok(&data);

    // What stays still serves; what went is gone from its repository too.
    let server = Server::start_with_data(&data);
    let p = Pusher::new(&server);
    assert_eq!(p.status(&format!("/v2/a/manifests/{}", m1.0)).await, 200);
    assert_eq!(p.status(&format!("/v2/a/referrers/{}", m1.0)).await, 200);
    assert_eq!(p.status("/v2/b/manifests/latest").await, 200);
    assert_eq!(p.status(&format!("/v2/b/blobs/{}", d(b"arm"))).await, 200);
    assert_eq!(p.status(&format!("/v2/a/manifests/{}", m2.0)).await, 404);
    assert_eq!(p.status(&format!("/v2/a/blobs/{stray}")).await, 404);
}

/// Retention: the newest tag and the protected ones stay; a dry run names the rest.
#[tokio::test]
async fn retention_untags_all_but_the_newest_and_protected_tags() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n\
         [[retention]]\nrepositories = [\"team/*\"]\nkeep_last = 1\nprotect = [\"v*\"]\n"
    );
    let server = Server::start_with_config(&config, dir.path());
    let p = Pusher::new(&server);
    for (i, tag) in ["v1", "nightly-c", "nightly-b", "nightly-a"]
        .iter()
        .enumerate()
    {
        let config = format!("config {i}");
        p.image("team/app", Some(tag), config.as_bytes(), &[b"layer"], None)
            .await;
    }
    // Other repositories are not touched by the rule.
    p.image("other/app", Some("old"), b"x", &[b"y"], None).await;
    drop(server);
    let data = dir.path().join("data");
    let config_file = dir.path().join("portcullis.toml");
    let run = |extra: &[&str]| {
        let out = run_ok(
            portcullis()
                .arg("gc")
                .arg("--config")
                .arg(&config_file)
                .arg("--data")
                .arg(&data)
                .args(["--grace", "0s"])
                .args(extra),
            COMMAND_TIMEOUT,
        );
        out.stdout_str()
    };
    let dry = run(&["--dry-run"]);
    // Pushed last, nightly-a is the newest: push times are whole seconds, and tags
    // pushed within one second rank by name, where it comes first too.
    let untagged: Vec<&str> = dry
        .lines()
        .filter_map(|l| l.strip_prefix("would untag "))
        .collect();
    assert_eq!(
        untagged,
        ["team/app:nightly-b", "team/app:nightly-c"],
        "{dry}"
    );
    run(&[]);
    let server = Server::start_with_data(&data);
    let tags: Value =
        json_of(client().get(format!("{}/v2/team/app/tags/list", server.base_url()))).await;
    assert_eq!(tags["tags"], json!(["nightly-a", "v1"]));
    assert_eq!(
        Pusher::new(&server)
            .status("/v2/other/app/manifests/old")
            .await,
        200
    );
}

/// The admin endpoint: anonymous callers are challenged, users who are not in
/// admin.users are denied, admins get the report; recent content is kept.
#[tokio::test]
async fn the_admin_endpoint_needs_an_admin_and_keeps_recent_content() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    common::htpasswd_add(&htpasswd, "root", "rootpw");
    common::htpasswd_add(&htpasswd, "dev", "devpw");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n\
         [auth]\nhtpasswd = \"{}\"\n\
         [admin]\nusers = [\"root\"]\n\
         [[access]]\nrepositories = [\"*\"]\npull = [\"*\"]\npush = [\"*\"]\n",
        htpasswd.display()
    );
    let server = Server::start_with_config(&config, dir.path());
    let url = format!("{}/admin/gc", server.base_url());
    let c = client();
    let anonymous = c.post(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let dev = c
        .post(&url)
        .basic_auth("dev", Some("devpw"))
        .send()
        .await
        .unwrap();
    assert_eq!(dev.status(), 403);
    assert!(dev.text().await.unwrap().contains("DENIED"));

    // A stray blob pushed just now is within the default grace period (1 h).
    let bytes = b"a layer whose manifest is still on its way".to_vec();
    let digest = sha256_digest(&bytes);
    let pushed = c
        .post(format!(
            "{}/v2/team/x/blobs/uploads/?digest={digest}",
            server.base_url()
        ))
        .basic_auth("dev", Some("devpw"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 201);
    let run = |query: &str| {
        c.post(format!("{url}{query}"))
            .basic_auth("root", Some("rootpw"))
    };
    let report = json_of(run("")).await;
    assert_eq!(report["blobs"], json!([]), "{report}");
    let report = json_of(run("?grace=0s&dry_run=true")).await;
    assert_eq!(report["blobs"], json!([digest]), "{report}");
    assert_eq!(report["dry_run"], json!(true));
    let report = json_of(run("?grace=0s")).await;
    assert_eq!(report["blobs"], json!([digest]), "{report}");
    let last: Value = json_of(c.get(&url).basic_auth("root", Some("rootpw"))).await;
    assert_eq!(last["blobs"], json!([digest]));
    // The command line asks the running server the same way.
    let out = run_ok(
        portcullis()
            .args([
                "gc",
                "--server",
                &server.base_url(),
                "--user",
                "root",
                "--dry-run",
            ])
            .env("PORTCULLIS_PASSWORD", "rootpw"),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.stdout_str().contains("gc: would free"),
        "{}",
        out.stdout_str()
    );
    let refused = run_with_timeout(
        portcullis()
            .args(["gc", "--server", &server.base_url(), "--user", "dev"])
            .env("PORTCULLIS_PASSWORD", "devpw"),
        COMMAND_TIMEOUT,
    );
    assert_eq!(refused.status.code(), Some(2));
    let bad = run("?grace=soon").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("UNSUPPORTED"));
}

/// Upload sessions idle past storage.upload_expiry_secs go with their bytes; a
/// fresh one stays.
#[tokio::test]
async fn idle_upload_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[storage]\nupload_expiry_secs = 3600\n"
    );
    let server = Server::start_with_config(&config, dir.path());
    let c = client();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let started = c
            .post(format!("{}/v2/team/app/blobs/uploads/", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let location = started.headers()["location"].to_str().unwrap().to_string();
        let patched = c
            .patch(format!("{}{location}", server.base_url()))
            .body(vec![7u8; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 202);
        let location = patched.headers()["location"].to_str().unwrap().to_string();
        sessions.push(location);
    }
    // The first one was last written to two hours ago.
    let id = sessions[0]
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let file = dir.path().join("data/uploads").join(id).join("data");
    run_ok(
        std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(&file),
        COMMAND_TIMEOUT,
    );
    let report: Value = json_of(c.post(format!("{}/admin/gc", server.base_url()))).await;
    assert_eq!(report["uploads_expired"], json!(1), "{report}");
    assert_eq!(report["upload_bytes_freed"], json!(4096));
    let status = |location: &str| c.get(format!("{}{location}", server.base_url())).send();
    let gone = status(&sessions[0]).await.unwrap();
    assert_eq!(gone.status(), 404);
    assert!(gone.text().await.unwrap().contains("BLOB_UPLOAD_UNKNOWN"));
    assert_eq!(status(&sessions[1]).await.unwrap().status(), 204);
    assert!(!file.exists());
}

const REPOS: [&str; 3] = ["r1", "r2", "r3"];
const ROUNDS: usize = 6;

/// Collections in a loop (grace 3 s, untagged manifests collected) while skopeo
/// pushes two images by turns into three repositories (uploading once, mounting or
/// finding the blobs in the others) and each is deleted after it landed: each image
/// is swept while the other is pushed, then pushed again while collections run. No
/// push fails, the last pushes all pull back whole, and fsck finds nothing.
#[test]
fn gc_in_a_loop_never_breaks_concurrent_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = Server::start_with_data(&data);
    let env = ContainersEnv::new();
    let images = [ImageFixture::small("one"), ImageFixture::small("two")];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let base = server.base_url();

    /// Stops the collector thread however the pushes end, so a failed push fails
    /// the test instead of leaving the scope waiting for the collector.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    let runs = std::sync::Mutex::new(Vec::<Value>::new());
    // Waits (bounded) until a collection deleted `digest`: the image it belongs to is
    // then swept while the other image is pushed, and pushed again after.
    let swept = |digest: &str, since: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let done = runs.lock().unwrap().iter().skip(since).any(|r| {
                r["blobs"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|d| d == digest))
            });
            if done {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
        let last = runs.lock().unwrap().last().cloned();
        panic!("no collection deleted {digest} within a minute; the last report: {last:?}");
    };

    std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let report = runtime.block_on(json_of(
                    client().post(format!("{base}/admin/gc?grace=3s&delete_untagged=true")),
                ));
                runs.lock().unwrap().push(report);
            }
        });
        let stopper = StopOnDrop(&stop);
        // Rounds alternate the images: what one round deletes ages past the grace
        // period while the next round runs, is swept, and is pushed again after.
        // The last round pushes both and deletes nothing.
        let mut previous: Option<(&ImageFixture, usize)> = None;
        for round in 0..=ROUNDS {
            let pushing: Vec<&ImageFixture> = if round == ROUNDS {
                images.iter().collect()
            } else {
                vec![&images[round % 2]]
            };
            let pushers: Vec<_> = REPOS
                .iter()
                .map(|repo| {
                    let (env, server, pushing) = (&env, &server, pushing.clone());
                    scope.spawn(move || {
                        for image in pushing {
                            skopeo_push(env, image, server, &format!("{repo}:{}", image.tag));
                        }
                    })
                })
                .collect();
            // What the previous round deleted is swept while this round pushes the
            // other image; the last round pushes it again while it may be being swept,
            // so either outcome is right there and nothing is waited for.
            if let Some((image, since)) = previous.take().filter(|_| round < ROUNDS) {
                swept(&image.config_digest, since);
            }
            for pusher in pushers {
                pusher.join().expect("a push failed while gc ran");
            }
            let deleted_at = runs.lock().unwrap().len();
            if round < ROUNDS {
                runtime.block_on(async {
                    let p = Pusher::new(&server);
                    for repo in REPOS {
                        for image in &pushing {
                            p.delete(repo, &image.manifest_digest).await;
                        }
                    }
                });
            }
            if round < ROUNDS {
                previous = Some((&images[round % 2], deleted_at));
            }
        }
        drop(stopper);
        collector.join().unwrap()
    });
    let collections = runs.into_inner().unwrap();
    let blobs: usize = collections
        .iter()
        .map(|r| r["blobs"].as_array().map_or(0, Vec::len))
        .sum();
    let links: u64 = collections
        .iter()
        .map(|r| r["links_removed"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "{} collections swept {links} links and {blobs} blobs while pushes ran",
        collections.len()
    );
    // Each round's image but the last deleted one was swept (waited for above).
    assert!(blobs >= 5 * (ROUNDS - 1), "{blobs} blobs swept");

    for repo in REPOS {
        for image in &images {
            let out = dir.path().join(format!("pulled-{repo}-{}", image.tag));
            run_ok(
                &mut env.skopeo(&[
                    "copy",
                    "--src-tls-verify=false",
                    &format!("docker://{}/{repo}:{}", server.host_port(), image.tag),
                    &format!("dir:{}", out.display()),
                ]),
                COMMAND_TIMEOUT,
            );
            let manifest = std::fs::read(out.join("manifest.json")).unwrap();
            assert_eq!(sha256_digest(&manifest), image.manifest_digest);
            for digest in image.blob_digests().iter().skip(1) {
                let bytes = std::fs::read(out.join(common::hex_part(digest))).unwrap();
                assert_eq!(&sha256_digest(&bytes), digest);
            }
        }
    }
    drop(server);
    fsck_ok(&data);
}

/// Reads a blob over a raw socket, slowly: the headers and a first piece now, the
/// rest when told; returns the whole body.
struct SlowReader {
    stream: std::net::TcpStream,
    body: Vec<u8>,
}

impl SlowReader {
    fn start(port: u16, path: &str) -> SlowReader {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut body = vec![0u8; 1024];
        stream.read_exact(&mut body).unwrap();
        SlowReader { stream, body }
    }

    fn finish(mut self) -> Vec<u8> {
        self.stream.read_to_end(&mut self.body).unwrap();
        self.body
    }
}

/// The JSON answer to a request that must succeed.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("a JSON answer")
}

async fn get_ok(c: &Client, base: &str, path: String) -> Vec<u8> {
    let response = c.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.bytes().await.unwrap().to_vec()
}

fn layer(image: &ImageFixture) -> String {
    image.layer_digests[0].clone()
}

/// A fake hub serving two images of one 3 MiB layer each, and a mirror of it whose
/// cache may hold 2 MiB.
struct CappedMirror {
    hub: FakeHub,
    server: Server,
    dir: tempfile::TempDir,
    big: ImageFixture,
    other: ImageFixture,
    cap: u64,
    _content: tempfile::TempDir,
}

impl CappedMirror {
    fn start() -> CappedMirror {
        let content = tempfile::tempdir().unwrap();
        let big = ImageFixture::build("big", &[3 << 20]);
        let other = ImageFixture::build("other", &[3 << 20]);
        place_image(content.path(), "library/big", &big, "1");
        place_image(content.path(), "library/other", &other, "1");
        let hub = FakeHub::start(content.path(), FakeHubOptions::default());
        let dir = tempfile::tempdir().unwrap();
        let cap = 2u64 << 20;
        let config = mirror_config(&hub, "", "") + &format!("[cache]\nmax_bytes = {cap}\n");
        let server = Server::start_with_config(&config, dir.path());
        CappedMirror {
            hub,
            server,
            dir,
            big,
            other,
            cap,
            _content: content,
        }
    }
}

/// Pulls each image's manifest and layer through the mirror, checking the layer.
async fn pull_layers(c: &Client, base: &str, images: &[&ImageFixture]) {
    for image in images {
        let repo = format!("library/{}", image.tag);
        get_ok(c, base, format!("/v2/{repo}/manifests/1")).await;
        let bytes = get_ok(c, base, format!("/v2/{repo}/blobs/{}", layer(image))).await;
        assert_eq!(sha256_digest(&bytes), layer(image));
    }
}

/// With no one asking, the server notices that the cache outgrew its cap (it checks
/// every 10 s) and collects: the layers go, the report says so.
#[tokio::test]
async fn the_server_evicts_on_its_own_when_the_cache_outgrows_its_cap() {
    let m = CappedMirror::start();
    let c = client();
    let base = m.server.base_url();
    pull_layers(&c, &base, &[&m.big, &m.other]).await;
    let data = m.dir.path().join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let gone = {
            let now = stored(&data);
            !now.contains(&layer(&m.big)) && !now.contains(&layer(&m.other))
        };
        if gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache stayed over its cap for a minute"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
    let last: Value = json_of(c.get(format!("{base}/admin/gc"))).await;
    assert!(last["evicted_blobs"].as_u64().unwrap() >= 1, "{last}");
    assert!(last["cached_bytes"].as_u64().unwrap() <= m.cap, "{last}");
    assert!(
        m.server.log().contains("over cache.max_bytes"),
        "the log says why"
    );
}

/// The cap on cached content: over it, least recently used cached blobs go, pushed
/// content never does, a reader in the middle of an evicted blob finishes, and the
/// next pull fetches it again.
#[tokio::test]
async fn eviction_keeps_the_cache_under_its_cap_and_readers_finish() {
    let CappedMirror {
        hub,
        server,
        dir,
        big,
        other,
        cap,
        _content,
    } = CappedMirror::start();
    let c = client();
    let base = server.base_url();

    // Pushed content next to the cache: never evicted.
    let p = Pusher::new(&server);
    let pushed = p
        .image(
            "team/app",
            Some("1"),
            b"pushed config",
            &[&vec![5u8; 3 << 20]],
            None,
        )
        .await;

    pull_layers(&c, &base, &[&big, &other]).await;
    let data = dir.path().join("data");

    // A client in the middle of the big layer when the collection evicts it.
    let reader = SlowReader::start(
        server.port(),
        &format!("/v2/library/big/blobs/{}", layer(&big)),
    );
    // (The cap's own trigger may have evicted the layers already, and the reader's
    // request fetched the big one again: at least that one goes now.)
    let report: Value = json_of(c.post(format!("{base}/admin/gc"))).await;
    assert!(report["evicted_blobs"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["cached_bytes"].as_u64().unwrap() <= cap, "{report}");
    let after = stored(&data);
    assert!(!after.contains(&layer(&big)) && !after.contains(&layer(&other)));
    assert!(after.contains(&pushed.0));
    let body = reader.finish();
    assert_eq!(
        sha256_digest(&body),
        layer(&big),
        "the reader got the whole blob"
    );

    // Evicted content comes back from the upstream.
    hub.reset();
    let bytes = get_ok(&c, &base, format!("/v2/library/big/blobs/{}", layer(&big))).await;
    assert_eq!(sha256_digest(&bytes), layer(&big));
    let fetched = hub
        .requests()
        .iter()
        .filter(|r| r.path.contains(&layer(&big)) && r.method == "GET")
        .count();
    assert!(fetched >= 1, "fetched again from the upstream");
    assert_eq!(
        p.status(&format!("/v2/team/app/manifests/{}", pushed.0))
            .await,
        200
    );
}
