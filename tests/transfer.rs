//! Export, import and migration with real clients (issue 10): images pushed with
//! skopeo (shared layers, a multi-arch index, a referrer) go out to an OCI layout (a
//! directory and a tar), into a fresh store, and are pulled back byte for byte; a
//! skopeo-written layout comes in with `--repository`; a damaged layout is refused and
//! tags nothing; a registry:2 tree (Debian's docker-registry) migrates as it lies;
//! what a mirror cached (pulled through, or fetched) crosses an air gap and is pulled
//! at the offline site by the names clients use, still as cached content.

// Each test file uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use common::distribution::Distribution;
use common::fakehub::{
    mirror_config, place_image, place_index, FakeHub, FakeHubOptions, IndexFixture,
};
use common::netns::in_fresh_netns;
use common::{
    hex_part, portcullis, run_ok, run_with_timeout, sha256_digest, skopeo_push, ContainersEnv,
    ImageFixture, Server, OCI_INDEX_TYPE, OCI_MANIFEST_TYPE, PLAIN_PORT,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Upper bound for one skopeo, curl or portcullis invocation.
const TIMEOUT: Duration = Duration::from_secs(120);

fn skopeo_copy(env: &ContainersEnv, src: &str, dest: &str) {
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            src,
            dest,
        ]),
        TIMEOUT,
    );
}

fn raw_manifest(env: &ContainersEnv, host: &str, reference: &str) -> Vec<u8> {
    let src = format!("docker://{host}/{reference}");
    run_ok(
        &mut env.skopeo(&["inspect", "--raw", "--tls-verify=false", &src]),
        TIMEOUT,
    )
    .stdout
}

fn curl(args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("curl");
    common::remove_proxy_env(&mut cmd);
    run_ok(cmd.args(["-sS", "-f"]).args(args), TIMEOUT).stdout
}

/// `portcullis ARGS` and its output; exit status checked by the caller.
fn run_portcullis(args: &[&str]) -> common::CmdOutput {
    run_with_timeout(portcullis().args(args), TIMEOUT)
}

fn portcullis_ok(args: &[&str]) -> String {
    let out = run_portcullis(args);
    assert!(
        out.status.success(),
        "portcullis {args:?} failed: {}",
        out.stderr
    );
    out.stderr
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// An OCI layout holding an index (tag `multi`) of the manifests of `images`.
fn multi_arch_layout(dir: &Path, images: &[&ImageFixture]) -> (Vec<u8>, String) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut manifests = Vec::new();
    for (image, arch) in images.iter().zip(["amd64", "arm64"]) {
        for entry in fs::read_dir(image.layout.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), blobs.join(entry.file_name())).unwrap();
        }
        manifests.push(json!({
            "mediaType": OCI_MANIFEST_TYPE,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX_TYPE, "manifests": manifests,
    }))
    .unwrap();
    let digest = sha256_digest(&index);
    fs::write(blobs.join(common::hex_part(&digest)), &index).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_INDEX_TYPE, "digest": digest, "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }]});
    fs::write(dir.join("index.json"), top.to_string()).unwrap();
    (index, digest)
}

/// Pushes an untagged signature of `subject` (an image manifest) to `repo` over the
/// API; returns its bytes and digest.
fn push_referrer(server: &Server, repo: &str, subject: &ImageFixture) -> (Vec<u8>, String) {
    let base = format!("{}/v2/{repo}", server.base_url());
    let config = b"{}".to_vec();
    let payload = b"signature of the image".to_vec();
    for blob in [&config, &payload] {
        let url = format!("{base}/blobs/uploads/?digest={}", sha256_digest(blob));
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), blob).unwrap();
        curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", arg(file.path())),
            &url,
        ]);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_TYPE,
        "artifactType": "application/vnd.example.signature.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.example.signature.payload.v1",
                    "digest": sha256_digest(&payload), "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST_TYPE,
                    "digest": subject.manifest_digest, "size": subject.manifest.len()},
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), &manifest).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {OCI_MANIFEST_TYPE}"),
        "--data-binary",
        &format!("@{}", arg(file.path())),
        &format!("{base}/manifests/{digest}"),
    ]);
    (manifest, digest)
}

/// What a populated registry must serve: `repo:tag` or `repo@digest` -> manifest bytes.
struct Expected {
    manifests: Vec<(String, Vec<u8>)>,
    /// (repo, subject digest, referrer digest)
    referrer: (String, String, String),
    _images: Vec<ImageFixture>,
    _multi: tempfile::TempDir,
}

