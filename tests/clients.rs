//! Real-client integration tests: skopeo, podman and oci-client talk to a
//! freshly started portcullis server each.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{
    assert_podman_usable, hex_part, podman_inspect, podman_pull_checked, run_ok, sha256_digest,
    skopeo_push, ContainersEnv, ImageFixture, Server, OCI_INDEX_TYPE, OCI_MANIFEST_TYPE,
};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::{json, Value};

/// Upper bound for one skopeo invocation.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one podman invocation.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound for one HTTP request made by the tests themselves.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

const SBOM_TYPE: &str = "application/vnd.example.sbom.v1+json";
const SBOM_LAYER_TYPE: &str = "application/spdx+json";
const SIGNATURE_TYPE: &str = "application/vnd.example.signature.v1+json";
const SIGNATURE_LAYER_TYPE: &str = "application/vnd.example.signature.payload.v1";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Copies `docker://HOST/<repo_tag>` into a new OCI layout at `out` (tag `tag`).
fn skopeo_pull_to_layout(
    env: &ContainersEnv,
    server: &Server,
    repo_tag: &str,
    out: &Path,
    tag: &str,
) {
    let src = format!("docker://{}/{repo_tag}", server.host_port());
    let dest = format!("oci:{}:{tag}", out.display());
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &src,
            &dest,
        ]),
        SKOPEO_TIMEOUT,
    );
}

/// `skopeo inspect --raw`: the manifest bytes exactly as the registry serves them.
fn skopeo_raw_manifest(env: &ContainersEnv, server: &Server, repo_tag: &str) -> Vec<u8> {
    let src = format!("docker://{}/{repo_tag}", server.host_port());
    run_ok(
        &mut env.skopeo(&["inspect", "--raw", "--tls-verify=false", &src]),
        SKOPEO_TIMEOUT,
    )
    .stdout
}

/// Asserts that the OCI layout at `out` holds exactly the fixture image
/// under `tag`: same manifest digest in index.json and byte-identical blobs.
fn assert_layout_matches(img: &ImageFixture, out: &Path, tag: &str) {
    assert!(
        out.join("oci-layout").is_file(),
        "{} has no oci-layout file",
        out.display()
    );
    let index: Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    let manifests = index["manifests"].as_array().expect("index.manifests");
    let entry = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in pulled index.json: {index}"));
    assert_eq!(
        entry["digest"],
        img.manifest_digest.as_str(),
        "pulled manifest digest"
    );
    assert_eq!(entry["size"], img.manifest.len(), "pulled manifest size");
    assert_eq!(
        entry["mediaType"], OCI_MANIFEST_TYPE,
        "pulled manifest media type"
    );

    let blob_dir = out.join("blobs").join("sha256");
    let pulled: BTreeSet<String> = fs::read_dir(&blob_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", blob_dir.display()))
        .map(|e| {
            format!(
                "sha256:{}",
                e.expect("dir entry").file_name().to_string_lossy()
            )
        })
        .collect();
    let expected: BTreeSet<String> = img.blob_digests().into_iter().collect();
    assert_eq!(pulled, expected, "set of blobs in the pulled layout");
    for digest in &expected {
        let got = fs::read(blob_dir.join(hex_part(digest))).expect("read pulled blob");
        assert_eq!(
            sha256_digest(&got),
            *digest,
            "pulled blob content hashes to its name"
        );
        assert!(
            got == img.blob(digest),
            "pulled blob {digest} differs from the original"
        );
    }
}

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build reqwest client")
}

fn oci_client() -> oci_client::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        read_timeout: Some(HTTP_TIMEOUT),
        connect_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    })
}

/// Resolves a `Location` header (absolute or path-absolute) against the server.
fn absolute(server: &Server, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", server.base_url())
    } else {
        panic!("unexpected Location header value: {location:?}")
    }
}

/// Percent-encodes a query parameter value (everything but unreserved chars).
fn query_escape(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("header is ASCII").to_string())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

