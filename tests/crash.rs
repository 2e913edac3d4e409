//! Crash safety: the server is killed with SIGKILL at varying moments while clients
//! push monolithic and chunked uploads and manifests and garbage collections run;
//! after each kill `portcullis fsck` must find the store consistent, and everything
//! acknowledged before the kill must still be there, byte for byte, after a restart.

#[allow(dead_code)]
mod common;

use common::{portcullis, pseudo_random, run_with_timeout, sha256_digest, Server};
use reqwest::Client;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Kills per run; each after a different share of the load.
const KILLS: u64 = 6;

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// What the server acknowledged: blobs (repo, digest) and tags (repo, tag, manifest bytes).
#[derive(Default)]
struct Acknowledged {
    blobs: Vec<(String, String, Vec<u8>)>,
    tags: Vec<(String, String, Vec<u8>)>,
}

/// One client's work: blobs (every third one chunked), then a manifest over them,
/// tagged; each recorded only once the server said it is stored.
async fn push_forever(base: String, worker: u64, acked: Arc<Mutex<Acknowledged>>) {
    let c = client();
    for n in 0u64.. {
        let repo = format!("crash/w{worker}");
        let mut layers = Vec::new();
        for part in 0..3u64 {
            let seed = worker * 1_000_000 + n * 10 + part;
            let bytes = pseudo_random(4096 + (seed % 7) as usize * 50_000, seed);
            let digest = sha256_digest(&bytes);
            let stored = if part == 2 {
                chunked(&c, &base, &repo, &bytes, &digest).await
            } else {
                let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}");
                matches!(c.post(url).body(bytes.clone()).send().await, Ok(r) if r.status() == 201)
            };
            if !stored {
                return;
            }
            acked
                .lock()
                .unwrap()
                .blobs
                .push((repo.clone(), digest.clone(), bytes.clone()));
            layers.push(
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": digest, "size": bytes.len()}),
            );
        }
        let config = layers.pop().unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config["digest"], "size": config["size"]},
            "layers": layers,
        }))
        .unwrap();
        let tag = format!("t{n}");
        let put = c
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await;
        if !matches!(put, Ok(r) if r.status() == 201) {
            return;
        }
        acked.lock().unwrap().tags.push((repo, tag, manifest));
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

async fn collect_forever(base: String) {
    let c = client();
    loop {
        let url = format!("{base}/admin/gc?grace=1h&delete_untagged=true");
        if c.post(url).send().await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_any_moment_leaves_a_consistent_store_that_lost_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    for kill in 0..KILLS {
        let server = Server::start_with_data(&data);
        let base = server.base_url();
        let before = acked.lock().unwrap().blobs.len();
        let mut load = Vec::new();
        for worker in 0..3 {
            load.push(tokio::spawn(push_forever(
                base.clone(),
                kill * 10 + worker,
                acked.clone(),
            )));
        }
        load.push(tokio::spawn(collect_forever(base.clone())));
        // Kill after a varying amount of acknowledged work, not after a fixed time.
        let wanted = before + 3 + kill as usize * 4;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().blobs.len() < wanted {
            assert!(
                std::time::Instant::now() < deadline,
                "the load made no progress"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(server); // SIGKILL, mid-request
        for task in load {
            let _ = task.await;
        }
        let fsck = run_with_timeout(
            portcullis().arg("fsck").arg("--data").arg(&data),
            Duration::from_secs(120),
        );
        // Leftovers of requests cut short (temp files, half-made sessions) are
        // removed when the store opens, so the check runs after a restart.
        let restarted = Server::start_with_data(&data);
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

    let server = Server::start_with_data(&data);
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
    eprintln!(
        "{KILLS} kills: {} blobs and {} tags acknowledged, all present",
        acked.blobs.len(),
        acked.tags.len()
    );
}
