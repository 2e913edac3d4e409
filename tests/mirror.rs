//! The pull-through cache against the simulated Docker Hub (`portcullis-loadtest
//! fake-hub`, see `tests/common/fakehub.rs`): every assertion about upstream traffic
//! is read from the hub's own request log. Clients here are reqwest over loopback; the
//! real clients (skopeo, podman, dockerd, ctr) are in `tests/mirror_clients.rs`.

#[allow(dead_code)]
mod common;

use common::fakehub::{
    mirror_config, place_image, place_index, set_tag, FakeHub, FakeHubOptions, HubRequest,
};
use common::{metric, portcullis, run_ok, sha256_digest, ImageFixture, Server};
use reqwest::{Client, Response};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client")
}

/// A fake hub serving `content`, and a portcullis mirroring it (see [`mirror_config`]).
struct Mirror {
    hub: FakeHub,
    server: Server,
    _dir: tempfile::TempDir,
}

impl Mirror {
    fn start(content: &Path, upstream_extra: &str) -> Mirror {
        Self::start_with(content, FakeHubOptions::default(), upstream_extra, "")
    }

    fn start_with(
        content: &Path,
        options: FakeHubOptions,
        upstream_extra: &str,
        mirror_extra: &str,
    ) -> Mirror {
        let hub = FakeHub::start(content, options);
        let dir = tempfile::tempdir().expect("server dir");
        let server = Server::start_with_config(
            &mirror_config(&hub, upstream_extra, mirror_extra),
            dir.path(),
        );
        Mirror {
            hub,
            server,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.server.base_url())
    }
}

fn content_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("content dir")
}

async fn get(url: &str, accept: &str) -> Response {
    client()
        .get(url)
        .header("Accept", accept)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn body_of(response: Response, what: &str) -> Vec<u8> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{what}: body: {e}"));
    assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
    body.to_vec()
}

/// Pulls `repo:tag` the way clients do (manifest by tag, then every blob), checks
/// every digest, and returns the manifest bytes.
async fn pull(base: &str, repo: &str, tag: &str) -> Vec<u8> {
    let manifest = body_of(
        get(&format!("{base}/v2/{repo}/manifests/{tag}"), ACCEPT_ALL).await,
        "manifest",
    )
    .await;
    let parsed: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let mut digests = vec![parsed["config"]["digest"].as_str().unwrap().to_string()];
    for layer in parsed["layers"].as_array().unwrap() {
        digests.push(layer["digest"].as_str().unwrap().to_string());
    }
    for digest in digests {
        let bytes = body_of(
            get(&format!("{base}/v2/{repo}/blobs/{digest}"), "*/*").await,
            &digest,
        )
        .await;
        assert_eq!(sha256_digest(&bytes), digest, "blob content");
    }
    manifest
}

/// OCI error body check: status and code; returns the detail.
async fn oci_error(response: Response, status: u16, code: &str) -> String {
    let got = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["errors"][0]["code"], code, "{body}");
    v["errors"][0]["detail"].as_str().unwrap_or("").to_string()
}

fn blob_gets<'a>(log: &'a [HubRequest], digest: &str) -> Vec<&'a HubRequest> {
    log.iter()
        .filter(|r| {
            r.listener == "registry"
                && r.method == "GET"
                && r.path.ends_with(&format!("/blobs/{digest}"))
        })
        .collect()
}