/// Pushes to `host` with skopeo: one image under two tags and in a second repository
/// (shared layers), a two-platform index; the referrer is pushed by the caller.
fn push_images(env: &ContainersEnv, host: &str) -> Expected {
    let app = ImageFixture::small("1.0");
    let arm = ImageFixture::build("arm", &[48 << 10]);
    let multi = tempfile::tempdir().unwrap();
    let (index, _) = multi_arch_layout(multi.path(), &[&app, &arm]);
    let src = format!("oci:{}:1.0", app.layout.display());
    for dest in ["team/app:1.0", "team/app:latest", "team/copy:1.0"] {
        skopeo_copy(env, &src, &format!("docker://{host}/{dest}"));
    }
    skopeo_copy(
        env,
        &format!("oci:{}:multi", multi.path().display()),
        &format!("docker://{host}/team/multi:1"),
    );
    let manifests = vec![
        ("team/app:1.0".to_string(), app.manifest.clone()),
        ("team/app:latest".to_string(), app.manifest.clone()),
        ("team/copy:1.0".to_string(), app.manifest.clone()),
        ("team/multi:1".to_string(), index),
        (
            format!("team/multi@{}", arm.manifest_digest),
            arm.manifest.clone(),
        ),
    ];
    Expected {
        manifests,
        referrer: (String::new(), String::new(), String::new()),
        _images: vec![app, arm],
        _multi: multi,
    }
}

/// Every expected manifest is served byte for byte, every image pulls whole (skopeo
/// checks each blob's digest), and the referrer is listed for its subject.
fn assert_serves(env: &ContainersEnv, server: &Server, expected: &Expected) {
    let host = server.host_port();
    let pulled = tempfile::tempdir().unwrap();
    for (i, (reference, bytes)) in expected.manifests.iter().enumerate() {
        assert!(
            raw_manifest(env, &host, reference) == *bytes,
            "{reference}: served manifest differs"
        );
        let dest = pulled.path().join(i.to_string());
        skopeo_copy(
            env,
            &format!("docker://{host}/{reference}"),
            &format!("dir:{}", dest.display()),
        );
    }
    let (repo, subject, referrer) = &expected.referrer;
    if !repo.is_empty() {
        let listed: Value = serde_json::from_slice(&curl(&[&format!(
            "{}/v2/{repo}/referrers/{subject}",
            server.base_url()
        )]))
        .unwrap();
        assert_eq!(
            listed["manifests"][0]["digest"],
            referrer.as_str(),
            "{listed}"
        );
        raw_manifest(env, &host, &format!("{repo}@{referrer}"));
    }
}

fn populated_store(env: &ContainersEnv, data: &Path) -> Expected {
    let server = Server::start_with_data(data);
    let mut expected = push_images(env, &server.host_port());
    let app = &expected._images[0];
    let (bytes, digest) = push_referrer(&server, "team/app", app);
    expected.referrer = (
        "team/app".into(),
        app.manifest_digest.clone(),
        digest.clone(),
    );
    expected
        .manifests
        .push((format!("team/app@{digest}"), bytes));
    expected
}

#[test]
fn export_to_a_directory_and_a_tar_then_import_serves_every_image_again() {
    let env = ContainersEnv::new();
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    fs::create_dir(&source).unwrap();
    let expected = populated_store(&env, &source);

    // A server holds the store: export says so and how to fix it.
    let running = Server::start_with_data(&source);
    let out = work.path().join("layout");
    let refused = run_portcullis(&["export", "--data", arg(&source), "--out", arg(&out)]);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("stop the server first"),
        "{}",
        refused.stderr
    );
    drop(running);

    let said = portcullis_ok(&["export", "--data", arg(&source), "--out", arg(&out)]);
    assert!(
        said.contains("exported 3 repositories, 6 manifests, 4 tags"),
        "{said}"
    );
    let tar = work.path().join("images.tar");
    portcullis_ok(&["export", "--data", arg(&source), "--out", arg(&tar)]);
    // Other tools read the directory export by ref name.
    let inspected = run_ok(
        &mut env.skopeo(&["inspect", &format!("oci:{}:team/app:1.0", out.display())]),
        TIMEOUT,
    );
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        inspected["Digest"],
        expected._images[0].manifest_digest.as_str()
    );
    // The tar starts with the files an importer needs first.
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&tar), TIMEOUT).stdout_str();
    let first: Vec<&str> = listing.lines().take(2).collect();
    assert_eq!(first, ["oci-layout", "index.json"]);

    for (name, layout) in [("from-dir", &out), ("from-tar", &tar)] {
        let data = work.path().join(name);
        let said = portcullis_ok(&["import", "--data", arg(&data), arg(layout)]);
        assert!(
            said.contains("imported 3 repositories, 6 manifests, 4 tags"),
            "{said}"
        );
        let again = portcullis_ok(&["import", "--data", arg(&data), arg(layout)]);
        assert!(
            again.contains("0 manifests, 0 tags, 0 blobs"),
            "a second import changes nothing: {again}"
        );
        let server = Server::start_with_data(&data);
        assert_serves(&env, &server, &expected);
    }

    // The air-gapped site: upstream unreachable and offline, the local repositories serve.
    let site = work.path().join("site");
    fs::create_dir(&site).unwrap();
    portcullis_ok(&["import", "--data", arg(&site.join("data")), arg(&tar)]);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[mirror]\ndefault_upstream = \"docker.io\"\nlocal = [\"team/*\"]\noffline = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n"
    );
    let offline = Server::start_with_config(&config, &site);
    assert_serves(&env, &offline, &expected);
}

