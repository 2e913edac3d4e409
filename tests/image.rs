//! The container image: the top-level `Dockerfile` built with buildah and run with
//! podman, and `conf/container.toml`, the configuration it installs.
//!
//! No registry can be pulled from on the test machines, so the test makes the two base
//! images the Dockerfile names itself, under exactly those names, in a containers
//! storage of its own (`target/tmp/image-test/`, never the machine's):
//!
//! * the Debian image: `debootstrap --variant=minbase` of the suite its tag names,
//!   imported with `buildah from scratch` and slimmed like the official `-slim` images;
//! * the Rust image: that Debian image with gcc and libc6-dev from apt and the
//!   toolchain this test was built with copied in (PATH, CARGO_HOME and RUSTUP_HOME
//!   as in the official image).
//!
//! Both stay in that storage (labelled with the recipe and the rustc version, and
//! rebuilt when either changes), and so do the Dockerfile's cache mounts (cargo
//! registry and target directory, under `tmp/`), so later runs rebuild only what
//! changed. The image is built with `PROFILE=dev`: a cold optimised build takes far
//! longer on two cores, and what is tested here is the image, not the optimiser.
//!
//! The test skips, saying why, where it cannot run: not root, a tool missing, no route
//! to deb.debian.org or crates.io. With `REQUIRE_IMAGE_TEST=1` (as `.ci/run` sets it)
//! such a skip is a failure instead.

#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    hex_part, portcullis, remove_proxy_env, run_ok, run_with_timeout, sha256_digest, CmdOutput,
    ContainersEnv, ImageFixture,
};
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Makes a skip a failure (CI, which installs every tool the test needs).
const REQUIRE_ENV: &str = "REQUIRE_IMAGE_TEST";

/// The image's user and group (Dockerfile `USER`, README).
const IMAGE_UID: u32 = 10001;
const IMAGE_GID: u32 = 10001;

/// What the test tags the image it builds (with a random tag).
const IMAGE_NAME: &str = "localhost/portcullis-image-test";
/// Bump when the recipe of the stand-in base images changes: cached ones are rebuilt.
const RECIPE: &str = "1";
const RECIPE_LABEL: &str = "org.portcullis.test.recipe";
const RUSTC_LABEL: &str = "org.portcullis.test.rustc";

const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(900);
const APT_TIMEOUT: Duration = Duration::from_secs(600);
/// A cold build: crates downloaded, every dependency compiled, on a busy machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// One buildah or podman call that is not a build.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// From `podman run` to `/v2/` answering 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// For the HEALTHCHECK to pass once `/v2/` answers.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// `podman stop`'s wait before SIGKILL; a clean SIGTERM exit must come well before.
const STOP_TIMEOUT_SECS: u64 = 20;
const POLL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// conf/container.toml (no containers needed)
// ---------------------------------------------------------------------------

fn container_toml() -> String {
    let path = Path::new(REPO).join("conf/container.toml");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn container_config_listens_everywhere_and_keeps_data_in_the_volume() {
    let text = container_toml();
    let table: toml::Table = text.parse().expect("conf/container.toml is TOML");
    let key = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("conf/container.toml has no string {section}.{key}"))
            .to_string()
    };
    assert_eq!(key("server", "listen"), "0.0.0.0:5000");
    assert_eq!(key("storage", "data_dir"), "/data");
    assert_eq!(key("metrics", "listen"), "0.0.0.0:5001");

    // The binary accepts it as it stands.
    let check = run_ok(
        portcullis()
            .args(["check", "--config"])
            .arg(Path::new(REPO).join("conf/container.toml")),
        TOOL_TIMEOUT,
    );
    let said = check.stdout_str();
    assert!(
        said.contains("1 plain and 0 TLS listeners") && said.contains("data in /data"),
        "portcullis check of conf/container.toml said: {said}"
    );

    // The HEALTHCHECK runs `portcullis health` without arguments: its default URL must
    // be the metrics listener this file configures.
    let help = run_ok(portcullis().args(["health", "--help"]), TOOL_TIMEOUT).stdout_str();
    assert!(
        help.contains("http://127.0.0.1:5001/healthz"),
        "`portcullis health` no longer asks port 5001 by default (the image's \
         HEALTHCHECK and metrics.listen in conf/container.toml rely on it):\n{help}"
    );
}

