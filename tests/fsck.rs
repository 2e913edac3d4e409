//! `portcullis fsck` on real stores: images pushed with skopeo, the server stopped,
//! then damage done on disk the way crashes and failing disks do it.

#[allow(dead_code)]
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    hex_part, portcullis, run_ok, run_with_timeout, sha256_digest, skopeo_push, CmdOutput,
    ContainersEnv, ImageFixture, Server,
};

const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
const FSCK_TIMEOUT: Duration = Duration::from_secs(60);
const CURL_TIMEOUT: Duration = Duration::from_secs(30);

/// `curl` with the HTTP status as the last line of stdout.
fn curl(server: &Server, method: &str, path: &str, args: &[&str]) -> String {
    let url = format!("{}{path}", server.base_url());
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .args(args)
        .arg(&url);
    common::remove_proxy_env(&mut cmd);
    run_ok(&mut cmd, CURL_TIMEOUT).stdout_str()
}

fn fsck(data: &Path, repair: bool) -> CmdOutput {
    let mut cmd = portcullis();
    cmd.arg("fsck").arg("--data").arg(data);
    if repair {
        cmd.arg("--repair");
    }
    run_with_timeout(&mut cmd, FSCK_TIMEOUT)
}

fn assert_exit(out: &CmdOutput, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status\nstdout:\n{}\nstderr:\n{}",
        out.stdout_str(),
        out.stderr
    );
}

/// The report's lines that mention `needle`.
fn lines_with<'a>(report: &'a str, needle: &str) -> Vec<&'a str> {
    report.lines().filter(|l| l.contains(needle)).collect()
}