/// `skopeo copy SRC dir:DEST` of one image (of an index: this machine's platform, as
/// a client pulls it).
fn skopeo_copy_one(env: &ContainersEnv, src: &str, dest: &Path) {
    let dest = format!("dir:{}", dest.display());
    run_ok(
        &mut env.skopeo(&["copy", "--src-tls-verify=false", src, &dest]),
        TIMEOUT,
    );
}

/// Bytes of blob `digest` in the OCI layout `layout`.
fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let path = layout.join("blobs/sha256").join(hex_part(digest));
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A skopeo `dir:` copy holds `manifest` as its manifest.json and each blob of
/// `layout` named in `blobs` byte for byte.
fn assert_dir_copy(copy: &Path, manifest: &[u8], layout: &Path, blobs: &[&String]) {
    let what = copy.display();
    assert!(
        fs::read(copy.join("manifest.json")).unwrap() == manifest,
        "{what}: manifest.json is not the original manifest"
    );
    for digest in blobs {
        let pulled = copy.join(hex_part(digest));
        let pulled = fs::read(&pulled).unwrap_or_else(|e| panic!("{}: {e}", pulled.display()));
        assert!(
            pulled == layout_blob(layout, digest),
            "{what}: blob {digest} differs from the original"
        );
    }
}

/// The repositories `index.json` of an export names with `dev.portcullis.origin:
/// cached`, and those it names without.
fn exported_origins(layout: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let (mut cached, mut pushed) = (BTreeSet::new(), BTreeSet::new());
    for d in index["manifests"].as_array().unwrap() {
        let repo = d["annotations"]["dev.portcullis.repository"]
            .as_str()
            .unwrap()
            .to_string();
        match d["annotations"]["dev.portcullis.origin"].as_str() {
            Some("cached") => cached.insert(repo),
            _ => pushed.insert(repo),
        };
    }
    (cached, pushed)
}

