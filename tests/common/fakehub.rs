//! A simulated Docker Hub for tests: `portcullis-loadtest fake-hub` as a child process.
//!
//! * [`FakeHub`] starts it on free loopback ports (registry with token realm, and a
//!   CDN that blob GETs redirect to), reads its request log, sets faults, and can stop
//!   and restart it on the same ports ("the upstream is gone", "it is back").
//! * [`place_image`], [`place_index`], [`set_tag`], [`put_blob`] arrange the content
//!   directory it serves: one OCI image layout per repository, `content/<repo>/`.
//! * [`IndexFixture`] builds a multi-platform image index (linux/amd64, linux/arm64).

#![allow(dead_code)]

use super::{
    hex_part, log_tail, raw_exchange, release_ports, scratch_dir, write_blob, ImageFixture,
    OCI_INDEX_TYPE, OCI_MANIFEST_TYPE, POLL_INTERVAL, PORTS_IN_USE, READY_BUDGET,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for one control API call.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a restart tries to get its old ports back before giving up.
const RESTART_ATTEMPTS: usize = 5;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How the fake registry authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubAuth {
    /// Docker Hub's bearer tokens from the `/token` realm (the default).
    Token,
    /// No authentication; a missing repository is a plain 404 NAME_UNKNOWN.
    None,
}

#[derive(Clone, Debug)]
pub struct FakeHubOptions {
    pub auth: HubAuth,
    /// Token lifetime in seconds; 0 omits `expires_in` from token responses.
    pub token_expires_secs: u64,
    /// User and password the token realm then requires as Basic auth.
    pub credentials: Option<(String, String)>,
}

impl Default for FakeHubOptions {
    fn default() -> FakeHubOptions {
        FakeHubOptions {
            auth: HubAuth::Token,
            token_expires_secs: 300,
            credentials: None,
        }
    }
}

/// One entry of the fake hub's request log (`GET /_control/requests`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct HubRequest {
    /// `registry` or `cdn`.
    pub listener: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub range: Option<String>,
    /// `none`, `bearer`, `basic` (or `other`).
    pub authorization: String,
    /// 0 when no answer was sent (`stall`, `drop`).
    pub status: u16,
    pub fault: Option<String>,
    /// The Accept header values, joined with ", ".
    pub accept: Option<String>,
}

/// What the fake hub writes to its ready file.
#[derive(Deserialize)]
struct ReadyLine {
    registry: SocketAddr,
    cdn: SocketAddr,
}

/// A running `portcullis-loadtest fake-hub`; killed on drop (its log is printed if the
/// test panicked).
pub struct FakeHub {
    child: Option<Child>,
    content: PathBuf,
    options: FakeHubOptions,
    registry_port: u16,
    cdn_port: u16,
    log_path: PathBuf,
    starts: usize,
    scratch: tempfile::TempDir,
}

impl FakeHub {
    /// Starts a fake hub serving `content_dir` on fresh loopback ports.
    pub fn start(content_dir: &Path, options: FakeHubOptions) -> FakeHub {
        let content = content_dir
            .canonicalize()
            .unwrap_or_else(|e| panic!("content dir {}: {e}", content_dir.display()));
        let mut hub = FakeHub {
            child: None,
            content,
            options,
            registry_port: 0,
            cdn_port: 0,
            log_path: PathBuf::new(),
            starts: 0,
            scratch: scratch_dir("portcullis-fakehub-"),
        };
        if let Err(failure) = hub.launch() {
            panic!("fake hub did not start: {failure}");
        }
        let mut used = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        used.extend([hub.registry_port, hub.cdn_port]);
        hub
    }