#[test]
fn skopeo_push_inspect_pull_round_trip_is_byte_exact() {
    let server = Server::start();
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");

    skopeo_push(&env, &img, &server, "team/app:1.0");

    // The registry must serve back the manifest byte for byte.
    let raw = skopeo_raw_manifest(&env, &server, "team/app:1.0");
    assert!(
        raw == img.manifest,
        "manifest served by the registry differs from the pushed one\npushed:\n{}\nserved:\n{}",
        String::from_utf8_lossy(&img.manifest),
        String::from_utf8_lossy(&raw)
    );

    // The config blob, byte for byte.
    let src = format!("docker://{}/team/app:1.0", server.host_port());
    let config = run_ok(
        &mut env.skopeo(&["inspect", "--config", "--raw", "--tls-verify=false", &src]),
        SKOPEO_TIMEOUT,
    )
    .stdout;
    assert!(
        config == img.config,
        "config blob served by the registry differs"
    );

    // Parsed inspect: digest, layers, platform, and the tag list.
    let out = run_ok(
        &mut env.skopeo(&["inspect", "--tls-verify=false", &src]),
        SKOPEO_TIMEOUT,
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("skopeo inspect JSON");
    assert_eq!(
        info["Digest"],
        img.manifest_digest.as_str(),
        "inspect Digest"
    );
    assert_eq!(info["Layers"], json!(img.layer_digests), "inspect Layers");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    assert_eq!(
        info["RepoTags"],
        json!(["1.0"]),
        "inspect RepoTags (tags/list)"
    );

    // Pull back into a fresh layout and compare every blob.
    let dest = tempfile::tempdir().expect("tempdir");
    let out_layout = dest.path().join("out");
    skopeo_pull_to_layout(&env, &server, "team/app:1.0", &out_layout, "1.0");
    assert_layout_matches(&img, &out_layout, "1.0");
}

#[test]
fn skopeo_copy_between_repositories_and_cross_repo_mount() {
    let server = Server::start();
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    skopeo_push(&env, &img, &server, "team/app:1.0");

    // Registry-to-registry copy (skopeo mounts blobs from team/app).
    let src = format!("docker://{}/team/app:1.0", server.host_port());
    let dest = format!("docker://{}/other/app:1.0", server.host_port());
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &src,
            &dest,
        ]),
        SKOPEO_TIMEOUT,
    );
    assert!(
        skopeo_raw_manifest(&env, &server, "other/app:1.0") == img.manifest,
        "manifest of other/app:1.0 differs from the original"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let http = http_client();
        let base = server.base_url();

        // Every blob is readable from the second repository.
        let mut blobs = vec![img.config_digest.clone()];
        blobs.extend(img.layer_digests.iter().cloned());
        for digest in &blobs {
            let resp = http
                .get(format!("{base}/v2/other/app/blobs/{digest}"))
                .send()
                .await
                .expect("GET blob from other/app");
            assert_eq!(resp.status(), 200, "GET /v2/other/app/blobs/{digest}");
            let body = resp.bytes().await.expect("blob body");
            assert!(
                body.as_ref() == img.blob(digest).as_slice(),
                "blob {digest} in other/app differs"
            );
        }

        // Direct cross-repository mount into a brand new repository.
        let layer = &img.layer_digests[0];
        let layer_bytes = img.blob(layer);
        let url = format!(
            "{base}/v2/third/app/blobs/uploads/?mount={}&from={}",
            query_escape(layer),
            query_escape("team/app")
        );
        let resp = http.post(&url).send().await.expect("POST mount");
        assert_eq!(resp.status(), 201, "POST {url} (mount of an existing blob)");
        let location = header(&resp, "location").expect("mount 201 must carry Location");
        assert!(!location.is_empty(), "empty Location on mount");
        assert_eq!(
            header(&resp, "docker-content-digest").as_deref(),
            Some(layer.as_str()),
            "Docker-Content-Digest of the mount response"
        );

        let url = format!("{base}/v2/third/app/blobs/{layer}");
        let resp = http.head(&url).send().await.expect("HEAD mounted blob");
        assert_eq!(resp.status(), 200, "HEAD {url} after mount");
        assert_eq!(
            header(&resp, "content-length").as_deref(),
            Some(layer_bytes.len().to_string().as_str()),
            "Content-Length of HEAD on the mounted blob"
        );
        let resp = http.get(&url).send().await.expect("GET mounted blob");
        assert_eq!(resp.status(), 200, "GET {url} after mount");
        assert!(
            resp.bytes().await.expect("body").as_ref() == layer_bytes.as_slice(),
            "mounted blob content differs"
        );

        // Mount from a repository that does not hold the blob: the registry
        // must fall back to starting an ordinary upload session (202).
        let url = format!(
            "{base}/v2/fourth/app/blobs/uploads/?mount={}&from={}",
            query_escape(layer),
            query_escape("nobody/here")
        );
        let resp = http
            .post(&url)
            .send()
            .await
            .expect("POST mount from empty repo");
        assert_eq!(
            resp.status(),
            202,
            "POST {url} (source repo lacks the blob)"
        );
        let location = header(&resp, "location").expect("202 must carry an upload Location");

        // ... and that session really is usable: finish it monolithically.
        let payload = random_bytes(3000);
        let digest = sha256_digest(&payload);
        let upload = absolute(&server, &location);
        let sep = if upload.contains('?') { '&' } else { '?' };
        let put_url = format!("{upload}{sep}digest={}", query_escape(&digest));
        let resp = http
            .put(&put_url)
            .header("content-type", "application/octet-stream")
            .body(payload.clone())
            .send()
            .await
            .expect("PUT to finish the upload session");
        assert_eq!(
            resp.status(),
            201,
            "PUT {put_url} closing the fallback session"
        );
        let resp = http
            .get(format!("{base}/v2/fourth/app/blobs/{digest}"))
            .send()
            .await
            .expect("GET uploaded blob");
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap().as_ref() == payload.as_slice());

        // Mount of a digest that exists nowhere: also 202, never 201.
        let unknown = sha256_digest(&random_bytes(64));
        let url = format!(
            "{base}/v2/fifth/app/blobs/uploads/?mount={}&from={}",
            query_escape(&unknown),
            query_escape("team/app")
        );
        let resp = http
            .post(&url)
            .send()
            .await
            .expect("POST mount of unknown digest");
        assert_eq!(
            resp.status(),
            202,
            "POST {url} (digest unknown to the registry)"
        );
        assert!(
            header(&resp, "location").is_some(),
            "202 must carry Location"
        );
    });
}