#[test]
fn mirrored_content_crosses_the_air_gap_and_pulls_offline_by_the_names_clients_use() {
    // Skopeo and both servers share a loopback with no way out.
    if !in_fresh_netns() {
        return;
    }
    let env = ContainersEnv::new();
    let work = tempfile::tempdir().unwrap();
    let content = work.path().join("hub");
    fs::create_dir(&content).unwrap();
    let app = ImageFixture::small("1");
    place_image(&content, "library/app", &app, "1");
    let multi = IndexFixture::build("1");
    place_index(&content, "library/multi", &multi, "1");
    let partial = IndexFixture::build("1");
    place_index(&content, "library/partial", &partial, "1");
    let mut hub = FakeHub::start(&content, FakeHubOptions::default());

    // The connected side: library/app and one platform of library/partial pulled
    // through the mirror, library/multi (every platform) fetched into the cache with
    // the server stopped.
    let connected = work.path().join("connected");
    fs::create_dir(&connected).unwrap();
    let pulled = work.path().join("pulled");
    fs::create_dir(&pulled).unwrap();
    {
        let mirror = Server::start_with_config(&mirror_config(&hub, "", ""), &connected);
        skopeo_copy(
            &env,
            &format!("docker://{}/library/app:1", mirror.host_port()),
            &format!("dir:{}", pulled.join("connected").display()),
        );
        skopeo_copy_one(
            &env,
            &format!("docker://{}/library/partial:1", mirror.host_port()),
            &pulled.join("connected-partial"),
        );
    }
    let data = connected.join("data");
    portcullis_ok(&[
        "fetch",
        "--data",
        arg(&data),
        "--mirror",
        &format!("docker.io={}", hub.registry_url()),
        "--all-platforms",
        "library/multi:1",
    ]);
    let tar = work.path().join("mirrored.tar");
    let said = portcullis_ok(&["export", "--data", arg(&data), "--out", arg(&tar)]);
    assert!(
        said.contains("exported 3 repositories, 6 manifests, 3 tags"),
        "{said}"
    );

    // The air-gapped side: the upstream is gone for good.
    hub.stop();
    let site = work.path().join("site");
    fs::create_dir(&site).unwrap();
    let said = portcullis_ok(&["import", "--data", arg(&site.join("data")), arg(&tar)]);
    assert!(
        said.contains("imported 3 repositories, 6 manifests, 3 tags"),
        "{said}"
    );
    let offline = Server::start_with_config(&mirror_config(&hub, "", "offline = true"), &site);
    let host = offline.host_port();
    let app_blobs: Vec<&String> = std::iter::once(&app.config_digest)
        .chain(&app.layer_digests)
        .collect();
    for reference in [
        "library/app:1".to_string(),
        format!("library/app@{}", app.manifest_digest),
    ] {
        assert!(
            raw_manifest(&env, &host, &reference) == app.manifest,
            "{reference}: served manifest differs"
        );
        let copy = pulled.join(reference.replace(['/', ':', '@'], "_"));
        skopeo_copy(
            &env,
            &format!("docker://{host}/{reference}"),
            &format!("dir:{}", copy.display()),
        );
        assert_dir_copy(&copy, &app.manifest, &app.layout, &app_blobs);
    }
    let copy = pulled.join("multi");
    skopeo_copy(
        &env,
        &format!("docker://{host}/library/multi:1"),
        &format!("dir:{}", copy.display()),
    );
    assert!(
        fs::read(copy.join("manifest.json")).unwrap() == multi.index,
        "index differs"
    );
    for platform in &multi.platforms {
        let blobs: Vec<&String> = std::iter::once(&platform.config_digest)
            .chain(&platform.layer_digests)
            .collect();
        let instance = copy.join(format!(
            "{}.manifest.json",
            hex_part(&platform.manifest_digest)
        ));
        assert!(
            fs::read(&instance).unwrap() == platform.manifest,
            "{}: manifest differs",
            platform.architecture
        );
        for digest in blobs {
            assert!(
                fs::read(copy.join(hex_part(digest))).unwrap()
                    == layout_blob(&multi.layout, digest),
                "{}: blob {digest} differs",
                platform.architecture
            );
        }
    }

    // Of library/partial the index and the platform pulled came over; the other one
    // is not there, and offline it cannot be fetched.
    assert!(raw_manifest(&env, &host, "library/partial:1") == partial.index);
    let amd64 = partial.platform("amd64");
    let copy = pulled.join("partial");
    skopeo_copy_one(&env, &format!("docker://{host}/library/partial:1"), &copy);
    let blobs: Vec<&String> = std::iter::once(&amd64.config_digest)
        .chain(&amd64.layer_digests)
        .collect();
    assert_dir_copy(&copy, &amd64.manifest, &partial.layout, &blobs);
    let arm64 = run_with_timeout(
        &mut env.skopeo(&[
            "--override-arch",
            "arm64",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/library/partial:1"),
            &format!("dir:{}", pulled.join("partial-arm64").display()),
        ]),
        TIMEOUT,
    );
    assert!(
        !arm64.status.success(),
        "arm64 was never pulled, yet it came"
    );

    // A pushed image lives next to the cached ones, and they stay cached content.
    let pushed = ImageFixture::small("1");
    skopeo_push(&env, &pushed, &offline, "team/app:1");
    assert!(raw_manifest(&env, &host, "team/app:1") == pushed.manifest);
    let catalog: Value =
        serde_json::from_slice(&curl(&[&format!("{}/v2/_catalog", offline.base_url())])).unwrap();
    assert_eq!(
        catalog["repositories"],
        json!([
            "docker.io/library/app",
            "docker.io/library/multi",
            "docker.io/library/partial",
            "team/app"
        ]),
        "{catalog}"
    );
    drop(offline);
    let again = work.path().join("again");
    portcullis_ok(&[
        "export",
        "--data",
        arg(&site.join("data")),
        "--out",
        arg(&again),
    ]);
    let (cached, pushed_repos) = exported_origins(&again);
    assert_eq!(
        cached,
        BTreeSet::from(["app", "multi", "partial"].map(|name| format!("docker.io/library/{name}")))
    );
    assert_eq!(pushed_repos, BTreeSet::from(["team/app".to_string()]));
}