    /// Starts the process on the current ports (0 the first time) and waits for its
    /// ready file; on failure the child is gone and the error holds its log.
    fn launch(&mut self) -> Result<(), String> {
        self.starts += 1;
        let ready_file = self
            .scratch
            .path()
            .join(format!("ready-{}.json", self.starts));
        self.log_path = self
            .scratch
            .path()
            .join(format!("fakehub-{}.log", self.starts));
        let log = File::create(&self.log_path).expect("create fake hub log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-loadtest"));
        command
            .arg("fake-hub")
            .arg("--content")
            .arg(&self.content)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.registry_port))
            .arg("--cdn-listen")
            .arg(format!("127.0.0.1:{}", self.cdn_port))
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--auth")
            .arg(match self.options.auth {
                HubAuth::Token => "token",
                HubAuth::None => "none",
            })
            .arg("--token-expires-secs")
            .arg(self.options.token_expires_secs.to_string());
        if let Some((user, password)) = &self.options.credentials {
            command
                .arg("--credentials")
                .arg(format!("{user}:{password}"));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn portcullis-loadtest fake-hub");
        let deadline = Instant::now() + READY_BUDGET;
        loop {
            if let Some(status) = child.try_wait().expect("poll fake hub") {
                return Err(format!(
                    "exited with {status} before becoming ready; log:\n{}",
                    self.log()
                ));
            }
            // The file appears whole (written aside, then renamed).
            if let Ok(text) = fs::read_to_string(&ready_file) {
                let ready: ReadyLine = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ready file {text:?}: {e}"));
                self.registry_port = ready.registry.port();
                self.cdn_port = ready.cdn.port();
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no ready file within {READY_BUDGET:?}; log:\n{}",
                    self.log()
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `http://127.0.0.1:PORT` of the registry (and token realm, and control API).
    pub fn registry_url(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// `127.0.0.1:PORT` of the registry.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.registry_port)
    }

    /// The registry port.
    pub fn port(&self) -> u16 {
        self.registry_port
    }

    /// `127.0.0.1:PORT` of the CDN that blob GETs are redirected to.
    pub fn cdn_host_port(&self) -> String {
        format!("127.0.0.1:{}", self.cdn_port)
    }

    /// The content directory it serves.
    pub fn content_dir(&self) -> &Path {
        &self.content
    }

    /// The last part of what the current process wrote (one line per request).
    pub fn log(&self) -> String {
        log_tail(&self.log_path)
    }

    /// One control API call; panics unless it answers 200. Returns the body.
    fn control(&self, method: &str, what: &str, body: &str) -> String {
        self.try_control(method, what, body)
            .unwrap_or_else(|e| panic!("{e}\nfake hub log:\n{}", self.log()))
    }

    fn try_control(&self, method: &str, what: &str, body: &str) -> Result<String, String> {
        let request = format!(
            "{method} /_control/{what} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host_port(),
            body.len()
        );
        let (status, _, answer) =
            raw_exchange(self.registry_port, request.as_bytes(), CONTROL_TIMEOUT);
        if status.split_whitespace().nth(1) == Some("200") {
            Ok(answer)
        } else {
            Err(format!("{method} /_control/{what}: {status}: {answer}"))
        }
    }

    /// Every request so far (since the last [`FakeHub::reset`]), in order.
    pub fn requests(&self) -> Vec<HubRequest> {
        let body = self.control("GET", "requests", "");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("request log {body:?}: {e}"))
    }

    /// Clears the request log and refills the rate limit (`ratelimit-remaining` 100).
    pub fn reset(&self) {
        self.control("POST", "reset", "");
    }

    /// Appends fault rules (a JSON array of rule objects, or one object); panics if the
    /// hub refuses them.
    pub fn set_faults(&self, rules: Value) {
        self.control("POST", "faults", &rules.to_string());
    }

    /// Appends fault rules; the hub's error message if it refuses them.
    pub fn try_set_faults(&self, rules: Value) -> Result<(), String> {
        self.try_control("POST", "faults", &rules.to_string())
            .map(drop)
    }

    /// The rules still in force (with their remaining `times`).
    pub fn faults(&self) -> Value {
        let body = self.control("GET", "faults", "");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("fault list {body:?}: {e}"))
    }

    /// Every token issued so far stops working, before its `expires_in` ran out.
    pub fn revoke_tokens(&self) {
        self.control("POST", "revoke-tokens", "");
    }

    pub fn clear_faults(&self) {
        self.control("DELETE", "faults", "");
    }

    /// Kills the process: the upstream is gone (its ports stay reserved for
    /// [`FakeHub::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports, with an empty request log and no faults.
    pub fn restart(&mut self) {
        self.stop();
        let mut failures = Vec::new();
        for _ in 0..RESTART_ATTEMPTS {
            match self.launch() {
                Ok(()) => return,
                // The port may be briefly taken by someone else's connection.
                Err(failure) => failures.push(failure),
            }
            thread::sleep(POLL_INTERVAL);
        }
        panic!(
            "fake hub did not restart on {} / {}:\n{}",
            self.host_port(),
            self.cdn_host_port(),
            failures.join("\n---\n")
        );
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- fake hub log (registry {}, cdn {}) ----\n{}\n---- end of fake hub log ----",
                self.host_port(),
                self.cdn_host_port(),
                self.log()
            );
        }
        release_ports(&[self.registry_port, self.cdn_port]);
    }
}