/// Manifest requests the upstream answered (a 401 asking for a token is not a pull).
fn manifest_requests<'a>(log: &'a [HubRequest], method: &str) -> Vec<&'a HubRequest> {
    log.iter()
        .filter(|r| r.method == method && r.path.contains("/manifests/") && r.status != 401)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_cold_pulls_fetch_each_blob_once_and_a_warm_pull_none() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[3 << 20, 1 << 20, 256 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    let base = m.server.base_url();
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { pull(&base, "library/app", "1").await })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), image.manifest);
    }
    let log = m.hub.requests();
    let mut blobs = vec![image.config_digest.clone()];
    blobs.extend(image.layer_digests.iter().cloned());
    for digest in &blobs {
        assert_eq!(
            blob_gets(&log, digest).len(),
            1,
            "upstream GETs of {digest}: {log:#?}"
        );
    }
    assert_eq!(
        log.iter().filter(|r| r.listener == "cdn").count(),
        blobs.len(),
        "one CDN download per blob"
    );
    // The tag was fetched once for all eight clients (Docker Hub counts each GET), and
    // only the very first request went without a token, to learn the challenge.
    assert_eq!(manifest_requests(&log, "GET").len(), 1, "{log:#?}");
    assert_eq!(
        log.iter().filter(|r| r.status == 401).count(),
        1,
        "{log:#?}"
    );
    // The CDN got no credentials; the registry got a token after one 401 at most.
    assert!(log
        .iter()
        .filter(|r| r.listener == "cdn")
        .all(|r| r.authorization == "none"));
    let tokens = log.iter().filter(|r| r.path.starts_with("/token")).count();
    assert_eq!(tokens, 1, "one token for the scope, reused: {log:#?}");

    m.hub.reset();
    pull(&base, "library/app", "1").await;
    // Also named without library/ and with the registry prefix: the same cache.
    pull(&base, "app", "1").await;
    pull(&base, "docker.io/library/app", "1").await;
    assert_eq!(
        m.hub.requests(),
        Vec::new(),
        "a warm pull asks the upstream nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tags_are_revalidated_with_head_and_fetched_again_only_when_moved() {
    let content = content_dir();
    let one = ImageFixture::build("1", &[64 << 10]);
    let two = ImageFixture::build("2", &[64 << 10]);
    place_image(content.path(), "library/app", &one, "latest");
    place_image(content.path(), "library/app", &two, "other");
    let m = Mirror::start(content.path(), "tag_ttl_secs = 0");
    let base = m.server.base_url();
    assert_eq!(pull(&base, "library/app", "latest").await, one.manifest);
    m.hub.reset();
    assert_eq!(pull(&base, "library/app", "latest").await, one.manifest);
    let log = m.hub.requests();
    assert_eq!(manifest_requests(&log, "HEAD").len(), 1, "{log:#?}");
    assert!(
        manifest_requests(&log, "GET").is_empty(),
        "unchanged tag: no body fetched: {log:#?}"
    );

    // The tag moves upstream: one HEAD, then one GET of the new manifest by digest.
    set_tag(
        content.path(),
        "library/app",
        "latest",
        OCI_MANIFEST,
        &two.manifest_digest,
    );
    m.hub.reset();
    assert_eq!(pull(&base, "library/app", "latest").await, two.manifest);
    let log = m.hub.requests();
    assert_eq!(manifest_requests(&log, "HEAD").len(), 1, "{log:#?}");
    let gets = manifest_requests(&log, "GET");
    assert_eq!(gets.len(), 1, "{log:#?}");
    assert!(
        gets[0].path.ends_with(&two.manifest_digest),
        "by digest: {gets:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_blob_is_resumed_with_a_range_request() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[2 << 20]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    let layer = &image.layer_digests[0];
    m.hub.set_faults(json!([{"kind": "reset", "target": "cdn", "path_contains": common::hex_part(layer), "after_bytes": 300_000, "times": 1}]));
    let bytes = body_of(
        get(&m.url(&format!("library/app/blobs/{layer}")), "*/*").await,
        "layer",
    )
    .await;
    assert_eq!(sha256_digest(&bytes), *layer);
    let cdn: Vec<_> = m
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.listener == "cdn")
        .collect();
    assert_eq!(cdn.len(), 2, "{cdn:#?}");
    assert_eq!(cdn[0].fault.as_deref(), Some("reset"));
    let resumed_at = cdn[1]
        .range
        .as_deref()
        .expect("the second GET is a Range request");
    let from: u64 = resumed_at
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("range {resumed_at}"));
    assert!(
        from > 0 && from <= 300_000,
        "resumed from the last byte received: {from}"
    );
    // The whole image pulls from the cache afterwards.
    m.hub.reset();
    pull(&m.server.base_url(), "library/app", "1").await;
    assert!(blob_gets(&m.hub.requests(), layer).is_empty());
}

