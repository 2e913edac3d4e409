//! Crash safety: the server is killed with SIGKILL at varying moments while clients
//! push monolithic and chunked uploads and manifests, pull blobs of a simulated Docker
//! Hub through the mirror, push images and delete them again, and garbage collections
//! with a short grace period run; after each kill `portcullis fsck` must find the
//! store consistent, and everything acknowledged before the kill must still be there,
//! byte for byte, after a restart: every tag, the blobs of every tagged image, and
//! every mirrored blob a client received whole (served from the cache once the
//! upstream is gone).

#[allow(dead_code)]
mod common;

use common::fakehub::{mirror_config, place_image, FakeHub, FakeHubOptions};
use common::{portcullis, pseudo_random, run_with_timeout, sha256_digest, ImageFixture, Server};
use reqwest::Client;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Kills per run; each after a different share of the load.
const KILLS: u64 = 6;
/// Layers of each cycle's hub image: a few MiB, so that kills land mid-fetch.
const HUB_LAYERS: [usize; 3] = [1536 << 10, 1 << 20, 512 << 10];
/// The collector's grace period: short, so that later cycles sweep garbage of earlier
/// ones while the load runs.
const GRACE: &str = "2s";

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// What the server acknowledged: blob uploads (a count, which paces the kills), blobs
/// that must survive (repo, digest, bytes: those of tagged images, and mirrored ones
/// received whole) and tags (repo, tag, manifest bytes).
#[derive(Default)]
struct Acknowledged {
    uploads: usize,
    blobs: Vec<(String, String, Vec<u8>)>,
    tags: Vec<(String, String, Vec<u8>)>,
}

/// An image pushed whole: its blobs (repo, digest, bytes) and manifest.
struct Pushed {
    blobs: Vec<(String, String, Vec<u8>)>,
    manifest: Vec<u8>,
}

/// Pushes three blobs (the third chunked) of `seed`'s image to `repo`, each `small`
/// or up to 300 KiB, then a manifest over them as `tag`; `None` once the server
/// fails one. Counts each acknowledged upload.
async fn push_image(
    c: &Client,
    base: &str,
    repo: &str,
    seed: u64,
    small: bool,
    tag: &str,
    acked: &Mutex<Acknowledged>,
) -> Option<Pushed> {
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    for part in 0..3u64 {
        let seed = seed + part;
        let extra = if small {
            0
        } else {
            (seed % 7) as usize * 50_000
        };
        let bytes = pseudo_random(4096 + extra, seed);
        let digest = sha256_digest(&bytes);
        let stored = if part == 2 {
            chunked(c, base, repo, &bytes, &digest).await
        } else {
            let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}");
            matches!(c.post(url).body(bytes.clone()).send().await, Ok(r) if r.status() == 201)
        };
        if !stored {
            return None;
        }
        acked.lock().unwrap().uploads += 1;
        layers.push(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                           "digest": digest, "size": bytes.len()}),
        );
        blobs.push((repo.to_string(), digest, bytes));
    }
    let config = layers.pop().unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config["digest"], "size": config["size"]},
        "layers": layers,
    }))
    .unwrap();
    let put = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await;
    matches!(put, Ok(r) if r.status() == 201).then_some(Pushed { blobs, manifest })
}

/// One client's work: image after image, tagged; each tag and its blobs recorded
/// only once the server said the manifest is stored (before that, with a short
/// grace period, the blobs are garbage a collection may take).
async fn push_forever(base: String, worker: u64, acked: Arc<Mutex<Acknowledged>>) {
    let c = client();
    let repo = format!("team/crash-w{worker}");
    for n in 0u64.. {
        let tag = format!("t{n}");
        let seed = worker * 1_000_000 + n * 10;
        let Some(image) = push_image(&c, &base, &repo, seed, false, &tag, &acked).await else {
            return;
        };
        let mut acked = acked.lock().unwrap();
        acked.blobs.extend(image.blobs);
        acked.tags.push((repo.clone(), tag, image.manifest));
    }
}

/// Pushes small images and deletes each by digest, leaving garbage for the collector.
async fn push_garbage_forever(base: String, worker: u64, acked: Arc<Mutex<Acknowledged>>) {
    let c = client();
    let repo = format!("team/garbage-w{worker}");
    for n in 0u64.. {
        let seed = worker * 1_000_000 + n * 10;
        let Some(image) = push_image(&c, &base, &repo, seed, true, "doomed", &acked).await else {
            return;
        };
        let digest = sha256_digest(&image.manifest);
        let url = format!("{base}/v2/{repo}/manifests/{digest}");
        if !matches!(c.delete(url).send().await, Ok(r) if r.status() == 202) {
            return;
        }
    }
}

/// An image the fake hub serves, as the mirror's clients name it.
struct HubImage {
    repo: String,
    tag: String,
    /// Config and layers.
    blobs: Vec<String>,
}

/// Pulls `image` through the mirror: its manifest by tag (so the cache holds what
/// references the blobs), then each blob; records every blob received whole with the
/// right digest.
async fn pull_forever(base: String, image: Arc<HubImage>, acked: Arc<Mutex<Acknowledged>>) {
    let c = client();
    let repo = &image.repo;
    let mut received = HashSet::new();
    loop {
        let manifest = c
            .get(format!("{base}/v2/{repo}/manifests/{}", image.tag))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await;
        if !matches!(manifest, Ok(r) if r.status() == 200) {
            return;
        }
        for digest in &image.blobs {
            let got = c
                .get(format!("{base}/v2/{repo}/blobs/{digest}"))
                .send()
                .await;
            let Ok(got) = got
                .map_err(drop)
                .and_then(|r| r.error_for_status().map_err(drop))
            else {
                return;
            };
            let Ok(bytes) = got.bytes().await else {
                return;
            };
            assert_eq!(
                &sha256_digest(&bytes),
                digest,
                "{repo}: a blob came damaged"
            );
            if received.insert(digest.clone()) {
                let mut acked = acked.lock().unwrap();
                acked
                    .blobs
                    .push((repo.clone(), digest.clone(), bytes.to_vec()));
            }
        }
    }
}