// ---------------------------------------------------------------------------
// Content: one OCI image layout per repository
// ---------------------------------------------------------------------------

/// `content/<repo>/` as an OCI layout (created empty if need be); its blobs dir.
fn layout_blobs(content: &Path, repo: &str) -> PathBuf {
    let layout = content.join(repo);
    let blobs = layout.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("create {}: {e}", blobs.display()));
    let marker = layout.join("oci-layout");
    if !marker.exists() {
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    }
    let index = layout.join("index.json");
    if !index.exists() {
        write_index(
            &index,
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX_TYPE, "manifests": []}),
        );
    }
    blobs
}

/// Writes `index.json` aside and renames it into place, so the hub never reads half.
fn write_index(path: &Path, index: &Value) {
    let tmp = path.with_extension("json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(index).expect("serialize index"),
    )
    .and_then(|()| fs::rename(&tmp, path))
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Copies the blobs of the OCI layout `from` into the blobs dir `to`.
fn copy_blobs(from: &Path, to: &Path) {
    let source = from.join("blobs").join("sha256");
    let entries =
        fs::read_dir(&source).unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
    for entry in entries {
        let entry = entry.expect("blob dir entry");
        let target = to.join(entry.file_name());
        if !target.exists() {
            fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Rewrites `content/<repo>/index.json` so that `tag` names `digest` (a blob already in
/// that layout) with `media_type`; any earlier entry of the tag goes.
pub fn set_tag(content: &Path, repo: &str, tag: &str, media_type: &str, digest: &str) {
    let blobs = layout_blobs(content, repo);
    let blob = blobs.join(hex_part(digest));
    let size = fs::metadata(&blob)
        .unwrap_or_else(|e| panic!("tag {tag} -> {}: {e}", blob.display()))
        .len();
    edit_index(
        content,
        repo,
        tag,
        Some(json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { REF_NAME: tag },
        })),
    );
}

/// Removes `tag` from `content/<repo>/index.json`.
pub fn remove_tag(content: &Path, repo: &str, tag: &str) {
    edit_index(content, repo, tag, None);
}

fn edit_index(content: &Path, repo: &str, tag: &str, entry: Option<Value>) {
    let path = content.join(repo).join("index.json");
    let text = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut index: Value = serde_json::from_slice(&text).expect("index.json is JSON");
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("index.json has a manifests array");
    manifests.retain(|m| m["annotations"][REF_NAME] != tag);
    manifests.extend(entry);
    write_index(&path, &index);
}

/// Copies the blobs of OCI layout `layout` into `content/<repo>` and tags `digest`.
pub fn place_layout(
    content: &Path,
    repo: &str,
    layout: &Path,
    tag: &str,
    media_type: &str,
    digest: &str,
) {
    copy_blobs(layout, &layout_blobs(content, repo));
    set_tag(content, repo, tag, media_type, digest);
}

/// Serves `image` as `repo:tag`.
pub fn place_image(content: &Path, repo: &str, image: &ImageFixture, tag: &str) {
    place_layout(
        content,
        repo,
        &image.layout,
        tag,
        OCI_MANIFEST_TYPE,
        &image.manifest_digest,
    );
}

/// Serves the multi-platform `index` as `repo:tag`.
pub fn place_index(content: &Path, repo: &str, index: &IndexFixture, tag: &str) {
    place_layout(
        content,
        repo,
        &index.layout,
        tag,
        OCI_INDEX_TYPE,
        &index.index_digest,
    );
}

/// Puts a bare blob into `content/<repo>` (no manifest refers to it); its digest.
pub fn put_blob(content: &Path, repo: &str, bytes: &[u8]) -> String {
    write_blob(&layout_blobs(content, repo), bytes)
}

/// One platform's image in an [`IndexFixture`].
pub struct PlatformImage {
    pub os: String,
    pub architecture: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

/// An OCI image layout holding an image index with two small platform images,
/// linux/amd64 and linux/arm64, under a tag. Removed on drop.
pub struct IndexFixture {
    _dir: tempfile::TempDir,
    /// The layout directory.
    pub layout: PathBuf,
    pub tag: String,
    /// Exact index bytes.
    pub index: Vec<u8>,
    pub index_digest: String,
    /// amd64 first, then arm64.
    pub platforms: Vec<PlatformImage>,
}

impl IndexFixture {
    pub fn build(tag: &str) -> IndexFixture {
        let dir = scratch_dir("portcullis-index-");
        let layout = dir.path().join("layout");
        let blobs = layout.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).expect("create blobs dir");
        let platforms: Vec<PlatformImage> = ["amd64", "arm64"]
            .iter()
            .map(|arch| platform_image(&blobs, tag, arch))
            .collect();
        let index = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX_TYPE,
            "manifests": platforms.iter().map(|p| json!({
                "mediaType": OCI_MANIFEST_TYPE,
                "digest": p.manifest_digest,
                "size": p.manifest.len(),
                "platform": {"os": p.os, "architecture": p.architecture},
            })).collect::<Vec<_>>(),
        }))
        .expect("serialize index");
        let index_digest = write_blob(&blobs, &index);
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("write oci-layout");
        write_index(
            &layout.join("index.json"),
            &json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX_TYPE,
                "manifests": [{
                    "mediaType": OCI_INDEX_TYPE,
                    "digest": index_digest,
                    "size": index.len(),
                    "annotations": { REF_NAME: tag },
                }],
            }),
        );
        IndexFixture {
            _dir: dir,
            layout,
            tag: tag.to_string(),
            index,
            index_digest,
            platforms,
        }
    }

    /// The image for `architecture` (`amd64` or `arm64`).
    pub fn platform(&self, architecture: &str) -> &PlatformImage {
        self.platforms
            .iter()
            .find(|p| p.architecture == architecture)
            .unwrap_or_else(|| panic!("no {architecture} image in this index"))
    }
}