#[test]
fn skopeo_pushed_image_survives_server_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    {
        let first = Server::start_with_data(data.path());
        assert_eq!(first.data_dir(), data.path());
        skopeo_push(&env, &img, &first, "team/app:1.0");
        // Dropping kills the server with SIGKILL.
    }
    let second = Server::start_with_data(data.path());
    let raw = skopeo_raw_manifest(&env, &second, "team/app:1.0");
    assert!(
        raw == img.manifest,
        "manifest after restart differs\nserver log:\n{}",
        second.log()
    );
    let dest = tempfile::tempdir().expect("tempdir");
    let out_layout = dest.path().join("out");
    skopeo_pull_to_layout(&env, &second, "team/app:1.0", &out_layout, "1.0");
    assert_layout_matches(&img, &out_layout, "1.0");
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

#[test]
fn podman_pull_from_registry() {
    let server = Server::start();
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    skopeo_push(&env, &img, &server, "team/app:1.0");

    // First make sure podman itself works here, so an environmental problem
    // is reported as such and not blamed on the registry.
    let probe = assert_podman_usable(&env, PODMAN_TIMEOUT);
    assert_eq!(probe.stdout_str().trim(), "vfs", "podman storage driver");

    let reference = format!("{}/team/app:1.0", server.host_port());
    podman_pull_checked(
        &env,
        &server,
        &["--tls-verify=false"],
        &reference,
        &img.config_digest,
        PODMAN_TIMEOUT,
    );

    let images = podman_inspect(&env, &reference, PODMAN_TIMEOUT);
    let image = &images[0];
    assert_eq!(image["Id"], hex_part(&img.config_digest), "image Id");
    assert_eq!(
        image["Digest"],
        img.manifest_digest.as_str(),
        "image Digest"
    );
    let repo_digest = format!("{}/team/app@{}", server.host_port(), img.manifest_digest);
    assert!(
        image["RepoDigests"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == repo_digest.as_str())),
        "RepoDigests {} lacks {repo_digest}",
        image["RepoDigests"]
    );
    assert_eq!(
        image["RootFS"]["Layers"],
        json!(img.diff_ids),
        "unpacked layer diff IDs"
    );
    assert_eq!(image["Config"]["Cmd"], json!(img.cmd), "config Cmd");
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["Os"], "linux");
}