#[test]
fn container_config_tls_example_works_once_uncommented() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    run_ok(
        portcullis()
            .args(["certs", "--out"])
            .arg(&certs)
            .args(["--name", "registry.test"]),
        TOOL_TIMEOUT,
    );
    // What the comments tell a user to do: uncomment [tls] and its two keys, add the
    // TLS listener; the files are in the /certs volume (here: the generated ones).
    let mut uncommented = 0;
    let text: String = container_toml()
        .lines()
        .map(|line| {
            let line = match line.strip_prefix("# ") {
                Some(rest)
                    if rest == "[tls]"
                        || rest.starts_with("cert = ")
                        || rest.starts_with("key = ") =>
                {
                    uncommented += 1;
                    rest.to_string()
                }
                _ => line.to_string(),
            };
            let line = if line == "tls_listen = []" {
                uncommented += 1;
                "tls_listen = [\"0.0.0.0:5443\"]".to_string()
            } else {
                line
            };
            line.replace("\"/certs/", &format!("\"{}/", certs.display())) + "\n"
        })
        .collect();
    assert_eq!(
        uncommented, 4,
        "conf/container.toml no longer has the commented [tls] cert/key example and \
         tls_listen = []:\n{text}"
    );
    let config = dir.path().join("tls.toml");
    fs::write(&config, &text).expect("write config");
    let check = run_with_timeout(
        portcullis().args(["check", "--config"]).arg(&config),
        TOOL_TIMEOUT,
    );
    assert!(
        check.status.success() && check.stdout_str().contains("1 plain and 1 TLS listeners"),
        "the TLS example of conf/container.toml, uncommented, fails `portcullis check` \
         ({}):\n{}{}\nconfig:\n{text}",
        check.status,
        check.stdout_str(),
        check.stderr
    );
}

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