/// POST, two PATCHes, PUT with the digest; `true` once the server answered 201.
async fn chunked(c: &Client, base: &str, repo: &str, bytes: &[u8], digest: &str) -> bool {
    let Ok(started) = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
    else {
        return false;
    };
    let Some(mut location) = started
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return false;
    };
    let half = bytes.len() / 2;
    for (start, chunk) in [(0, &bytes[..half]), (half, &bytes[half..])] {
        let end = start + chunk.len() - 1;
        let Ok(patched) = c
            .patch(format!("{base}{location}"))
            .header("Content-Range", format!("{start}-{end}"))
            .header("Content-Type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
        else {
            return false;
        };
        match patched
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
        {
            Some(next) if patched.status() == 202 => location = next.to_string(),
            _ => return false,
        }
    }
    let separator = if location.contains('?') { '&' } else { '?' };
    let finished = c
        .put(format!("{base}{location}{separator}digest={digest}"))
        .send()
        .await;
    matches!(finished, Ok(r) if r.status() == 201)
}

/// Collects again and again; adds the blob files each run deleted to `swept`.
async fn collect_forever(base: String, swept: Arc<AtomicUsize>) {
    let c = client();
    loop {
        let url = format!("{base}/admin/gc?grace={GRACE}&delete_untagged=true");
        let Ok(answer) = c.post(url).send().await else {
            return;
        };
        if let Ok(report) = answer.json::<Value>().await {
            let deleted = report["blobs"].as_array().map_or(0, Vec::len);
            swept.fetch_add(deleted, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_any_moment_leaves_a_consistent_store_that_lost_nothing_acknowledged() {
    // One hub image per cycle, so that each cycle's pulls fetch from the upstream.
    let content = tempfile::tempdir().unwrap();
    let hub_images: Vec<Arc<HubImage>> = (0..KILLS)
        .map(|kill| {
            let image = ImageFixture::build("1", &HUB_LAYERS);
            let repo = format!("library/big{kill}");
            place_image(content.path(), &repo, &image, "1");
            Arc::new(HubImage {
                repo,
                tag: "1".to_string(),
                blobs: image.blob_digests().split_off(1),
            })
        })
        .collect();
    let mut hub = FakeHub::start(content.path(), FakeHubOptions::default());
    let config = mirror_config(&hub, "", "");
    // The server keeps its data in dir/data across all restarts.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || Server::start_with_config(&config, dir.path());
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let swept = Arc::new(AtomicUsize::new(0));
    for kill in 0..KILLS {
        let server = start();
        let base = server.base_url();
        let before = acked.lock().unwrap().uploads;
        let mut load = Vec::new();
        for worker in 0..3 {
            load.push(tokio::spawn(push_forever(
                base.clone(),
                kill * 10 + worker,
                acked.clone(),
            )));
        }
        load.push(tokio::spawn(push_garbage_forever(
            base.clone(),
            kill * 10 + 5,
            acked.clone(),
        )));
        load.push(tokio::spawn(pull_forever(
            base.clone(),
            hub_images[kill as usize].clone(),
            acked.clone(),
        )));
        load.push(tokio::spawn(collect_forever(base.clone(), swept.clone())));
        // Kill after a varying amount of acknowledged work, not after a fixed time.
        let wanted = before + 3 + kill as usize * 4;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().uploads < wanted {
            assert!(
                std::time::Instant::now() < deadline,
                "the load made no progress"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(server); // SIGKILL, mid-request
        for task in load {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        let fsck = run_with_timeout(
            portcullis().arg("fsck").arg("--data").arg(&data),
            Duration::from_secs(120),
        );
        // Leftovers of requests cut short (temp files, half-made sessions) are
        // removed when the store opens, so the check runs after a restart.
        let restarted = start();
        drop(restarted);
        let after_restart = run_with_timeout(
            portcullis().arg("fsck").arg("--data").arg(&data),
            Duration::from_secs(120),
        );
        assert_eq!(
            after_restart.status.code(),
            Some(0),
            "after kill {kill}: fsck right after the kill said:\n{}\nafter a restart:\n{}",
            fsck.stdout_str(),
            after_restart.stdout_str()
        );
    }

    // The upstream is gone: mirrored blobs must come from the cache.
    hub.stop();
    let server = start();
    let c = client();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.tags.len() >= KILLS as usize,
        "too little was pushed to test"
    );
    for (repo, digest, bytes) in &acked.blobs {
        let got = c
            .get(format!("{}/v2/{repo}/blobs/{digest}", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "{repo}@{digest} was acknowledged");
        assert_eq!(&got.bytes().await.unwrap()[..], &bytes[..]);
    }
    for (repo, tag, manifest) in &acked.tags {
        let got = c
            .get(format!("{}/v2/{repo}/manifests/{tag}", server.base_url()))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "{repo}:{tag} was acknowledged");
        assert_eq!(&got.bytes().await.unwrap()[..], &manifest[..]);
    }
    let mirrored = acked
        .blobs
        .iter()
        .filter(|(repo, _, _)| repo.starts_with("library/"))
        .count();
    eprintln!(
        "{KILLS} kills: {} uploads, {} blobs ({mirrored} mirrored) and {} tags acknowledged, all present; \
         the collector deleted {} blob files",
        acked.uploads,
        acked.blobs.len(),
        acked.tags.len(),
        swept.load(Ordering::Relaxed)
    );
}