#[test]
fn a_skopeo_layout_needs_a_repository_and_a_damaged_one_tags_nothing() {
    let env = ContainersEnv::new();
    let work = tempfile::tempdir().unwrap();
    let image = ImageFixture::small("1.0");
    let layout = work.path().join("skopeo");
    skopeo_copy(
        &env,
        &format!("oci:{}:1.0", image.layout.display()),
        &format!("oci:{}:1.0", layout.display()),
    );
    let data = work.path().join("data");
    let refused = run_portcullis(&["import", "--data", arg(&data), arg(&layout)]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        refused.stderr.contains("--repository NAME"),
        "{}",
        refused.stderr
    );
    portcullis_ok(&[
        "import",
        "--data",
        arg(&data),
        "--repository",
        "imported/app",
        arg(&layout),
    ]);

    // One flipped byte in a layer: the import names the blob and tags nothing. (Into a
    // store of its own: one holding the layer already would link its verified copy.)
    let fresh = work.path().join("fresh");
    let damaged = work.path().join("damaged");
    skopeo_copy(
        &env,
        &format!("oci:{}:1.0", image.layout.display()),
        &format!("oci:{}:1.0", damaged.display()),
    );
    let layer = &image.layer_digests[1];
    let path: PathBuf = damaged.join("blobs/sha256").join(common::hex_part(layer));
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let import_damaged = || {
        run_portcullis(&[
            "import",
            "--data",
            arg(&fresh),
            "--repository",
            "damaged/app",
            arg(&damaged),
        ])
    };
    let failed = import_damaged();
    assert_eq!(failed.status.code(), Some(2), "{}", failed.stderr);
    assert!(
        failed.stderr.contains(common::hex_part(layer)) && failed.stderr.contains("damaged"),
        "{}",
        failed.stderr
    );
    // A missing blob is named too.
    fs::remove_file(&path).unwrap();
    let missing = import_damaged();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        missing.stderr.contains(layer.as_str()),
        "{}",
        missing.stderr
    );

    let server = Server::start_with_data(&data);
    assert_eq!(
        raw_manifest(&env, &server.host_port(), "imported/app:1.0"),
        image.manifest
    );
    let server = Server::start_with_data(&fresh);
    let tags = run_with_timeout(
        Command::new("curl").args([
            "-sS",
            &format!("{}/v2/damaged/app/tags/list", server.base_url()),
        ]),
        TIMEOUT,
    )
    .stdout_str();
    assert!(
        !tags.contains("1.0"),
        "nothing of the damaged import is tagged: {tags}"
    );
}

#[test]
fn a_registry2_tree_migrates_with_every_tag_and_digest() {
    let env = ContainersEnv::new();
    let work = tempfile::tempdir().unwrap();
    let mut registry = Distribution::start();
    let expected = push_images(&env, &registry.host_port());
    registry.stop();
    let storage = registry.storage();

    let data = work.path().join("data");
    let said = portcullis_ok(&[
        "import",
        "--data",
        arg(&data),
        "--from-distribution",
        arg(&storage),
    ]);
    eprintln!("{said}");
    assert!(said.contains("(the storage root)"), "{said}");
    assert!(
        said.contains("imported 3 repositories, 5 manifests, 4 tags"),
        "{said}"
    );
    // The v2 directory itself is accepted too; everything is there already.
    let again = portcullis_ok(&[
        "import",
        "--data",
        arg(&data),
        "--from-distribution",
        arg(&storage.join("docker/registry/v2")),
    ]);
    assert!(again.contains("(the v2 directory)"), "{again}");
    assert!(again.contains("0 manifests, 0 tags, 0 blobs"), "{again}");

    let server = Server::start_with_data(&data);
    assert_serves(&env, &server, &expected);
}

#[test]
fn bad_arguments_get_one_line_that_names_the_fix() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let (nothing, out) = (work.path().join("nothing"), work.path().join("x"));
    let cases: [(&[&str], &str); 3] = [
        (
            &["import", "--data", arg(&data), arg(&nothing)],
            "no such directory",
        ),
        (
            &[
                "import",
                "--data",
                arg(&data),
                "--from-distribution",
                arg(work.path()),
            ],
            "rootdirectory",
        ),
        (
            &[
                "export",
                "--data",
                arg(&data),
                "--out",
                arg(&out),
                "no/such",
            ],
            "not in this store",
        ),
    ];
    for (args, hint) in cases {
        let out = run_portcullis(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("portcullis: "), "{}", out.stderr);
        assert!(out.stderr.contains(hint), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    }
}