#[test]
fn image_builds_runs_as_non_root_serves_and_keeps_data_in_its_volume() {
    let started = Instant::now();
    let bases = Bases::from_dockerfile();
    if let Err(reason) = preconditions() {
        return skip(&reason);
    }
    let store = Store::open();
    if let Err(reason) = store.usable() {
        return skip(&reason);
    }

    let made = match store.ensure_bases(&bases) {
        Ok(made) => made,
        Err(reason) => return skip(&reason),
    };
    let bases_done = Instant::now();
    note(&format!(
        "image test: base images {} in {:.0?}",
        if made { "made" } else { "cached" },
        bases_done - started
    ));

    let mut guard = Cleanup {
        store: &store,
        image: None,
        container: None,
    };
    let tag = format!(
        "{IMAGE_NAME}:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let build = run_with_timeout(
        &mut store.buildah(&[
            "build",
            "--pull=never",
            // The OCI format has no HEALTHCHECK; buildah drops it without this.
            "--format",
            "docker",
            "--network",
            "host",
            "--build-arg",
            "PROFILE=dev",
            "--tag",
            &tag,
            "--file",
            &format!("{REPO}/Dockerfile"),
            REPO,
        ]),
        BUILD_TIMEOUT,
    );
    guard.image = Some(tag.clone());
    assert!(
        build.status.success(),
        "buildah build of the Dockerfile failed ({}):\n{}\n{}",
        build.status,
        tail(&build.stdout_str(), 12000),
        tail(&build.stderr, 6000)
    );
    let build_done = Instant::now();
    note(&format!(
        "image test: image built (dev profile) in {:.0?}",
        build_done - bases_done
    ));

    check_image_config(&store, &tag);

    // A data directory on the host for the /data volume, prepared as the README says.
    let data = tempfile::Builder::new()
        .prefix("portcullis-image-data-")
        .tempdir()
        .expect("temp dir");
    std::os::unix::fs::chown(data.path(), Some(IMAGE_UID), Some(IMAGE_GID)).expect("chown data");
    let name = format!("portcullis-image-test-{}", std::process::id());
    guard.container = Some(name.clone());
    let port = run_container(&store, &tag, &name, data.path());
    wait_for_v2(&store, &name, port);

    // It runs as the image's user, not root.
    let status = podman_ok(&store, &["exec", &name, "cat", "/proc/1/status"]).stdout_str();
    for (field, id) in [("Uid:", IMAGE_UID), ("Gid:", IMAGE_GID)] {
        let ids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in /proc/1/status:\n{status}"))
            .split_whitespace()
            .map(|n| n.parse().expect("numeric id"))
            .collect();
        assert_eq!(
            ids,
            vec![id; 4],
            "{field} (real, effective, saved, fs) of PID 1"
        );
    }

    // A push and a pull through the published port, byte for byte.
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");
    let host = format!("127.0.0.1:{port}");
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{}", img.layout.display(), img.tag),
            &format!("docker://{host}/image-test/app:1.0"),
        ]),
        SKOPEO_TIMEOUT,
    );
    let pulled = tempfile::tempdir().expect("temp dir");
    let out = pulled.path().join("layout");
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{host}/image-test/app:1.0"),
            &format!("oci:{}:1.0", out.display()),
        ]),
        SKOPEO_TIMEOUT,
    );
    assert_layout_matches(&img, &out, "1.0");

    // What was pushed lies in the volume, owned by the image's user.
    for digest in img.blob_digests() {
        let hex = hex_part(&digest);
        let path = data.path().join("blobs/sha256").join(&hex[..2]).join(hex);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{digest} not in the volume ({e})"));
        assert!(bytes == img.blob(&digest), "{digest} in the volume differs");
        let meta = fs::metadata(&path).expect("stat blob");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (IMAGE_UID, IMAGE_GID),
            "owner of {}",
            path.display()
        );
    }
    assert!(
        data.path().join("meta.redb").is_file(),
        "no meta.redb in the volume"
    );

    // The HEALTHCHECK as the image defines it, and readiness (which checks the store).
    wait_healthy(&store, &name);
    podman_ok(
        &store,
        &[
            "exec",
            &name,
            "portcullis",
            "health",
            "--url",
            "http://127.0.0.1:5001/readyz",
        ],
    );

    // The environment override reached the server: its log lines are JSON objects.
    let logs = podman_ok(&store, &["logs", &name]);
    let lines: Vec<String> = logs
        .stdout_str()
        .lines()
        .chain(logs.stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "the container logged nothing");
    for line in &lines {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.as_ref().is_ok_and(Value::is_object),
            "PORTCULLIS_LOG__FORMAT=json, yet a log line is not a JSON object: {line}"
        );
    }

    // SIGTERM (to PID 1) ends it cleanly, long before podman would resort to SIGKILL.
    let stopping = Instant::now();
    podman_ok(
        &store,
        &["stop", "--time", &STOP_TIMEOUT_SECS.to_string(), &name],
    );
    let stop_took = stopping.elapsed();
    let exit = podman_ok(
        &store,
        &["inspect", "--format", "{{.State.ExitCode}}", &name],
    )
    .stdout_str();
    assert_eq!(exit.trim(), "0", "exit code after podman stop");
    assert!(
        stop_took < Duration::from_secs(STOP_TIMEOUT_SECS / 2),
        "podman stop took {stop_took:?}"
    );

    drop(guard);
    note(&format!(
        "image test: run, checked and removed in {:.0?}",
        build_done.elapsed()
    ));
}

/// `podman run`s the image as a user would, with `data` as the /data volume and the
/// plain port published on a free loopback port (returned); a few fresh ports are
/// tried should another process take one first.
fn run_container(store: &Store, tag: &str, name: &str, data: &Path) -> u16 {
    let (nofile, nproc) = ulimits();
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let run = run_with_timeout(
            &mut store.podman(&[
                "run",
                "--detach",
                "--name",
                name,
                // Keep the HEALTHCHECK, without the systemd timer podman would set up
                // for it; the test runs it itself.
                "--health-interval",
                "disable",
                // podman's defaults for root (1048576) can exceed what this machine lets
                // a process raise its limits to.
                "--ulimit",
                &format!("nofile={nofile}:{nofile}"),
                "--ulimit",
                &format!("nproc={nproc}:{nproc}"),
                "--publish",
                &format!("127.0.0.1:{port}:5000"),
                "--volume",
                &format!("{}:/data", data.display()),
                // The override convention: any key as PORTCULLIS_SECTION__KEY.
                "--env",
                "PORTCULLIS_LOG__FORMAT=json",
                tag,
            ]),
            TOOL_TIMEOUT,
        );
        if run.status.success() {
            return port;
        }
        let taken = run.stderr.contains("address already in use");
        failures.push(format!(
            "port {port}: {}\n{}",
            run.status,
            run.stderr.trim()
        ));
        if !taken {
            break;
        }
        podman_ok(store, &["rm", "--force", "--time", "0", name]);
    }
    panic!("podman run {tag} failed:\n{}", failures.join("\n"));
}

