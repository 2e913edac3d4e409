//! Real clients pull through the pull-through cache: skopeo, podman (a
//! `[[registry.mirror]]` in registries.conf), dockerd (`registry-mirrors`) and
//! containerd (`hosts.toml`, which sends `?ns=`). Each test runs inside a fresh network
//! namespace with only loopback, so a client falling back to the real Docker Hub fails
//! at once; upstream traffic is read from the simulated Docker Hub's request log.

#[allow(dead_code)]
mod common;

use common::daemons::{Containerd, Dockerd, DockerdOptions};
use common::fakehub::{mirror_config, place_image, FakeHub, FakeHubOptions, HubRequest};
use common::netns::in_fresh_netns;
use common::{podman_pull_checked, run_ok, run_with_timeout, ContainersEnv, ImageFixture, Server};
use std::fs;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// A fake Docker Hub holding `library/busybox:1.36` (three layers), and a portcullis
/// mirroring it with `config_edit` applied to the default mirror config.
struct Setup {
    hub: FakeHub,
    server: Server,
    image: ImageFixture,
    _content: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start(config_edit: impl Fn(String) -> String) -> Setup {
        let content = tempfile::tempdir().expect("content dir");
        let image = ImageFixture::build("1.36", &[512 << 10, 256 << 10, 64 << 10]);
        place_image(content.path(), "library/busybox", &image, "1.36");
        let hub = FakeHub::start(content.path(), FakeHubOptions::default());
        let dir = tempfile::tempdir().expect("server dir");
        let server =
            Server::start_with_config(&config_edit(mirror_config(&hub, "", "")), dir.path());
        Setup {
            hub,
            server,
            image,
            _content: content,
            _dir: dir,
        }
    }

    /// Upstream GETs of each of the image's blobs (registry listener; each was
    /// redirected to one CDN download).
    fn blob_gets(&self) -> Vec<(String, usize)> {
        let log = self.hub.requests();
        std::iter::once(&self.image.config_digest)
            .chain(&self.image.layer_digests)
            .map(|digest| {
                let count = log
                    .iter()
                    .filter(|r: &&HubRequest| {
                        r.listener == "registry"
                            && r.method == "GET"
                            && r.path.ends_with(&format!("/blobs/{digest}"))
                    })
                    .count();
                (digest.clone(), count)
            })
            .collect()
    }

    fn assert_each_blob_fetched(&self, times: usize) {
        for (digest, count) in self.blob_gets() {
            assert_eq!(
                count,
                times,
                "upstream GETs of {digest}:\n{:#?}",
                self.hub.requests()
            );
        }
    }
}

/// A podman/skopeo environment whose registries.conf sends docker.io to `mirror`.
fn containers_env_with_mirror(mirror: &str) -> ContainersEnv {
    let env = ContainersEnv::new();
    fs::write(
        env.path("registries.conf"),
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n\
             [[registry]]\nlocation = \"docker.io\"\n\
             [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ),
    )
    .expect("write registries.conf");
    env
}

#[test]
fn skopeo_and_podman_pull_through_the_mirror_and_keep_pulling_when_the_upstream_is_gone() {
    if !in_fresh_netns() {
        return;
    }
    let mut s = Setup::start(|c| c);
    let mirror = s.server.host_port();
    let out = tempfile::tempdir().unwrap();
    // skopeo by the mirror's own address, cold.
    let env = ContainersEnv::new();
    let source = format!("docker://{mirror}/library/busybox:1.36");
    let layout = format!("oci:{}:x", out.path().join("layout").display());
    run_ok(
        &mut env.skopeo(&["copy", "--src-tls-verify=false", &source, &layout]),
        CLIENT_TIMEOUT,
    );
    s.assert_each_blob_fetched(1);
    // podman by the Docker Hub name, through [[registry.mirror]]: warm.
    let podman = containers_env_with_mirror(&mirror);
    podman_pull_checked(
        &podman,
        &s.server,
        &[],
        "docker.io/library/busybox:1.36",
        &s.image.config_digest,
        CLIENT_TIMEOUT,
    );
    s.assert_each_blob_fetched(1);

    // The upstream goes away: cached images still pull, by a fresh podman too.
    s.hub.stop();
    let offline_podman = containers_env_with_mirror(&mirror);
    podman_pull_checked(
        &offline_podman,
        &s.server,
        &[],
        "busybox:1.36",
        &s.image.config_digest,
        CLIENT_TIMEOUT,
    );
    let tags = run_ok(
        &mut env.skopeo(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{mirror}/library/busybox"),
        ]),
        CLIENT_TIMEOUT,
    );
    assert!(tags.stdout_str().contains("1.36"), "{}", tags.stdout_str());
    // What was never cached fails at once with an honest status (the OCI body naming
    // the upstream is checked in tests/mirror.rs; skopeo shows only the status).
    let uncached = run_with_timeout(
        &mut env.skopeo(&[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{mirror}/library/alpine:3.20"),
        ]),
        CLIENT_TIMEOUT,
    );
    assert!(!uncached.status.success());
    assert!(uncached.stderr.contains("503"), "{}", uncached.stderr);
}