/// Whether the store holds a blob file for `digest`.
fn stored(server: &Server, digest: &str) -> bool {
    let hex = common::hex_part(digest);
    server
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_fault_leaves_nothing_cached_and_the_next_good_pull_works() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[1 << 20]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    let layer = &image.layer_digests[0];
    let url = m.url(&format!("library/app/blobs/{layer}"));
    let faults = [
        json!({"kind": "status", "status": 500, "target": "cdn"}),
        json!({"kind": "wrong_bytes", "target": "cdn"}),
        // More truncations than the fetch resumes: it gives up.
        json!({"kind": "truncate", "after_bytes": 1000, "target": "cdn"}),
        json!({"kind": "drop", "target": "blob"}),
    ];
    for fault in faults {
        m.hub.set_faults(json!([fault]));
        let response = get(&url, "*/*").await;
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(bytes) => assert!(
                status >= 500 && bytes.len() < (1 << 20),
                "{fault}: a failed fetch must not look like a blob ({status}, {} bytes)",
                bytes.len()
            ),
            // The body broke off before its last byte: the client sees the failure.
            Err(_) => assert_eq!(status, 200, "{fault}"),
        }
        assert!(!stored(&m.server, layer), "{fault}: nothing is cached");
        let log = m.hub.requests();
        assert!(
            log.iter().any(|r| r.fault.is_some()),
            "{fault} never applied: {log:#?}"
        );
        m.hub.clear_faults();
        m.hub.reset();
    }
    let bytes = body_of(get(&url, "*/*").await, "good pull").await;
    assert_eq!(sha256_digest(&bytes), *layer);
    assert!(stored(&m.server, layer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_manifest_is_refused_and_a_missing_one_is_a_404() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[16 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    m.hub
        .set_faults(json!([{"kind": "wrong_bytes", "target": "manifest"}]));
    let detail = oci_error(
        get(&m.url("library/app/manifests/1"), ACCEPT_ALL).await,
        502,
        "UNKNOWN",
    )
    .await;
    assert!(
        detail.contains("docker.io") && detail.contains("digest"),
        "{detail}"
    );
    m.hub.clear_faults();
    assert_eq!(
        pull(&m.server.base_url(), "library/app", "1").await,
        image.manifest
    );
    oci_error(
        get(&m.url("library/app/manifests/nope"), ACCEPT_ALL).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let missing = format!("library/app/blobs/{}", sha256_digest(b"not there"));
    oci_error(get(&m.url(&missing), "*/*").await, 404, "BLOB_UNKNOWN").await;
    oci_error(
        get(&m.url("library/ghost/manifests/1"), ACCEPT_ALL).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_gone_cached_images_and_tag_lists_still_pull() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[64 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    place_image(content.path(), "library/app", &image, "2");
    place_image(content.path(), "library/other", &image, "1");
    // Every tag request revalidates, so serving stale is what keeps it working.
    let mut m = Mirror::start(content.path(), "tag_ttl_secs = 0");
    let base = m.server.base_url();
    pull(&base, "library/app", "1").await;
    let tags = body_of(get(&m.url("library/app/tags/list"), "*/*").await, "tags").await;
    let tags: Value = serde_json::from_slice(&tags).unwrap();
    assert_eq!(tags, json!({"name": "library/app", "tags": ["1", "2"]}));

    m.hub.stop();
    assert_eq!(pull(&base, "library/app", "1").await, image.manifest);
    let stale = body_of(
        get(&m.url("library/app/tags/list"), "*/*").await,
        "stale tags",
    )
    .await;
    assert_eq!(serde_json::from_slice::<Value>(&stale).unwrap(), tags);
    // A reordered Accept list finds the same cached tag.
    let reordered = "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json";
    let again = body_of(
        get(&m.url("library/app/manifests/1"), reordered).await,
        "reordered",
    )
    .await;
    assert_eq!(again, image.manifest);
    // Never cached: a clear 503 naming the upstream, again and again (marked down).
    for _ in 0..4 {
        let detail = oci_error(
            get(&m.url("library/other/manifests/1"), ACCEPT_ALL).await,
            503,
            "UNAVAILABLE",
        )
        .await;
        assert!(detail.contains("docker.io"), "{detail}");
    }
    // It comes back: the next pull works (the probe or the next request finds it).
    m.hub.restart();
    let log_before = m.server.log();
    let mut last = None;
    for _ in 0..30 {
        let response = get(&m.url("library/other/manifests/1"), ACCEPT_ALL).await;
        if response.status() == 200 {
            last = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.is_some(),
        "the upstream is used again once back; log:\n{log_before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_fills_the_cache_for_an_offline_server() {
    let content = content_dir();
    let index = common::fakehub::IndexFixture::build("3.20");
    place_index(content.path(), "library/alpine", &index, "3.20");
    let hub = FakeHub::start(content.path(), FakeHubOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = run_ok(
        portcullis()
            .args(["fetch", "--platform", "linux/arm64", "--data"])
            .arg(&data)
            .args([
                "--mirror",
                &format!("docker.io={}", hub.registry_url()),
                "docker.io/library/alpine:3.20",
            ]),
        CLIENT_TIMEOUT,
    );
    assert!(output.stderr.contains("2 manifests"), "{}", output.stderr);
    let arm = index.platform("arm64");
    let amd = index.platform("amd64");
    let log = hub.requests();
    assert!(log.iter().any(|r| r.path.ends_with(&arm.manifest_digest)));
    assert!(
        !log.iter().any(|r| r.path.ends_with(&amd.manifest_digest)),
        "only the platform asked for"
    );

    // The upstream is still there, but an offline mirror never asks it.
    hub.reset();
    let config = mirror_config(&hub, "", "offline = true");
    let server = Server::start_with_config(&config, dir.path());
    let base = server.base_url();
    let got = body_of(
        get(
            &format!("{base}/v2/library/alpine/manifests/3.20"),
            ACCEPT_ALL,
        )
        .await,
        "index",
    )
    .await;
    assert_eq!(got, index.index);
    let child = body_of(
        get(
            &format!("{base}/v2/alpine/manifests/{}", arm.manifest_digest),
            ACCEPT_ALL,
        )
        .await,
        "arm64 manifest",
    )
    .await;
    assert_eq!(child, arm.manifest);
    for digest in std::iter::once(&arm.config_digest).chain(&arm.layer_digests) {
        let bytes = body_of(
            get(&format!("{base}/v2/alpine/blobs/{digest}"), "*/*").await,
            digest,
        )
        .await;
        assert_eq!(sha256_digest(&bytes), *digest);
    }
    let detail = oci_error(
        get(
            &format!("{base}/v2/alpine/manifests/{}", amd.manifest_digest),
            ACCEPT_ALL,
        )
        .await,
        503,
        "UNAVAILABLE",
    )
    .await;
    assert!(detail.contains("offline"), "{detail}");
    // Never listed while online: the list is the tags the cache holds.
    let tags = body_of(
        get(&format!("{base}/v2/alpine/tags/list"), "*/*").await,
        "tags",
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&tags).unwrap(),
        json!({"name": "alpine", "tags": ["3.20"]})
    );
    assert_eq!(
        hub.requests(),
        Vec::new(),
        "offline: no upstream request at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_serves_local_pushes_and_refuses_pushes_to_mirrored_names() {
    let content = content_dir();
    let m = Mirror::start(content.path(), "");
    let http = client();
    let blob = b"local layer".to_vec();
    let digest = sha256_digest(&blob);
    let pushed = http
        .post(m.url(&format!("team/app/blobs/uploads/?digest={digest}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 201);
    let back = body_of(
        get(&m.url(&format!("team/app/blobs/{digest}")), "*/*").await,
        "local blob",
    )
    .await;
    assert_eq!(back, blob);
    let refused = http
        .post(m.url("library/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let detail = oci_error(refused, 405, "UNSUPPORTED").await;
    assert!(detail.contains("mirror.local"), "{detail}");
    let refused = http
        .put(m.url("docker.io/library/app/manifests/1"))
        .header("Content-Type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    oci_error(refused, 405, "UNSUPPORTED").await;
    assert!(
        m.hub.requests().is_empty(),
        "local repositories never go upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_selects_the_upstream_and_is_answered_with_oci_namespace() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[16 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    let response = client()
        .head(m.url("library/app/manifests/1?ns=docker.io"))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["oci-namespace"], "docker.io");
    assert_eq!(
        response.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    assert_eq!(
        response.headers()["content-length"],
        image.manifest.len().to_string().as_str()
    );
    // An ns naming no upstream (this registry's own name) is as if absent.
    let own = get(&m.url("library/app/manifests/1?ns=mirror.lan"), ACCEPT_ALL).await;
    assert!(own.headers().get("oci-namespace").is_none());
    assert_eq!(body_of(own, "unknown ns").await, image.manifest);
    // And it cannot turn a cached repository into a writable one.
    let write = client()
        .delete(m.url(&format!(
            "docker.io/library/app/manifests/{}?ns=bogus",
            image.manifest_digest
        )))
        .send()
        .await
        .unwrap();
    oci_error(write, 405, "UNSUPPORTED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_cached_whole_and_children_as_clients_ask() {
    let content = content_dir();
    let index = common::fakehub::IndexFixture::build("multi");
    place_index(content.path(), "library/multi", &index, "multi");
    let m = Mirror::start(content.path(), "");
    let got = get(&m.url("library/multi/manifests/multi"), ACCEPT_ALL).await;
    assert_eq!(got.headers()["content-type"], OCI_INDEX);
    assert_eq!(body_of(got, "index").await, index.index);
    let amd = index.platform("amd64");
    let child = get(
        &m.url(&format!("library/multi/manifests/{}", amd.manifest_digest)),
        ACCEPT_ALL,
    )
    .await;
    assert_eq!(body_of(child, "amd64").await, amd.manifest);
    let log = m.hub.requests();
    let arm = index.platform("arm64");
    assert!(
        !log.iter().any(|r| r.path.contains(&arm.manifest_digest)),
        "{log:#?}"
    );
    // The cache answered the index from memory of what the upstream sent, with the
    // upstream's media type, and fetched it once.
    assert_eq!(
        manifest_requests(&log, "GET").len(),
        2,
        "the index and one child: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncached_blob_head_is_a_head_upstream_and_429_is_passed_on() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[128 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    let layer = &image.layer_digests[0];
    let head = client()
        .head(m.url(&format!("library/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        image.blob(layer).len().to_string().as_str()
    );
    let log = m.hub.requests();
    assert!(blob_gets(&log, layer).is_empty(), "HEAD only: {log:#?}");
    assert!(!stored(&m.server, layer));

    m.hub
        .set_faults(json!([{"kind": "rate_limit", "retry_after_secs": 30, "target": "manifest"}]));
    let limited = get(&m.url("library/app/manifests/1"), ACCEPT_ALL).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 30, "{retry_after}");
    oci_error(limited, 429, "TOOMANYREQUESTS").await;
    let asked = m.hub.requests().len();
    let again = get(&m.url("library/app/manifests/1"), ACCEPT_ALL).await;
    oci_error(again, 429, "TOOMANYREQUESTS").await;
    assert_eq!(
        m.hub.requests().len(),
        asked,
        "no request during Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_joiner_streams_the_blob_while_it_is_still_arriving() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[4 << 20]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "");
    let layer = image.layer_digests[0].clone();
    // 4 MiB at 512 KiB/s: the download takes about eight seconds.
    m.hub
        .set_faults(json!([{"kind": "slow_body", "bytes_per_sec": 512 << 10, "target": "cdn"}]));
    let url = m.url(&format!("library/app/blobs/{layer}"));
    let mut first = get(&url, "*/*").await;
    assert_eq!(first.status(), 200);
    let first_chunk = first
        .chunk()
        .await
        .unwrap()
        .expect("first bytes before the end");
    // The first client goes away: the fetch goes on for the others.
    drop(first);
    let mut joiner = get(&url, "*/*").await;
    let joined = joiner
        .chunk()
        .await
        .unwrap()
        .expect("the joiner's first bytes");
    assert!(!first_chunk.is_empty() && !joined.is_empty());
    // Both got bytes while the download was still running, from one upstream GET.
    let still_arriving = !stored(&m.server, &layer);
    assert!(
        still_arriving,
        "the blob was committed before the joiner started: slow the fault down"
    );
    // A range of the arriving blob, as resuming clients ask; its last byte, like
    // every stream's, waits until the whole blob is verified.
    let ranged = client()
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        format!("bytes 1000-1999/{}", image.blob(&layer).len())
    );
    assert_eq!(
        ranged.bytes().await.unwrap(),
        image.blob(&layer)[1000..2000]
    );
    let mut whole = joined.to_vec();
    while let Some(chunk) = joiner.chunk().await.unwrap() {
        whole.extend_from_slice(&chunk);
    }
    assert_eq!(sha256_digest(&whole), layer);
    let log = m.hub.requests();
    assert_eq!(
        log.iter().filter(|r| r.listener == "cdn").count(),
        1,
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_upstream_repositories_use_the_configured_credentials() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[16 << 10]);
    place_image(content.path(), "acme/private", &image, "1");
    let options = FakeHubOptions {
        credentials: Some(("robot".into(), "hunter2".into())),
        ..FakeHubOptions::default()
    };
    let m = Mirror::start_with(
        content.path(),
        options,
        "username = \"robot\"\npassword = \"wrong-one\"",
        "",
    );
    let detail = oci_error(
        get(&m.url("acme/private/manifests/1"), ACCEPT_ALL).await,
        502,
        "UNKNOWN",
    )
    .await;
    assert!(detail.contains("credentials"), "{detail}");
    assert!(
        !m.server.log().contains("wrong-one"),
        "no password in the log"
    );

    let dir = tempfile::tempdir().unwrap();
    let text = mirror_config(
        &m.hub,
        "username = \"robot\"\npassword_env = \"HUB_PASSWORD\"",
        "",
    );
    let server = Server::start_with_config_env(&text, dir.path(), &[("HUB_PASSWORD", "hunter2")]);
    assert_eq!(
        pull(&server.base_url(), "acme/private", "1").await,
        image.manifest
    );
    let tokens: Vec<_> = m
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert!(
        tokens
            .iter()
            .any(|r| r.authorization == "basic" && r.status == 200),
        "{tokens:#?}"
    );
    assert!(!server.log().contains("hunter2"), "no password in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distribution_registry_is_a_second_upstream_by_prefix_and_ns() {
    let content = content_dir();
    let distribution = common::distribution::Distribution::start();
    let image = ImageFixture::build("1", &[64 << 10, 32 << 10]);
    run_ok(
        &mut common::ContainersEnv::new().skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", image.layout.display()),
            &format!("docker://{}/team/tool:1", distribution.host_port()),
        ]),
        CLIENT_TIMEOUT,
    );
    let second = format!(
        "\n[[upstream]]\nname = \"registry.lan\"\nurl = \"{}\"\n",
        distribution.url()
    );
    let m = Mirror::start(content.path(), &second);
    let base = m.server.base_url();
    // A registry prefix for clients that cannot send ns, and ns for those that do.
    assert_eq!(
        pull(&base, "registry.lan/team/tool", "1").await,
        image.manifest
    );
    let by_ns = get(&m.url("team/tool/manifests/1?ns=registry.lan"), ACCEPT_ALL).await;
    assert_eq!(by_ns.headers()["oci-namespace"], "registry.lan");
    assert_eq!(body_of(by_ns, "by ns").await, image.manifest);
    // team/* is local: without ns it never reaches either upstream.
    oci_error(
        get(&m.url("team/tool/manifests/1"), ACCEPT_ALL).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    assert!(m.hub.requests().is_empty(), "nothing went to docker.io");
    let catalog = body_of(get(&m.url("_catalog"), "*/*").await, "catalog").await;
    let catalog: Value = serde_json::from_slice(&catalog).unwrap();
    assert_eq!(catalog["repositories"], json!(["registry.lan/team/tool"]));

    // The second upstream goes away; what it gave is still served.
    drop(distribution);
    assert_eq!(
        pull(&base, "registry.lan/team/tool", "1").await,
        image.manifest
    );
    let by_digest = format!("registry.lan/team/tool/manifests/{}", image.manifest_digest);
    assert_eq!(
        body_of(get(&m.url(&by_digest), ACCEPT_ALL).await, "by digest").await,
        image.manifest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_fetch_leaves_a_consistent_cache() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[2 << 20]);
    place_image(content.path(), "library/app", &image, "1");
    let hub = FakeHub::start(content.path(), FakeHubOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let config = mirror_config(&hub, "", "");
    let server = Server::start_with_config(&config, dir.path());
    let layer = image.layer_digests[0].clone();
    hub.set_faults(json!([{"kind": "slow_body", "bytes_per_sec": 512 << 10, "target": "cdn"}]));
    let url = format!("{}/v2/library/app/blobs/{layer}", server.base_url());
    let mut partial = get(&url, "*/*").await;
    partial.chunk().await.unwrap().expect("some bytes arrived");
    // Dropping the server is SIGKILL: the download dies half-way.
    assert!(!stored(&server, &layer));
    drop(server);
    drop(partial);
    hub.clear_faults();
    let restarted = Server::start_with_config(&config, dir.path());
    assert!(
        !stored(&restarted, &layer),
        "a half-fetched blob is never visible"
    );
    assert_eq!(
        pull(&restarted.base_url(), "library/app", "1").await,
        image.manifest
    );
    assert!(stored(&restarted, &layer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_see_mirrored_repositories_by_their_cached_name() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[16 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    place_image(content.path(), "acme/app", &image, "1");
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = secrets.path().join("htpasswd");
    common::htpasswd_add(&htpasswd, "alice", "pw");
    // Docker Hub content for everyone, the (private) ghcr.io mirror for users only.
    let hub = FakeHub::start(content.path(), FakeHubOptions::default());
    let extra = format!(
        "\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n\
         [auth]\nhtpasswd = \"{}\"\n\
         [[access]]\nrepositories = \"docker.io/*\"\npull = [\"anonymous\"]\n\
         [[access]]\nrepositories = \"*\"\npull = [\"*\"]\n",
        hub.registry_url(),
        htpasswd.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(&mirror_config(&hub, &extra, ""), dir.path());
    let url = |path: &str| format!("{}/v2/{path}", server.base_url());
    for anonymous_ok in [
        "library/app/manifests/1",
        "app/manifests/1",
        "docker.io/library/app/manifests/1",
    ] {
        let response = get(&url(anonymous_ok), ACCEPT_ALL).await;
        assert_eq!(response.status(), 200, "{anonymous_ok}");
    }
    // However the ghcr.io repository is spelled, its rule applies.
    for spelling in [
        "acme/app/manifests/1?ns=ghcr.io",
        "ghcr.io/acme/app/manifests/1",
    ] {
        oci_error(get(&url(spelling), ACCEPT_ALL).await, 401, "UNAUTHORIZED").await;
        let logged_in = client()
            .get(url(spelling))
            .header("Accept", ACCEPT_ALL)
            .basic_auth("alice", Some("pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(body_of(logged_in, spelling).await, image.manifest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_before_it_expires_is_fetched_again() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[16 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    let m = Mirror::start(content.path(), "tag_ttl_secs = 0");
    let base = m.server.base_url();
    pull(&base, "library/app", "1").await;
    m.hub.revoke_tokens();
    m.hub.reset();
    // The tag must be revalidated; the cached token is refused, a new one is fetched.
    assert_eq!(pull(&base, "library/app", "1").await, image.manifest);
    let log = m.hub.requests();
    let heads: Vec<_> = log.iter().filter(|r| r.method == "HEAD").collect();
    assert_eq!(heads.len(), 2, "refused, then with the new token: {log:#?}");
    assert_eq!((heads[0].status, heads[1].status), (401, 200), "{log:#?}");
    assert_eq!(
        log.iter().filter(|r| r.path.starts_with("/token")).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_removed_upstream_is_forgotten_not_served_stale() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[16 << 10]);
    place_image(content.path(), "library/app", &image, "gone");
    let mut m = Mirror::start(content.path(), "tag_ttl_secs = 0");
    pull(&m.server.base_url(), "library/app", "gone").await;
    common::fakehub::remove_tag(content.path(), "library/app", "gone");
    let url = m.url("library/app/manifests/gone");
    oci_error(get(&url, ACCEPT_ALL).await, 404, "MANIFEST_UNKNOWN").await;
    // Forgotten: with the upstream gone there is no stale copy to fall back on.
    m.hub.stop();
    oci_error(get(&url, ACCEPT_ALL).await, 503, "UNAVAILABLE").await;
    // The manifest itself stays cached by digest.
    let by_digest = m.url(&format!("library/app/manifests/{}", image.manifest_digest));
    assert_eq!(
        body_of(get(&by_digest, ACCEPT_ALL).await, "by digest").await,
        image.manifest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_and_upstream_metrics_count_misses_hits_coalescing_and_stale_serves() {
    let content = content_dir();
    let image = ImageFixture::build("1", &[1 << 20, 128 << 10]);
    let other = ImageFixture::build("1", &[2 << 20, 64 << 10]);
    place_image(content.path(), "library/app", &image, "1");
    place_image(content.path(), "library/other", &other, "1");
    let metrics = format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
        common::METRICS_PORT
    );
    let mut m = Mirror::start_with(
        content.path(),
        FakeHubOptions::default(),
        "tag_ttl_secs = 0",
        &metrics,
    );
    let base = m.server.base_url();
    let blobs = 1.0 + image.layer_digests.len() as f64;
    let cache = |s: &str, kind: &str, result: &str| {
        metric(
            s,
            "portcullis_cache_requests_total",
            &[("kind", kind), ("result", result)],
        )
    };
    let upstream = |s: &str, method: &str, status: &str| {
        metric(
            s,
            "portcullis_upstream_requests_total",
            &[
                ("upstream", "docker.io"),
                ("method", method),
                ("status", status),
            ],
        )
    };

    // Cold: the tag and every blob are misses, fetched upstream.
    pull(&base, "library/app", "1").await;
    let cold = common::scrape_metrics(&m.server);
    assert_eq!(cache(&cold, "manifest", "miss"), 1.0, "{cold}");
    assert_eq!(cache(&cold, "blob", "miss"), blobs);
    assert_eq!(cache(&cold, "blob", "hit"), 0.0);
    let log = m.hub.requests();
    let answered = |method: &str, status: u16| {
        log.iter()
            .filter(|r| {
                r.listener == "registry"
                    && r.path.starts_with("/v2/")
                    && r.method == method
                    && r.status == status
            })
            .count() as f64
    };
    // A request is counted once with its final status: a blob GET with the status of
    // the CDN it was redirected to, a GET that first learnt the token challenge (401)
    // with the answer to its retry.
    assert_eq!(
        upstream(&cold, "GET", "200"),
        answered("GET", 200) + answered("GET", 307),
        "every upstream GET counted: {log:#?}"
    );
    assert_eq!(upstream(&cold, "GET", "401"), 0.0);
    assert!(
        metric(
            &cold,
            "portcullis_upstream_ratelimit_remaining",
            &[("upstream", "docker.io")]
        ) > 0.0,
        "the hub's ratelimit-remaining is kept:\n{cold}"
    );
    assert_eq!(
        metric(
            &cold,
            "portcullis_upstream_up",
            &[("upstream", "docker.io")]
        ),
        1.0
    );

    // Warm, with a zero tag TTL: the tag is revalidated with a HEAD, the blobs are hits.
    pull(&base, "library/app", "1").await;
    let warm = common::scrape_metrics(&m.server);
    assert_eq!(cache(&warm, "manifest", "revalidated"), 1.0, "{warm}");
    assert_eq!(cache(&warm, "blob", "hit"), blobs);
    assert_eq!(
        upstream(&warm, "HEAD", "200") - upstream(&cold, "HEAD", "200"),
        1.0
    );

    // Four clients at once, cold: one fetch per blob, the others join it or find it.
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { pull(&base, "library/other", "1").await })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), other.manifest);
    }
    let together = common::scrape_metrics(&m.server);
    let other_blobs = 1.0 + other.layer_digests.len() as f64;
    assert_eq!(
        cache(&together, "blob", "miss") - cache(&warm, "blob", "miss"),
        other_blobs,
        "{together}"
    );
    let joined = cache(&together, "blob", "coalesced") + cache(&together, "blob", "hit")
        - cache(&warm, "blob", "hit");
    assert_eq!(joined, 3.0 * other_blobs, "{together}");

    // The upstream gone: the cached tag is served stale, and counted.
    m.hub.stop();
    pull(&base, "library/app", "1").await;
    let stale = common::scrape_metrics(&m.server);
    assert_eq!(cache(&stale, "manifest", "stale"), 1.0, "{stale}");
    assert!(
        metric(
            &stale,
            "portcullis_upstream_errors_total",
            &[("upstream", "docker.io")]
        ) >= 1.0,
        "{stale}"
    );
    let status = metric(
        &stale,
        "portcullis_upstream_requests_total",
        &[("status", "error")],
    );
    assert!(
        status >= 1.0,
        "a request with no answer counts as status=error: {stale}"
    );
}
