//! Sanity tests for the netns and daemon harness (tests/common/{netns,daemons}.rs):
//! a child dockerd and a child containerd pull from a plain portcullis server, each
//! test inside a fresh network namespace that has only loopback.

// Each test file uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::daemons::{Containerd, Dockerd, DockerdOptions};
use common::netns::in_fresh_netns;
use common::{run_ok, ContainersEnv, ImageFixture, Server};

/// Upper bound for one skopeo push.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one `docker pull` / `ctr images pull` of the small fixture image.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for a connect that must fail at once (else it fails with a timeout error).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for `ip link show`.
const IP_TIMEOUT: Duration = Duration::from_secs(20);
/// Where the fixture image is pushed.
const REPOSITORY: &str = "team/app";

/// A fresh server holding the small fixture image as `REPOSITORY:tag` (pushed with skopeo).
fn server_with_small_image(tag: &str) -> (Server, ImageFixture) {
    let server = Server::start();
    let image = ImageFixture::small(tag);
    let source = format!("oci:{}:{tag}", image.layout.display());
    let destination = format!("docker://{}/{REPOSITORY}:{tag}", server.host_port());
    run_ok(
        &mut ContainersEnv::new().skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &source,
            &destination,
        ]),
        SKOPEO_TIMEOUT,
    );
    (server, image)
}

/// What `docker image inspect` must show for the fixture image pulled as `repository`.
fn assert_docker_image(dockerd: &Dockerd, reference: &str, repository: &str, image: &ImageFixture) {
    let inspected = dockerd.inspect_image(reference);
    // dockerd's image ID is the config digest.
    assert_eq!(inspected["Id"], image.config_digest.as_str(), "image ID");
    let repo_digest = format!("{repository}@{}", image.manifest_digest);
    assert!(
        inspected["RepoDigests"]
            .as_array()
            .expect("RepoDigests")
            .iter()
            .any(|d| d == repo_digest.as_str()),
        "RepoDigests should hold {repo_digest}: {inspected:#}"
    );
    assert_eq!(
        inspected["RootFS"]["Layers"],
        serde_json::json!(image.diff_ids),
        "layers (diff IDs)"
    );
}

/// What containerd must hold after pulling the fixture image as `reference`.
fn assert_containerd_image(containerd: &Containerd, reference: &str, image: &ImageFixture) {
    assert_eq!(
        containerd.image_digest(reference).as_deref(),
        Some(image.manifest_digest.as_str()),
        "manifest digest of {reference} in `ctr images ls`"
    );
    let content = containerd.content_digests();
    for digest in image.blob_digests() {
        assert!(
            content.contains(&digest),
            "{digest} missing from containerd's content store: {content:?}"
        );
    }
}

#[test]
fn docker_pulls_by_registry_host_and_port() {
    if !in_fresh_netns() {
        return;
    }
    let (server, image) = server_with_small_image("v1");
    let dockerd = Dockerd::start(DockerdOptions::default());
    let reference = format!("{}/{REPOSITORY}:v1", server.host_port());
    run_ok(&mut dockerd.docker(&["pull", &reference]), PULL_TIMEOUT);
    let repository = format!("{}/{REPOSITORY}", server.host_port());
    assert_docker_image(&dockerd, &reference, &repository, &image);
}

#[test]
fn docker_pulls_hub_name_through_registry_mirror() {
    if !in_fresh_netns() {
        return;
    }
    let (server, image) = server_with_small_image("v2");
    let dockerd = Dockerd::start(DockerdOptions {
        registry_mirrors: vec![server.base_url()],
        ..Default::default()
    });
    // A Docker Hub name: only the mirror can serve it (the Hub is unreachable here).
    let reference = format!("{REPOSITORY}:v2");
    run_ok(&mut dockerd.docker(&["pull", &reference]), PULL_TIMEOUT);
    assert_docker_image(&dockerd, &reference, REPOSITORY, &image);
}

#[test]
fn ctr_pulls_with_plain_http() {
    if !in_fresh_netns() {
        return;
    }
    let (server, image) = server_with_small_image("v3");
    let containerd = Containerd::start();
    let reference = format!("{}/{REPOSITORY}:v3", server.host_port());
    run_ok(
        &mut containerd.ctr(&["images", "pull", "--plain-http", &reference]),
        PULL_TIMEOUT,
    );
    assert_containerd_image(&containerd, &reference, &image);
}

#[test]
fn ctr_pulls_hub_name_through_hosts_toml_mirror() {
    if !in_fresh_netns() {
        return;
    }
    let (server, image) = server_with_small_image("v4");
    let containerd = Containerd::start();
    let hosts_dir = containerd.write_mirror_hosts_dir("docker.io", &server.base_url());
    let reference = format!("docker.io/{REPOSITORY}:v4");
    let mut command = containerd.ctr(&["images", "pull", "--hosts-dir"]);
    command.arg(&hosts_dir).arg(&reference);
    run_ok(&mut command, PULL_TIMEOUT);
    assert_containerd_image(&containerd, &reference, &image);
}

#[test]
fn fresh_netns_has_only_loopback() {
    if !in_fresh_netns() {
        return;
    }
    let links = run_ok(Command::new("ip").args(["-o", "link", "show"]), IP_TIMEOUT).stdout_str();
    let names: Vec<&str> = links
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .collect();
    assert_eq!(names, ["lo"], "links in the namespace:\n{links}");

    // Loopback works...
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    TcpStream::connect_timeout(&listener.local_addr().unwrap(), CONNECT_TIMEOUT)
        .expect("connect over loopback");

    // ...and anything else has no route: the connect fails at once, it does not time out.
    for address in ["192.0.2.1:443", "[2001:db8::1]:443"] {
        let address: SocketAddr = address.parse().unwrap();
        let error = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
            .expect_err("connect to a non-loopback address must fail");
        assert_eq!(
            error.kind(),
            ErrorKind::NetworkUnreachable,
            "connect to {address}: {error}"
        );
    }
}