// ---------------------------------------------------------------------------
// oci-client: artifacts, subject, referrers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oci_client_artifacts_and_referrers() {
    let server = Server::start();
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    skopeo_push(&env, &img, &server, "team/app:1.0");

    let http = http_client();
    let client = oci_client();
    let auth = RegistryAuth::Anonymous;
    let base = server.base_url();
    let host = server.host_port();
    let subject = OciDescriptor {
        media_type: OCI_MANIFEST_TYPE.to_string(),
        digest: img.manifest_digest.clone(),
        size: img.manifest.len() as i64,
        ..Default::default()
    };

    // --- Artifact 1: an SBOM with artifactType and subject, pushed by oci-client.
    let sbom_ref: Reference = format!("{host}/team/app:sbom").parse().expect("reference");
    let sbom = serde_json::to_vec(&json!({
        "spdxVersion": "SPDX-2.3",
        "name": "team/app",
        "nonce": uuid::Uuid::new_v4().to_string(),
        "packages": [{ "name": "busybox", "versionInfo": "1.36.1" }],
    }))
    .unwrap();
    let sbom_config = br#"{"generator":"portcullis-tests"}"#.to_vec();
    let layer = ImageLayer::new(sbom.clone(), SBOM_LAYER_TYPE.to_string(), None);
    let config = Config::new(sbom_config.clone(), SBOM_TYPE.to_string(), None);
    let sbom_annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_string(),
            "2024-01-01T00:00:00Z".to_string(),
        ),
        ("org.example.kind".to_string(), "sbom".to_string()),
    ]);
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_TYPE.to_string()),
        config: OciDescriptor {
            media_type: SBOM_TYPE.to_string(),
            digest: sha256_digest(&sbom_config),
            size: sbom_config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: SBOM_LAYER_TYPE.to_string(),
            digest: sha256_digest(&sbom),
            size: sbom.len() as i64,
            ..Default::default()
        }],
        subject: Some(subject.clone()),
        artifact_type: Some(SBOM_TYPE.to_string()),
        annotations: Some(sbom_annotations.clone()),
    };
    client
        .push(&sbom_ref, &[layer], config, &auth, Some(manifest))
        .await
        .expect("oci-client push of the SBOM artifact");

    // Pull the manifest back raw and check what the registry stored.
    let (raw, sbom_digest) = client
        .pull_manifest_raw(&sbom_ref, &auth, &[OCI_MANIFEST_TYPE])
        .await
        .expect("pull SBOM manifest");
    assert_eq!(sha256_digest(&raw), sbom_digest, "SBOM manifest digest");
    let stored: Value = serde_json::from_slice(&raw).expect("SBOM manifest JSON");
    assert_eq!(stored["artifactType"], SBOM_TYPE);
    assert_eq!(stored["subject"]["digest"], img.manifest_digest.as_str());
    assert_eq!(stored["layers"][0]["digest"], sha256_digest(&sbom).as_str());

    // Pull the whole artifact and compare bytes.
    let pulled = client
        .pull(&sbom_ref, &auth, vec![SBOM_LAYER_TYPE])
        .await
        .expect("oci-client pull of the SBOM artifact");
    assert_eq!(pulled.digest.as_deref(), Some(sbom_digest.as_str()));
    assert_eq!(pulled.layers.len(), 1);
    assert!(
        pulled.layers[0].data.as_ref() == sbom.as_slice(),
        "SBOM layer bytes differ"
    );
    assert!(
        pulled.config.data.as_ref() == sbom_config.as_slice(),
        "SBOM config bytes differ"
    );
    assert_eq!(pulled.config.media_type, SBOM_TYPE);

    // --- Artifact 2: a "signature" without artifactType (so its referrer
    // descriptor must take config.mediaType), blobs via oci-client, manifest
    // via a plain PUT by digest so the response headers can be checked.
    let repo_ref: Reference = format!("{host}/team/app:unused").parse().unwrap();
    let sig_config = serde_json::to_vec(
        &json!({ "signer": "tests", "nonce": uuid::Uuid::new_v4().to_string() }),
    )
    .unwrap();
    let sig_payload = random_bytes(512);
    for blob in [&sig_config, &sig_payload] {
        client
            .push_blob(&repo_ref, blob.clone(), &sha256_digest(blob))
            .await
            .expect("oci-client push_blob");
        assert!(
            client
                .blob_exists(&repo_ref, &sha256_digest(blob))
                .await
                .expect("blob_exists"),
            "pushed blob not found"
        );
    }
    let sig_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_TYPE,
        "config": { "mediaType": SIGNATURE_TYPE, "digest": sha256_digest(&sig_config), "size": sig_config.len() },
        "layers": [{ "mediaType": SIGNATURE_LAYER_TYPE, "digest": sha256_digest(&sig_payload), "size": sig_payload.len() }],
        "subject": { "mediaType": OCI_MANIFEST_TYPE, "digest": img.manifest_digest, "size": img.manifest.len() },
        "annotations": { "org.example.kind": "signature" },
    }))
    .unwrap();
    let sig_digest = sha256_digest(&sig_manifest);
    let url = format!("{base}/v2/team/app/manifests/{sig_digest}");
    let resp = http
        .put(&url)
        .header("content-type", OCI_MANIFEST_TYPE)
        .body(sig_manifest.clone())
        .send()
        .await
        .expect("PUT signature manifest");
    assert_eq!(resp.status(), 201, "PUT {url}");
    assert!(
        header(&resp, "location").is_some(),
        "manifest PUT must return Location"
    );
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(sig_digest.as_str())
    );
    assert_eq!(
        header(&resp, "oci-subject").as_deref(),
        Some(img.manifest_digest.as_str()),
        "OCI-Subject header on PUT of a manifest with subject"
    );
    let resp = http
        .get(&url)
        .header("accept", OCI_MANIFEST_TYPE)
        .send()
        .await
        .expect("GET signature manifest");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.unwrap().as_ref() == sig_manifest.as_slice(),
        "signature manifest bytes differ"
    );

    // --- Referrers, unfiltered: both artifacts, as an OCI image index.
    let referrers_url = format!("{base}/v2/team/app/referrers/{}", img.manifest_digest);
    let resp = http
        .get(&referrers_url)
        .send()
        .await
        .expect("GET referrers");
    assert_eq!(resp.status(), 200, "GET {referrers_url}");
    let content_type = header(&resp, "content-type").unwrap_or_default();
    assert!(
        content_type.starts_with(OCI_INDEX_TYPE),
        "referrers Content-Type is {content_type:?}, expected {OCI_INDEX_TYPE}"
    );
    let index: Value = resp.json().await.expect("referrers body is JSON");
    assert_eq!(index["schemaVersion"], 2, "referrers index: {index}");
    assert_eq!(
        index["mediaType"], OCI_INDEX_TYPE,
        "referrers index: {index}"
    );
    let entries = index["manifests"].as_array().expect("manifests array");
    assert_eq!(entries.len(), 2, "two referrers expected: {index}");
    let find = |digest: &str| {
        entries
            .iter()
            .find(|e| e["digest"] == digest)
            .unwrap_or_else(|| panic!("referrer {digest} missing from {index}"))
            .clone()
    };
    let sbom_entry = find(&sbom_digest);
    assert_eq!(sbom_entry["mediaType"], OCI_MANIFEST_TYPE);
    assert_eq!(sbom_entry["size"], raw.len());
    assert_eq!(sbom_entry["artifactType"], SBOM_TYPE);
    assert_eq!(
        sbom_entry["annotations"],
        json!(sbom_annotations),
        "SBOM referrer annotations"
    );
    let sig_entry = find(&sig_digest);
    assert_eq!(sig_entry["mediaType"], OCI_MANIFEST_TYPE);
    assert_eq!(sig_entry["size"], sig_manifest.len());
    assert_eq!(
        sig_entry["artifactType"], SIGNATURE_TYPE,
        "artifactType of a referrer without one must be its config mediaType"
    );
    assert_eq!(
        sig_entry["annotations"],
        json!({ "org.example.kind": "signature" })
    );

    // --- Filtered by the SBOM type: only the SBOM, with OCI-Filters-Applied.
    let url = format!("{referrers_url}?artifactType={}", query_escape(SBOM_TYPE));
    let resp = http.get(&url).send().await.expect("GET filtered referrers");
    assert_eq!(resp.status(), 200, "GET {url}");
    assert_eq!(
        header(&resp, "oci-filters-applied").as_deref(),
        Some("artifactType"),
        "OCI-Filters-Applied on {url}"
    );
    let filtered: Value = resp.json().await.expect("JSON");
    let digests: Vec<&Value> = filtered["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|e| &e["digest"])
        .collect();
    assert_eq!(
        digests,
        vec![&json!(sbom_digest)],
        "filtered referrers: {filtered}"
    );

    // --- Filtered by a type nobody has: empty list.
    let url = format!(
        "{referrers_url}?artifactType={}",
        query_escape("other/type")
    );
    let resp = http.get(&url).send().await.expect("GET filtered referrers");
    assert_eq!(resp.status(), 200, "GET {url}");
    assert_eq!(
        header(&resp, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let empty: Value = resp.json().await.expect("JSON");
    assert_eq!(
        empty["manifests"],
        json!([]),
        "referrers filtered by other/type: {empty}"
    );

    // --- A digest nothing refers to: 200 with an empty index, never 404.
    let url = format!("{base}/v2/team/app/referrers/{sbom_digest}");
    let resp = http
        .get(&url)
        .send()
        .await
        .expect("GET referrers of the SBOM");
    assert_eq!(resp.status(), 200, "GET {url}");
    let none: Value = resp.json().await.expect("JSON");
    assert_eq!(
        none["manifests"],
        json!([]),
        "referrers of an unreferenced digest: {none}"
    );

    // --- The same through oci-client's referrers API.
    let subject_ref: Reference = format!("{host}/team/app@{}", img.manifest_digest)
        .parse()
        .unwrap();
    let listed = client
        .pull_referrers(&subject_ref, Some(SBOM_TYPE))
        .await
        .expect("oci-client pull_referrers");
    let listed: Vec<&str> = listed.manifests.iter().map(|m| m.digest.as_str()).collect();
    assert_eq!(listed, vec![sbom_digest.as_str()], "oci-client referrers");

    // Tags: the image tag and the SBOM tag, nothing else.
    let tags = client
        .list_tags(&sbom_ref, &auth, None, None)
        .await
        .expect("oci-client list_tags");
    let tags: BTreeSet<String> = tags.tags.into_iter().collect();
    assert_eq!(
        tags,
        BTreeSet::from(["1.0".to_string(), "sbom".to_string()]),
        "tags of team/app"
    );
}