fn blob_file(data: &Path, digest: &str) -> std::path::PathBuf {
    let hex = hex_part(digest);
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

#[test]
fn fsck_reports_repairs_what_it_can_and_the_server_serves_the_result() {
    let data = tempfile::tempdir().expect("data dir");
    let data = data.path();
    let env = ContainersEnv::new();
    let damaged_layer = ImageFixture::build("1", &[8 * 1024, 4 * 1024]);
    let lost_manifest = ImageFixture::build("1", &[4 * 1024]);
    let intact = ImageFixture::build("1", &[6 * 1024]);
    let loose = b"a blob pushed on its own".to_vec();
    let loose_digest = sha256_digest(&loose);
    {
        let server = Server::start_with_data(data);
        skopeo_push(&env, &damaged_layer, &server, "team/a:1");
        skopeo_push(&env, &lost_manifest, &server, "team/b:1");
        skopeo_push(&env, &intact, &server, "team/d:1");
        let path = format!("/v2/team/c/blobs/uploads/?digest={loose_digest}");
        let body = String::from_utf8(loose.clone()).unwrap();
        let status = curl(&server, "POST", &path, &["--data-binary", &body]);
        assert_eq!(status, "201", "monolithic blob upload");
    }

    let clean = fsck(data, false);
    assert_exit(&clean, 0, "fsck of a healthy store");
    let report = clean.stdout_str();
    assert!(report.contains("no problems"), "{report}");
    assert!(report.contains("3 manifests, 3 tags checked"), "{report}");

    // The damage.
    let layer = &damaged_layer.layer_digests[0];
    let mut bytes = fs::read(blob_file(data, layer)).unwrap();
    bytes[100] ^= 0x01;
    fs::write(blob_file(data, layer), &bytes).unwrap();
    fs::remove_file(blob_file(data, &lost_manifest.manifest_digest)).unwrap();
    fs::remove_file(blob_file(data, &loose_digest)).unwrap();
    fs::write(data.join("tmp/half-written"), b"partial").unwrap();
    fs::create_dir(data.join("uploads/not-a-session")).unwrap();

    let found = fsck(data, false);
    assert_exit(&found, 1, "fsck of a damaged store");
    let report = found.stdout_str();
    for (needle, what) in [
        (
            format!("blob {layer} ("),
            "its content hashes to".to_string(),
        ),
        (format!("link team/a -> {layer}"), "corrupt".into()),
        (
            format!("manifest team/a@{}", damaged_layer.manifest_digest),
            format!("references blob {layer}"),
        ),
        (
            format!("manifest team/b@{}", lost_manifest.manifest_digest),
            "its bytes are missing".into(),
        ),
        (format!("link team/c -> {loose_digest}"), "missing".into()),
        ("tmp/half-written".into(), "--repair deletes it".into()),
        (
            "uploads/not-a-session".into(),
            "not an upload session".into(),
        ),
    ] {
        let lines = lines_with(&report, &needle);
        assert!(
            lines.len() == 1 && lines[0].contains(&what),
            "one line naming {needle:?} with {what:?} expected:\n{report}"
        );
    }
    assert!(report.contains("7 problems"), "{report}");
    // Checking changes nothing.
    assert!(data.join("tmp/half-written").exists());
    assert!(blob_file(data, layer).exists());

    let repaired = fsck(data, true);
    assert_exit(&repaired, 1, "fsck --repair with unrepairable problems");
    let report = repaired.stdout_str();
    assert!(
        report.contains("7 problems, 5 repaired, 2 remain"),
        "{report}"
    );
    let remaining: Vec<_> = report
        .lines()
        .filter(|l| l.contains("not repaired:") && !l.starts_with("repaired:"))
        .collect();
    assert_eq!(remaining.len(), 2, "{report}");
    assert!(remaining.iter().any(|l| l.contains("team/a@")));
    assert!(remaining.iter().any(|l| l.contains("team/b@")));
    let kept = data.join("lost+found").join(
        blob_file(data, layer)
            .strip_prefix(data)
            .expect("blob path inside the data directory"),
    );
    assert_eq!(fs::read(&kept).expect("corrupt blob in lost+found"), bytes);
    assert!(!blob_file(data, layer).exists());
    assert!(!data.join("tmp/half-written").exists());
    assert!(!data.join("uploads/not-a-session").exists());

    let again = fsck(data, false);
    assert_exit(&again, 1, "fsck after the repair");
    assert!(
        again.stdout_str().contains("2 problems"),
        "{}",
        again.stdout_str()
    );

    {
        let server = Server::start_with_data(data);
        for (repo, img) in [("team/a", &damaged_layer), ("team/b", &lost_manifest)] {
            let path = format!("/v2/{repo}/manifests/{}", img.manifest_digest);
            assert_eq!(curl(&server, "DELETE", &path, &[]), "202", "DELETE {path}");
        }
    }
    let fixed = fsck(data, false);
    assert_exit(&fixed, 0, "fsck after deleting the broken manifests");

    let server = Server::start_with_data(data);
    let out = tempfile::tempdir().expect("tempdir");
    let dest = format!("oci:{}:1", out.path().join("layout").display());
    let src = format!("docker://{}/team/d:1", server.host_port());
    run_ok(
        &mut env.skopeo(&["copy", "--src-tls-verify=false", &src, &dest]),
        SKOPEO_TIMEOUT,
    );
    let pulled = out
        .path()
        .join("layout/blobs/sha256")
        .join(hex_part(&intact.manifest_digest));
    assert_eq!(fs::read(pulled).expect("pulled manifest"), intact.manifest);
}

#[test]
fn fsck_refuses_a_store_the_server_has_open() {
    let server = Server::start();
    let out = fsck(server.data_dir(), false);
    assert_exit(&out, 2, "fsck beside a running server");
    assert!(
        out.stderr.contains("stop the server first"),
        "{}",
        out.stderr
    );
}

#[test]
fn fsck_of_a_directory_without_a_store_is_a_usage_error() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = fsck(empty.path(), false);
    assert_exit(&out, 2, "fsck of an empty directory");
    assert!(out.stderr.contains("holds no store"), "{}", out.stderr);
    assert!(!empty.path().join("meta.redb").exists());
}