#[test]
fn docker_pulls_official_images_without_library_prefix_through_registry_mirrors() {
    if !in_fresh_netns() {
        return;
    }
    let s = Setup::start(|c| c);
    let dockerd = Dockerd::start(DockerdOptions {
        registry_mirrors: vec![s.server.base_url()],
        ..Default::default()
    });
    // As users type it; dockerd asks the mirror for library/busybox.
    run_ok(
        &mut dockerd.docker(&["pull", "busybox:1.36"]),
        CLIENT_TIMEOUT,
    );
    let inspected = dockerd.inspect_image("busybox:1.36");
    assert_eq!(inspected["Id"], s.image.config_digest.as_str());
    assert_eq!(
        inspected["RootFS"]["Layers"],
        serde_json::json!(s.image.diff_ids)
    );
    s.assert_each_blob_fetched(1);
    // dockerd starts with a HEAD of the tag; the mirror answered it from one GET.
    let manifest_gets = s
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/") && r.status == 200)
        .count();
    assert_eq!(manifest_gets, 1, "{:#?}", s.hub.requests());

    // Pushes to a local repository work on the same endpoint.
    let local = format!("{}/team/busybox:mine", s.server.host_port());
    run_ok(
        &mut dockerd.docker(&["tag", "busybox:1.36", &local]),
        CLIENT_TIMEOUT,
    );
    run_ok(&mut dockerd.docker(&["push", &local]), CLIENT_TIMEOUT);
    // A push to a mirrored name is refused, with the key to change.
    let mirrored = format!("{}/library/busybox:mine", s.server.host_port());
    run_ok(
        &mut dockerd.docker(&["tag", "busybox:1.36", &mirrored]),
        CLIENT_TIMEOUT,
    );
    let refused = run_with_timeout(&mut dockerd.docker(&["push", &mirrored]), CLIENT_TIMEOUT);
    assert!(!refused.status.success(), "{}", refused.stdout_str());
    let said = format!("{}{}", refused.stdout_str(), refused.stderr);
    assert!(
        said.contains("mirror.local") || said.contains("unsupported"),
        "{said}"
    );
}

#[test]
fn ctr_pulls_with_ns_from_hosts_toml() {
    if !in_fresh_netns() {
        return;
    }
    // No default upstream: only `?ns=docker.io` can send this request upstream.
    let s = Setup::start(|c| c.replace("default_upstream = \"docker.io\"\n", ""));
    let containerd = Containerd::start();
    let hosts = containerd.write_mirror_hosts_dir("docker.io", &s.server.base_url());
    let reference = "docker.io/library/busybox:1.36";
    let mut pull = containerd.ctr(&["images", "pull", "--hosts-dir"]);
    pull.arg(&hosts).arg(reference);
    run_ok(&mut pull, CLIENT_TIMEOUT);
    assert_eq!(
        containerd.image_digest(reference).as_deref(),
        Some(s.image.manifest_digest.as_str())
    );
    let content = containerd.content_digests();
    for digest in s.image.blob_digests() {
        assert!(content.contains(&digest), "{digest} missing: {content:?}");
    }
    s.assert_each_blob_fetched(1);
}