/// The image's configuration: user, ports, volumes, entrypoint, HEALTHCHECK, labels, size.
fn check_image_config(store: &Store, tag: &str) {
    let inspect = podman_ok(store, &["image", "inspect", tag]);
    let all: Value = serde_json::from_slice(&inspect.stdout).expect("podman image inspect JSON");
    let image = &all[0];
    let config = &image["Config"];
    assert_eq!(config["User"], "10001:10001", "USER");
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        keys(&config["ExposedPorts"]),
        ["5000/tcp", "5001/tcp", "5443/tcp"]
            .map(String::from)
            .into(),
        "EXPOSE"
    );
    assert_eq!(
        keys(&config["Volumes"]),
        ["/certs", "/data"].map(String::from).into(),
        "VOLUME"
    );
    assert_eq!(config["Entrypoint"], serde_json::json!(["portcullis"]));
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/portcullis/portcullis.toml"])
    );
    assert_eq!(
        image["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "portcullis", "health"]),
        "HEALTHCHECK (kept only in the docker format): {}",
        image["Healthcheck"]
    );
    let labels = &config["Labels"];
    for (label, want) in [
        ("org.opencontainers.image.title", env!("CARGO_PKG_NAME")),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION"),
        ),
        (
            "org.opencontainers.image.licenses",
            env!("CARGO_PKG_LICENSE"),
        ),
    ] {
        assert_eq!(
            labels[label], want,
            "label {label} (Cargo.toml says {want})"
        );
    }
    // The runtime stage holds the binary, not the toolchain (the Rust image is ~1 GB).
    let size = image["Size"].as_u64().expect("image size");
    assert!(
        size < 200_000_000,
        "the image is {size} bytes: more than a Debian base and one binary"
    );
}

/// Polls `GET /v2/` until 200, failing at once (with the log) if the container exits.
fn wait_for_v2(store: &Store, name: &str, port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http_status(port, "/v2/") == Some(200) {
            return;
        }
        let state =
            podman_ok(store, &["inspect", "--format", "{{.State.Status}}", name]).stdout_str();
        if state.trim() != "running" || Instant::now() >= deadline {
            panic!(
                "the container did not answer GET /v2/ with 200 on 127.0.0.1:{port} within \
                 {READY_TIMEOUT:?} (state {}); its log:\n{}",
                state.trim(),
                container_log(store, name)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Runs the image's HEALTHCHECK until it passes (bounded), then checks podman's record.
fn wait_healthy(store: &Store, name: &str) {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let run = run_with_timeout(
            &mut store.podman(&["healthcheck", "run", name]),
            TOOL_TIMEOUT,
        );
        if run.status.success() {
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "the HEALTHCHECK did not pass within {HEALTHY_TIMEOUT:?} ({}): {}{}\n\
                 health record: {}\nlog:\n{}",
                run.status,
                run.stdout_str(),
                run.stderr,
                podman_ok(
                    store,
                    &["inspect", "--format", "{{json .State.Health}}", name]
                )
                .stdout_str(),
                container_log(store, name)
            );
        }
        std::thread::sleep(POLL);
    }
    let status = podman_ok(
        store,
        &["inspect", "--format", "{{.State.Health.Status}}", name],
    )
    .stdout_str();
    assert_eq!(status.trim(), "healthy", "podman's health status");
}

/// Asserts that the OCI layout at `out` holds the fixture image under `tag`, every blob
/// byte-identical.
fn assert_layout_matches(img: &ImageFixture, out: &Path, tag: &str) {
    let index: Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    let entry = index["manifests"]
        .as_array()
        .expect("index.manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in the pulled index: {index}"));
    assert_eq!(
        entry["digest"],
        img.manifest_digest.as_str(),
        "pulled manifest"
    );
    let blobs = out.join("blobs/sha256");
    let pulled: BTreeSet<String> = fs::read_dir(&blobs)
        .expect("read pulled blobs")
        .map(|e| format!("sha256:{}", e.expect("entry").file_name().to_string_lossy()))
        .collect();
    let pushed: BTreeSet<String> = img.blob_digests().into_iter().collect();
    assert_eq!(pulled, pushed, "blobs pulled back");
    for digest in &pushed {
        let got = fs::read(blobs.join(hex_part(digest))).expect("read pulled blob");
        assert_eq!(sha256_digest(&got), *digest);
        assert!(
            got == img.blob(digest),
            "pulled {digest} differs from the pushed one"
        );
    }
}