/// A one-layer linux/`arch` image whose blobs go into `blobs`: an [`ImageFixture`]
/// with its config's architecture (and so its manifest) rewritten.
fn platform_image(blobs: &Path, tag: &str, arch: &str) -> PlatformImage {
    let image = ImageFixture::build(&format!("{tag}-{arch}"), &[16 * 1024]);
    copy_blobs(&image.layout, blobs);
    let mut config: Value = serde_json::from_slice(&image.config).expect("fixture config");
    config["architecture"] = json!(arch);
    let config = serde_json::to_vec(&config).expect("serialize config");
    let config_digest = write_blob(blobs, &config);
    let mut manifest: Value = serde_json::from_slice(&image.manifest).expect("fixture manifest");
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec_pretty(&manifest).expect("serialize manifest");
    let manifest_digest = write_blob(blobs, &manifest);
    PlatformImage {
        os: "linux".to_string(),
        architecture: arch.to_string(),
        manifest,
        manifest_digest,
        config_digest,
        layer_digests: image.layer_digests.clone(),
    }
}

/// A portcullis config (for `Server::start_with_config`) that mirrors `hub` as
/// docker.io, the default upstream, with `upstream_extra` added to its `[[upstream]]`
/// section and `mirror_extra` to `[mirror]`; `team/*` is local.
pub fn mirror_config(hub: &FakeHub, upstream_extra: &str, mirror_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n\
         [mirror]\ndefault_upstream = \"docker.io\"\nlocal = [\"team/*\"]\n{mirror_extra}\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nresponse_timeout_secs = 5\n{upstream_extra}\n",
        super::PLAIN_PORT,
        hub.registry_url()
    )
}