// ---------------------------------------------------------------------------
// Skipping
// ---------------------------------------------------------------------------

/// Says why the test did not run, past the test harness's output capture, so it shows
/// in every `cargo test` log; fails instead when [`REQUIRE_ENV`] is set.
fn skip(reason: &str) {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("image test cannot run here, and {REQUIRE_ENV} is set: {reason}");
    }
    note(&format!("SKIPPED the image test: {reason}"));
}

/// One line on the real stderr (libtest captures only the print macros).
fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn preconditions() -> Result<(), String> {
    if !common::is_root() {
        return Err("it needs root (rootful buildah and podman; CI runs as root)".into());
    }
    for (tool, package) in [
        ("buildah", "buildah"),
        ("podman", "podman"),
        ("skopeo", "skopeo"),
        ("debootstrap", "debootstrap"),
        ("rustc", "a Rust toolchain"),
    ] {
        if !on_path(tool) {
            return Err(format!(
                "{tool} is not installed (install {package}; `make test-deps` does)"
            ));
        }
    }
    // The image build fetches Debian packages and crates; a proxy, if set, is trusted
    // to reach them.
    let proxied = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !proxied {
        for (host, port) in [("deb.debian.org", 80), ("index.crates.io", 443)] {
            if !reachable(host, port) {
                return Err(format!(
                    "no route to {host}:{port}, which the image build needs (Debian \
                     packages, crates)"
                ));
            }
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

fn reachable(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
}

// ---------------------------------------------------------------------------
// The base images
// ---------------------------------------------------------------------------

/// The base images the Dockerfile names in its FROM lines.
struct Bases {
    /// `docker.io/library/debian:<suite>-slim`
    debian: String,
    /// The Debian suite for debootstrap (from the Debian image's tag).
    suite: String,
    /// `docker.io/library/rust:<version>-slim-<suite>`
    rust: String,
}

impl Bases {
    fn from_dockerfile() -> Bases {
        let path = Path::new(REPO).join("Dockerfile");
        let text = fs::read_to_string(&path).expect("read Dockerfile");
        let froms: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("FROM "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let pick = |prefix: &str| froms.iter().find(|f| f.starts_with(prefix)).cloned();
        let (Some(debian), Some(rust)) = (
            pick("docker.io/library/debian:"),
            pick("docker.io/library/rust:"),
        ) else {
            panic!(
                "the Dockerfile's FROM lines {froms:?} are not one docker.io/library/rust:… \
                 and one docker.io/library/debian:… image, the two this test can make"
            );
        };
        assert_eq!(
            froms.len(),
            2,
            "the Dockerfile has FROM lines this test cannot make images for: {froms:?}"
        );
        let tag = debian.rsplit(':').next().unwrap_or_default();
        let suite = tag.strip_suffix("-slim").unwrap_or(tag).to_string();
        assert!(
            rust.ends_with(&format!("-{suite}")),
            "the Rust image {rust} is not built on the Debian suite {suite} of {debian}"
        );
        Bases {
            debian,
            suite,
            rust,
        }
    }
}

/// The test's own containers storage, cache mounts and configuration, kept between runs
/// under `target/tmp/image-test/`, and held under an exclusive lock while in use.
struct Store {
    dir: PathBuf,
    runtime: Option<&'static str>,
    _lock: File,
}

impl Store {
    fn open() -> Store {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-test");
        for sub in ["root", "runroot", "tmp", "podman-tmp", "networks", "home"] {
            fs::create_dir_all(dir.join(sub)).expect("create image-test dirs");
        }
        // Never reach a registry for an image: the bases exist locally or not at all.
        fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"docker.io\"\nblocked = true\n",
        )
        .expect("write registries.conf");
        fs::write(dir.join("containers.conf"), "").expect("write containers.conf");
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("root").display(),
                dir.join("runroot").display()
            ),
        )
        .expect("write storage.conf");
        let lock = File::create(dir.join("lock")).expect("create lock file");
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", dir.join("lock").display());
        // crun refuses hybrid cgroup hierarchies (as on the test VMs); runc copes.
        let runtime = on_path("runc").then_some("runc");
        Store {
            dir,
            runtime,
            _lock: lock,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.dir.join("home"))
            // buildah keeps the Dockerfile's cache mounts under $TMPDIR.
            .env("TMPDIR", self.dir.join("tmp"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("REGISTRIES_CONFIG_PATH", self.dir.join("registries.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "overlay"]);
        cmd
    }

    /// `buildah` on this storage (proxy variables kept: builds fetch packages).
    fn buildah(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("buildah");
        // Global for `build`; `run` takes its own.
        if let (Some(runtime), Some(&"build")) = (self.runtime, args.first()) {
            cmd.arg(args[0])
                .args(["--runtime", runtime])
                .args(&args[1..]);
        } else {
            cmd.args(args);
        }
        cmd
    }

    /// `podman` on this storage, talking to loopback only (no proxy).
    fn podman(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("podman");
        cmd.arg("--tmpdir")
            .arg(self.dir.join("podman-tmp"))
            .arg("--network-config-dir")
            .arg(self.dir.join("networks"))
            .args(["--cgroup-manager=cgroupfs", "--events-backend=file"]);
        if let Some(runtime) = self.runtime {
            cmd.args(["--runtime", runtime]);
        }
        cmd.args(args);
        remove_proxy_env(&mut cmd);
        cmd
    }

    fn buildah_ok(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        run_ok(&mut self.buildah(args), timeout)
    }

    /// Whether buildah can use this storage at all; also removes what an interrupted
    /// run left behind (working containers, the test's containers and images,
    /// dangling images): the storage is the test's own, and locked.
    fn usable(&self) -> Result<(), String> {
        let info = run_with_timeout(&mut self.buildah(&["info"]), TOOL_TIMEOUT);
        if !info.status.success() {
            return Err(format!(
                "buildah cannot use overlay storage in {} ({}): {}",
                self.dir.display(),
                info.status,
                info.stderr.trim()
            ));
        }
        self.buildah_ok(&["rm", "--all"], TOOL_TIMEOUT);
        run_ok(
            &mut self.podman(&["rm", "--all", "--force", "--volumes", "--time", "0"]),
            TOOL_TIMEOUT,
        );
        let images = run_ok(
            &mut self.podman(&[
                "images",
                "--quiet",
                "--filter",
                &format!("reference={IMAGE_NAME}"),
            ]),
            TOOL_TIMEOUT,
        )
        .stdout_str();
        for id in images.split_whitespace() {
            run_ok(&mut self.podman(&["rmi", "--force", id]), TOOL_TIMEOUT);
        }
        run_ok(
            &mut self.podman(&["image", "prune", "--force"]),
            TOOL_TIMEOUT,
        );
        Ok(())
    }

    /// The value of `label` on a local image, or `None` if the image is absent.
    fn image_label(&self, image: &str, label: &str) -> Option<String> {
        let out = run_with_timeout(
            &mut self.buildah(&["inspect", "--type", "image", image]),
            TOOL_TIMEOUT,
        );
        if !out.status.success() {
            return None;
        }
        let inspect: Value = serde_json::from_slice(&out.stdout).expect("buildah inspect JSON");
        Some(
            inspect["OCIv1"]["config"]["Labels"][label]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// Makes the base images that are missing or stale; `Ok(true)` if any was made.
    fn ensure_bases(&self, bases: &Bases) -> Result<bool, String> {
        let rustc = run_ok(Command::new("rustc").arg("--version"), TOOL_TIMEOUT)
            .stdout_str()
            .trim()
            .to_string();
        let rust_tag = bases.rust.rsplit(':').next().unwrap_or_default();
        let version = rust_tag.split('-').next().unwrap_or_default();
        if !rustc.starts_with(&format!("rustc {version}")) {
            note(&format!(
                "NOTE: the Dockerfile builds with {}, this machine has {rustc}; the stand-in \
                 image gets this machine's toolchain",
                bases.rust
            ));
        }
        let mut made = false;
        if self.image_label(&bases.debian, RECIPE_LABEL).as_deref() != Some(RECIPE) {
            self.make_debian(bases)?;
            made = true;
        }
        let rust_current = !made
            && self.image_label(&bases.rust, RECIPE_LABEL).as_deref() == Some(RECIPE)
            && self.image_label(&bases.rust, RUSTC_LABEL).as_deref() == Some(rustc.as_str());
        if !rust_current {
            self.make_rust(bases, &rustc)?;
            made = true;
        }
        Ok(made)
    }

    /// debootstrap, slimmed like the official -slim images, imported from scratch.
    fn make_debian(&self, bases: &Bases) -> Result<(), String> {
        let _ = run_with_timeout(
            &mut self.buildah(&["rmi", "--force", &bases.debian]),
            TOOL_TIMEOUT,
        );
        let rootfs = self.dir.join("rootfs");
        remove_tree(&rootfs);
        let mut debootstrap = Command::new("debootstrap");
        debootstrap
            .args(["--variant=minbase", &bases.suite])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian");
        let out = run_with_timeout(&mut debootstrap, DEBOOTSTRAP_TIMEOUT);
        if !out.status.success() {
            remove_tree(&rootfs);
            return Err(format!(
                "debootstrap {} failed ({}): {}",
                bases.suite,
                out.status,
                tail(&out.stdout_str(), 2000)
            ));
        }
        let suite = &bases.suite;
        fs::write(
            rootfs.join("etc/apt/sources.list"),
            format!(
                "deb http://deb.debian.org/debian {suite} main\n\
                 deb http://deb.debian.org/debian {suite}-updates main\n\
                 deb http://deb.debian.org/debian-security {suite}-security main\n"
            ),
        )
        .expect("write sources.list");
        fs::write(
            rootfs.join("etc/dpkg/dpkg.cfg.d/slim"),
            "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n\
             path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n\
             path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n",
        )
        .expect("write dpkg excludes");
        for dir in [
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
            "dev",
        ] {
            empty_dir(&rootfs.join(dir));
        }

        let ctr = self.buildah_ok(&["from", "scratch"], TOOL_TIMEOUT);
        let ctr = ctr.stdout_str().trim().to_string();
        let mount = self.buildah_ok(&["mount", &ctr], TOOL_TIMEOUT);
        let mount = mount.stdout_str().trim().to_string();
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", rootfs.display()))
                .arg(&mount),
            TOOL_TIMEOUT,
        );
        self.buildah_ok(&["umount", &ctr], TOOL_TIMEOUT);
        remove_tree(&rootfs);
        self.buildah_ok(
            &[
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd",
                "bash",
                "--label",
                &format!("{RECIPE_LABEL}={RECIPE}"),
                &ctr,
            ],
            TOOL_TIMEOUT,
        );
        self.buildah_ok(
            &["commit", "--rm", "--quiet", &ctr, &bases.debian],
            TOOL_TIMEOUT,
        );
        Ok(())
    }

    /// The Debian image with gcc, libc6-dev and this machine's Rust toolchain.
    fn make_rust(&self, bases: &Bases, rustc: &str) -> Result<(), String> {
        let _ = run_with_timeout(
            &mut self.buildah(&["rmi", "--force", &bases.rust]),
            TOOL_TIMEOUT,
        );
        let sysroot = run_ok(
            Command::new("rustc").args(["--print", "sysroot"]),
            TOOL_TIMEOUT,
        )
        .stdout_str()
        .trim()
        .to_string();
        let sysroot = PathBuf::from(sysroot);
        if !sysroot.join("bin/cargo").is_file() {
            return Err(format!(
                "the toolchain at {} has no bin/cargo to copy into the Rust image",
                sysroot.display()
            ));
        }
        let toolchain = sysroot
            .file_name()
            .expect("sysroot has a name")
            .to_string_lossy()
            .into_owned();

        let ctr = self.buildah_ok(&["from", "--pull=never", &bases.debian], TOOL_TIMEOUT);
        let ctr = ctr.stdout_str().trim().to_string();
        let mut run = self.buildah(&["run", "--network", "host"]);
        if let Some(runtime) = self.runtime {
            run.args(["--runtime", runtime]);
        }
        run.args([&ctr, "--", "sh", "-c"]).arg(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends ca-certificates gcc libc6-dev >/dev/null \
             && apt-get clean && rm -rf /var/lib/apt/lists/*",
        );
        let apt = run_with_timeout(&mut run, APT_TIMEOUT);
        if !apt.status.success() {
            let _ = run_with_timeout(&mut self.buildah(&["rm", &ctr]), TOOL_TIMEOUT);
            return Err(format!(
                "apt-get install gcc libc6-dev in the Rust image failed ({}): {}",
                apt.status,
                tail(&apt.stderr, 2000)
            ));
        }
        // Trust what this machine trusts: where TLS to crates.io passes an intercepting
        // proxy, its CA is in the host's bundle and not in Debian's.
        let host_bundle = "/etc/ssl/certs/ca-certificates.crt";
        if Path::new(host_bundle).is_file() {
            self.buildah_ok(&["copy", &ctr, host_bundle, host_bundle], TOOL_TIMEOUT);
        }
        let mount = self.buildah_ok(&["mount", &ctr], TOOL_TIMEOUT);
        let mount = PathBuf::from(mount.stdout_str().trim());
        let dest = mount.join("usr/local/rustup/toolchains").join(&toolchain);
        fs::create_dir_all(&dest).expect("create toolchain dir");
        // The toolchain without its documentation (most of its size).
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(r#"tar -C "$1" --exclude=./share/doc -cf - . | tar -C "$2" -xf -"#)
                .arg("sh")
                .arg(&sysroot)
                .arg(&dest),
            TOOL_TIMEOUT,
        );
        let bin = mount.join("usr/local/cargo/bin");
        fs::create_dir_all(&bin).expect("create cargo bin dir");
        for entry in fs::read_dir(sysroot.join("bin")).expect("read toolchain bin") {
            let name = entry.expect("entry").file_name();
            let target = Path::new("../../rustup/toolchains")
                .join(&toolchain)
                .join("bin")
                .join(&name);
            std::os::unix::fs::symlink(target, bin.join(&name)).expect("link tool");
        }
        self.buildah_ok(&["umount", &ctr], TOOL_TIMEOUT);
        self.buildah_ok(
            &[
                "config",
                "--env",
                "RUSTUP_HOME=/usr/local/rustup",
                "--env",
                "CARGO_HOME=/usr/local/cargo",
                "--env",
                "PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--label",
                &format!("{RECIPE_LABEL}={RECIPE}"),
                "--label",
                &format!("{RUSTC_LABEL}={rustc}"),
                &ctr,
            ],
            TOOL_TIMEOUT,
        );
        self.buildah_ok(
            &["commit", "--rm", "--quiet", &ctr, &bases.rust],
            TOOL_TIMEOUT,
        );
        Ok(())
    }
}

/// Removes the test's container (with its anonymous volumes) and image, also when the
/// test fails; the base images and build caches stay for the next run.
struct Cleanup<'a> {
    store: &'a Store,
    image: Option<String>,
    container: Option<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.container.take() {
            if std::thread::panicking() {
                eprintln!(
                    "---- container log ----\n{}\n---- end of container log ----",
                    container_log(self.store, &name)
                );
            }
            let _ = run_with_timeout(
                &mut self
                    .store
                    .podman(&["rm", "--force", "--volumes", "--time", "0", &name]),
                TOOL_TIMEOUT,
            );
        }
        if let Some(image) = self.image.take() {
            let _ = run_with_timeout(
                &mut self.store.podman(&["rmi", "--force", &image]),
                TOOL_TIMEOUT,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn podman_ok(store: &Store, args: &[&str]) -> CmdOutput {
    run_ok(&mut store.podman(args), TOOL_TIMEOUT)
}

fn container_log(store: &Store, name: &str) -> String {
    let out = run_with_timeout(&mut store.podman(&["logs", name]), TOOL_TIMEOUT);
    tail(&format!("{}{}", out.stdout_str(), out.stderr), 16000)
}

/// The last `max` bytes of a text (at a character boundary).
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

fn remove_tree(path: &Path) {
    if path.exists() {
        fs::remove_dir_all(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// Removes what a directory holds, keeping the directory.
fn empty_dir(path: &Path) {
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `nofile` as this process may set it (its hard limit), and a modest `nproc`.
fn ulimits() -> (u64, u64) {
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_NOFILE)");
    (nofile.rlim_max.min(1 << 20), 4096)
}

/// The status of one `GET path` on loopback, if anything answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}
