//! Edge-security integration tests: TLS with real clients, basic authentication and
//! access rules, the failed-login limit, SIGHUP reloads of certificates and users, h2,
//! mTLS, answers to the wrong protocol, read-only mode and size limits, and
//! `portcullis check`.
//!
//! Every test starts its own server from a configuration file
//! ([`Server::start_with_config`]) in its own temporary directory, on 127.0.0.1, with
//! certificates made by `portcullis certs --name localhost --ip 127.0.0.1`. Every
//! wait is bounded; nothing sleeps longer than 100 ms at a time.

#[allow(dead_code)]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    assert_podman_usable, hex_part, htpasswd_add, podman_inspect, podman_pull_checked, portcullis,
    pseudo_random, raw_exchange, raw_header, remove_proxy_env, run_ok, run_with_timeout,
    sha256_digest, CmdOutput, ContainersEnv, ImageFixture, Server, OCI_CONFIG_TYPE,
    OCI_LAYER_GZIP_TYPE, OCI_MANIFEST_TYPE, PLAIN_PORT,
};
use reqwest::{Certificate, Client, Identity, StatusCode, Version};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Upper bound for one HTTP request made by the tests (whole response included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for establishing a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one skopeo invocation.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one podman invocation.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound for a short command (portcullis certs/htpasswd/check, curl).
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reload (SIGHUP) may take to show.
const RELOAD_BUDGET: Duration = Duration::from_secs(15);
/// Pause between polls.
const POLL: Duration = Duration::from_millis(50);

const ALICE_PW: &str = "alice-secret";
const BOB_PW: &str = "bob-secret";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A test's directory: certificates, htpasswd, config and data all live in it.
struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-edge-")
            .tempdir()
            .expect("create work dir");
        Workdir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `portcullis certs --out DIR/<sub> --name localhost --ip 127.0.0.1 [--client NAME]`.
    fn certs(&self, sub: &str, client: Option<&str>) -> PathBuf {
        let out = self.join(sub);
        make_certs(&out, client);
        out
    }

    /// Adds a user to `DIR/htpasswd` (bcrypt cost 4) and returns the file's path.
    fn add_user(&self, user: &str, password: &str) -> PathBuf {
        let file = self.join("htpasswd");
        htpasswd_add(&file, user, password);
        file
    }
}

/// A server with both a plain-HTTP and a TLS listener (certificates in `certs/`),
/// without authentication.
const PLAIN_AND_TLS_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
tls_listen = "127.0.0.1:{TLS_PORT}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
"#;

/// Makes certificates in `certs/`, adds user alice and starts a TLS-only server
/// that requires basic authentication.  Returns the server and the certificate
/// directory.
fn start_tls_server_with_alice(work: &Workdir) -> (Server, PathBuf) {
    let certs = work.certs("certs", None);
    work.add_user("alice", ALICE_PW);
    let server = Server::start_with_config(
        r#"
[server]
tls_listen = "127.0.0.1:{TLS_PORT}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
[auth]
htpasswd = "htpasswd"
"#,
        work.path(),
    );
    (server, certs)
}

/// Starts a server with only a plain-HTTP listener and no authentication;
/// `extra` is appended to the configuration file (e.g. a `[limits]` table).
fn start_plain_server(work: &Workdir, extra: &str) -> Server {
    let config = format!("\n[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n{extra}");
    Server::start_with_config(&config, work.path())
}

fn make_certs(out: &Path, client: Option<&str>) {
    let mut cmd = portcullis();
    cmd.args(["certs", "--out"])
        .arg(out)
        .args(["--name", "localhost", "--ip", "127.0.0.1"]);
    if let Some(client) = client {
        cmd.args(["--client", client]);
    }
    run_ok(&mut cmd, TOOL_TIMEOUT);
    for file in ["ca.crt", "server.crt", "server.key"] {
        assert!(
            out.join(file).is_file(),
            "portcullis certs did not write {file}"
        );
    }
}

/// A directory holding only `ca.crt`: what `--cert-dir` of skopeo/podman wants
/// (containers/image refuses a `*.key` without a matching `*.cert`).
fn cert_dir_with(ca: &Path, parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).expect("create cert dir");
    fs::copy(ca, dir.join("ca.crt")).expect("copy ca.crt");
    dir
}

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

fn ca_cert(ca: &Path) -> Certificate {
    let pem = fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
    Certificate::from_pem(&pem).expect("CA certificate PEM")
}

/// A client that trusts exactly one CA (no system roots).
fn tls_client(ca: &Path) -> Client {
    client_builder()
        .tls_certs_only([ca_cert(ca)])
        .build()
        .expect("build TLS client")
}

/// A client that trusts exactly one CA and presents a client certificate.
fn mtls_client(ca: &Path, cert: &Path, key: &Path) -> Client {
    let mut pem = fs::read(cert).expect("read client certificate");
    pem.push(b'\n');
    pem.extend(fs::read(key).expect("read client key"));
    client_builder()
        .tls_certs_only([ca_cert(ca)])
        .identity(Identity::from_pem(&pem).expect("client identity PEM"))
        .build()
        .expect("build mTLS client")
}

fn plain_client() -> Client {
    client_builder().build().expect("build HTTP client")
}

/// What the tests look at in an answer.
struct Answer {
    status: StatusCode,
    version: Version,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is ASCII").to_string())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `errors[0].code` of an OCI error body.
    fn oci_code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not an OCI error ({e}): {}",
                self.status,
                self.text()
            )
        });
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no errors[0].code in {v}", self.status))
            .to_string()
    }

    fn describe(&self) -> String {
        format!(
            "{} {:?} {:?}\n{}",
            self.status,
            self.version,
            self.headers,
            self.text()
        )
    }
}

/// Sends a request and reads the whole answer; a transport error fails the test.
async fn send(rb: reqwest::RequestBuilder) -> Answer {
    let (client, req) = rb.build_split();
    let req = req.expect("request builds");
    let what = format!("{} {}", req.method(), req.url());
    let resp = client
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: transport error: {e:?}"));
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e:?}"))
        .to_vec();
    Answer {
        status,
        version,
        headers,
        body,
    }
}

/// Asserts an OCI error answer: status, code and (for 401) the Basic challenge.
fn assert_oci_error(answer: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(
        answer.status.as_u16(),
        status,
        "{what}: {}",
        answer.describe()
    );
    assert_eq!(answer.oci_code(), code, "{what}: {}", answer.describe());
    if status == 401 {
        assert_eq!(
            answer.header("www-authenticate").as_deref(),
            Some(r#"Basic realm="portcullis""#),
            "{what}: 401 must challenge for Basic auth: {}",
            answer.describe()
        );
    }
}

/// Monolithic upload `POST /v2/<repo>/blobs/uploads/?digest=`; returns the answer.
async fn post_blob(
    client: &Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    creds: Option<(&str, &str)>,
) -> Answer {
    let digest = sha256_digest(bytes);
    let mut rb = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec());
    if let Some((user, password)) = creds {
        rb = rb.basic_auth(user, Some(password));
    }
    send(rb).await
}

/// Monolithic upload that must succeed (201); returns the digest.
async fn push_blob(
    client: &Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    creds: Option<(&str, &str)>,
) -> String {
    let answer = post_blob(client, base, repo, bytes, creds).await;
    assert_eq!(
        answer.status,
        201,
        "monolithic upload to {repo}: {}",
        answer.describe()
    );
    let digest = sha256_digest(bytes);
    assert_eq!(
        answer.header("docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    digest
}

/// An OCI image manifest over a config and one layer, padded by an annotation.
fn image_manifest(config: &[u8], layer: &[u8], padding: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_TYPE,
        "config": { "mediaType": OCI_CONFIG_TYPE, "digest": sha256_digest(config), "size": config.len() },
        "layers": [{ "mediaType": OCI_LAYER_GZIP_TYPE, "digest": sha256_digest(layer), "size": layer.len() }],
        "annotations": { "org.example.padding": "p".repeat(padding) },
    }))
    .expect("serialize manifest")
}

/// Pushes a config, a layer and a manifest tagged `tag`; returns the manifest bytes.
async fn push_image(
    client: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    creds: Option<(&str, &str)>,
) -> Vec<u8> {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "nonce": uuid::Uuid::new_v4().to_string(),
    }))
    .unwrap();
    let layer = pseudo_random(10_000, 7);
    push_blob(client, base, repo, &config, creds).await;
    push_blob(client, base, repo, &layer, creds).await;
    let manifest = image_manifest(&config, &layer, 0);
    let mut rb = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST_TYPE)
        .body(manifest.clone());
    if let Some((user, password)) = creds {
        rb = rb.basic_auth(user, Some(password));
    }
    let answer = send(rb).await;
    assert_eq!(
        answer.status,
        201,
        "PUT manifest {repo}:{tag}: {}",
        answer.describe()
    );
    manifest
}

/// Polls `check` every [`POLL`] until it returns `Some`, for at most `budget`.
async fn eventually<T, F, Fut>(what: &str, budget: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + budget;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not true within {budget:?}; last outcome: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits until the server log mentions `needle` (e.g. the outcome of a SIGHUP).
fn wait_for_log(server: &Server, needle: &str, budget: Duration) {
    let deadline = Instant::now() + budget;
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the server log did not mention {needle:?} within {budget:?}:\n{}",
            server.log()
        );
        std::thread::sleep(POLL);
    }
}

fn curl(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "20"])
        .args(args);
    remove_proxy_env(&mut cmd);
    run_with_timeout(&mut cmd, TOOL_TIMEOUT)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Asserts that the OCI layout at `out` holds the fixture image under `tag`, every
/// blob byte for byte.
fn assert_layout_is_fixture(img: &ImageFixture, out: &Path, tag: &str) {
    let index: Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    let entry = index["manifests"]
        .as_array()
        .expect("index.manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}"))
        .clone();
    assert_eq!(
        entry["digest"],
        img.manifest_digest.as_str(),
        "pulled manifest digest"
    );
    let blobs = out.join("blobs").join("sha256");
    let mut pulled: Vec<String> = fs::read_dir(&blobs)
        .expect("read pulled blobs")
        .map(|e| {
            format!(
                "sha256:{}",
                e.expect("dir entry").file_name().to_string_lossy()
            )
        })
        .collect();
    pulled.sort();
    let mut expected = img.blob_digests();
    expected.sort();
    assert_eq!(pulled, expected, "blobs in the pulled layout");
    for digest in &expected {
        let got = fs::read(blobs.join(hex_part(digest))).expect("read pulled blob");
        assert!(
            got == img.blob(digest),
            "pulled blob {digest} differs from the pushed one"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. Real clients over TLS with credentials
// ---------------------------------------------------------------------------

#[test]
fn skopeo_and_podman_push_and_pull_over_tls_with_credentials() {
    let work = Workdir::new();
    let (server, certs) = start_tls_server_with_alice(&work);
    let env = ContainersEnv::new();
    let cert_dir = cert_dir_with(&certs.join("ca.crt"), work.path(), "client-certs");
    let cert_dir = path_str(&cert_dir);
    let creds = format!("alice:{ALICE_PW}");
    let img = ImageFixture::small("1.0");
    let remote = format!("docker://{}/team/app:1.0", server.tls_host_port());

    // Push over TLS, verifying the server against the generated CA.
    let src = format!("oci:{}:{}", img.layout.display(), img.tag);
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-cert-dir",
            cert_dir,
            "--dest-creds",
            &creds,
            &src,
            &remote,
        ]),
        SKOPEO_TIMEOUT,
    );

    // The manifest comes back byte for byte.
    let raw = run_ok(
        &mut env.skopeo(&[
            "inspect",
            "--raw",
            "--cert-dir",
            cert_dir,
            "--creds",
            &creds,
            &remote,
        ]),
        SKOPEO_TIMEOUT,
    )
    .stdout;
    assert!(
        raw == img.manifest,
        "manifest served over TLS differs from the pushed one"
    );

    // Without the CA the certificate is refused; without credentials the registry is.
    let untrusted = run_with_timeout(
        &mut env.skopeo(&["inspect", "--raw", "--creds", &creds, &remote]),
        SKOPEO_TIMEOUT,
    );
    assert!(
        !untrusted.status.success(),
        "skopeo trusted a certificate of an unknown CA"
    );
    assert!(
        untrusted.stderr.contains("certificate"),
        "expected a certificate error, got: {}",
        untrusted.stderr
    );
    let anonymous = run_with_timeout(
        &mut env.skopeo(&["inspect", "--raw", "--cert-dir", cert_dir, &remote]),
        SKOPEO_TIMEOUT,
    );
    assert!(
        !anonymous.status.success(),
        "anonymous skopeo inspect of a protected repository succeeded"
    );
    assert!(
        anonymous.stderr.to_lowercase().contains("unauthorized")
            || anonymous.stderr.contains("401"),
        "expected an authentication error, got: {}",
        anonymous.stderr
    );

    // Pull back into a fresh layout: byte-identical.
    let out = work.join("pulled");
    let dest = format!("oci:{}:1.0", out.display());
    run_ok(
        &mut env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-cert-dir",
            cert_dir,
            "--src-creds",
            &creds,
            &remote,
            &dest,
        ]),
        SKOPEO_TIMEOUT,
    );
    assert_layout_is_fixture(&img, &out, "1.0");

    // podman pulls over TLS with --cert-dir and --creds.
    assert_podman_usable(&env, PODMAN_TIMEOUT);
    let reference = format!("{}/team/app:1.0", server.tls_host_port());
    podman_pull_checked(
        &env,
        &server,
        &["--cert-dir", cert_dir, "--creds", &creds],
        &reference,
        &img.config_digest,
        PODMAN_TIMEOUT,
    );
    let images = podman_inspect(&env, &reference, PODMAN_TIMEOUT);
    assert_eq!(
        images[0]["Digest"],
        img.manifest_digest.as_str(),
        "podman image Digest"
    );
    assert_eq!(
        images[0]["RootFS"]["Layers"],
        json!(img.diff_ids),
        "unpacked layer diff IDs"
    );
}

// ---------------------------------------------------------------------------
// 2. Authentication and access rules
// ---------------------------------------------------------------------------

#[tokio::test]
async fn auth_challenges_denials_and_anonymous_rules() {
    let work = Workdir::new();
    work.add_user("alice", ALICE_PW);
    work.add_user("bob", BOB_PW);
    let server = Server::start_with_config(
        r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
[auth]
htpasswd = "htpasswd"
max_failures = 100

[[access]]
repositories = "public/*"
pull = ["anonymous"]
push = ["alice"]

[[access]]
repositories = "team/*"
pull = ["*"]
push = ["alice"]
"#,
        work.path(),
    );
    let http = plain_client();
    let base = server.base_url();
    let alice = Some(("alice", ALICE_PW));
    let blob = pseudo_random(4096, 1);
    let public_digest = push_blob(&http, &base, "public/app", &blob, alice).await;
    let team_digest = push_blob(&http, &base, "team/app", &blob, alice).await;
    assert_eq!(public_digest, team_digest);
    let digest = public_digest;

    // The right password works.
    let ok = send(
        http.get(format!("{base}/v2/"))
            .basic_auth("alice", Some(ALICE_PW)),
    )
    .await;
    assert_eq!(ok.status, 200, "GET /v2/ as alice: {}", ok.describe());

    // Wrong password and unknown user: 401 UNAUTHORIZED with the challenge, and the
    // two are indistinguishable (status, challenge and body).
    for path in ["/v2/".to_string(), format!("/v2/team/app/blobs/{digest}")] {
        let wrong_password = send(
            http.get(format!("{base}{path}"))
                .basic_auth("alice", Some("not-her-password")),
        )
        .await;
        assert_oci_error(
            &wrong_password,
            401,
            "UNAUTHORIZED",
            &format!("GET {path} with a wrong password"),
        );
        let wrong_user = send(
            http.get(format!("{base}{path}"))
                .basic_auth("mallory", Some("not-her-password")),
        )
        .await;
        assert_oci_error(
            &wrong_user,
            401,
            "UNAUTHORIZED",
            &format!("GET {path} as an unknown user"),
        );
        assert_eq!(
            wrong_password.body,
            wrong_user.body,
            "GET {path}: wrong user and wrong password must give the same body:\n{}\n{}",
            wrong_password.text(),
            wrong_user.text()
        );
        assert_eq!(
            wrong_password.header("www-authenticate"),
            wrong_user.header("www-authenticate")
        );
        assert_eq!(
            wrong_password.header("content-type"),
            wrong_user.header("content-type")
        );
    }

    // A malformed Authorization header is also just a 401.
    let garbage = send(
        http.get(format!("{base}/v2/"))
            .header("authorization", "Basic !!!"),
    )
    .await;
    assert_oci_error(
        &garbage,
        401,
        "UNAUTHORIZED",
        "GET /v2/ with a malformed Authorization header",
    );

    // Missing credentials: /v2/ and a protected repository challenge (clients learn
    // from /v2/ whether to log in at all). containers/image's empty login
    // (`Basic Og==`) is no login: it pulls what anonymous callers may.
    let anon_base = send(http.get(format!("{base}/v2/"))).await;
    assert_oci_error(&anon_base, 401, "UNAUTHORIZED", "anonymous GET /v2/");
    let empty_login = send(
        http.get(format!("{base}/v2/public/app/blobs/{digest}"))
            .header("authorization", "Basic Og=="),
    )
    .await;
    assert_eq!(empty_login.status, 200, "{}", empty_login.describe());
    let anon_team = send(http.get(format!("{base}/v2/team/app/blobs/{digest}"))).await;
    assert_oci_error(
        &anon_team,
        401,
        "UNAUTHORIZED",
        "anonymous GET of a blob in team/app",
    );
    let anon_tags = send(http.get(format!("{base}/v2/team/app/tags/list"))).await;
    assert_oci_error(
        &anon_tags,
        401,
        "UNAUTHORIZED",
        "anonymous GET team/app tags",
    );
    // A repository no rule matches: no access for anyone.
    let anon_other = send(http.get(format!("{base}/v2/other/app/blobs/{digest}"))).await;
    assert_oci_error(
        &anon_other,
        401,
        "UNAUTHORIZED",
        "anonymous GET in a repository no rule names",
    );
    let alice_other = send(
        http.get(format!("{base}/v2/other/app/blobs/{digest}"))
            .basic_auth("alice", Some(ALICE_PW)),
    )
    .await;
    assert_oci_error(
        &alice_other,
        403,
        "DENIED",
        "alice in a repository no rule names",
    );

    // Anonymous pull where the rule says pull = ["anonymous"].
    let anon_public = send(http.get(format!("{base}/v2/public/app/blobs/{digest}"))).await;
    assert_eq!(
        anon_public.status,
        200,
        "anonymous pull of public/app: {}",
        anon_public.describe()
    );
    assert!(
        anon_public.body == blob,
        "anonymous pull returned other bytes"
    );
    let anon_head = send(http.head(format!("{base}/v2/public/app/blobs/{digest}"))).await;
    assert_eq!(anon_head.status, 200, "anonymous HEAD in public/app");
    // ... but not push there: anonymous callers are asked to log in.
    let anon_push = send(http.post(format!("{base}/v2/public/app/blobs/uploads/"))).await;
    assert_oci_error(
        &anon_push,
        401,
        "UNAUTHORIZED",
        "anonymous POST upload to public/app",
    );

    // bob may pull team/app (pull = ["*"]) but not push: 403 DENIED.
    let bob_pull = send(
        http.get(format!("{base}/v2/team/app/blobs/{digest}"))
            .basic_auth("bob", Some(BOB_PW)),
    )
    .await;
    assert_eq!(
        bob_pull.status,
        200,
        "bob pulls team/app: {}",
        bob_pull.describe()
    );
    let bob_push = send(
        http.post(format!("{base}/v2/team/app/blobs/uploads/"))
            .basic_auth("bob", Some(BOB_PW)),
    )
    .await;
    assert_oci_error(&bob_push, 403, "DENIED", "bob POSTs an upload to team/app");
    let bob_mono = post_blob(
        &http,
        &base,
        "team/app",
        &pseudo_random(1000, 2),
        Some(("bob", BOB_PW)),
    )
    .await;
    assert_oci_error(
        &bob_mono,
        403,
        "DENIED",
        "bob's monolithic upload to team/app",
    );
    let bob_public = post_blob(
        &http,
        &base,
        "public/app",
        &pseudo_random(1000, 3),
        Some(("bob", BOB_PW)),
    )
    .await;
    assert_oci_error(&bob_public, 403, "DENIED", "bob's upload to public/app");
    let refused = sha256_digest(&pseudo_random(1000, 2));
    let head = send(
        http.head(format!("{base}/v2/team/app/blobs/{refused}"))
            .basic_auth("alice", Some(ALICE_PW)),
    )
    .await;
    assert_eq!(head.status, 404, "a refused upload must store nothing");

    // alice may push (a session start is 202).
    let alice_push = send(
        http.post(format!("{base}/v2/team/app/blobs/uploads/"))
            .basic_auth("alice", Some(ALICE_PW)),
    )
    .await;
    assert_eq!(
        alice_push.status,
        202,
        "alice starts an upload: {}",
        alice_push.describe()
    );
}

// ---------------------------------------------------------------------------
// 3. Failed-login limit
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failed_logins_are_limited_with_429_and_retry_after() {
    let work = Workdir::new();
    work.add_user("alice", ALICE_PW);
    work.add_user("bob", BOB_PW);
    let server = Server::start_with_config(
        r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
[auth]
htpasswd = "htpasswd"
max_failures = 3
failure_window_secs = 60
"#,
        work.path(),
    );
    let http = plain_client();
    let url = format!("{}/v2/", server.base_url());

    for attempt in 1..=3 {
        let answer = send(http.get(&url).basic_auth("alice", Some("guess"))).await;
        assert_oci_error(
            &answer,
            401,
            "UNAUTHORIZED",
            &format!("failed login {attempt} of 3"),
        );
    }
    let fourth = send(http.get(&url).basic_auth("alice", Some("guess"))).await;
    assert_oci_error(&fourth, 429, "TOOMANYREQUESTS", "4th failed login");
    let retry_after = fourth
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", fourth.describe()));
    let secs: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not seconds"));
    assert!(
        secs > 0 && secs <= 60,
        "Retry-After {secs} should be within the 60 s window"
    );

    // While limited, even the right password is refused ...
    let right = send(http.get(&url).basic_auth("alice", Some(ALICE_PW))).await;
    assert_oci_error(
        &right,
        429,
        "TOOMANYREQUESTS",
        "alice's right password while limited",
    );
    assert!(
        right.header("retry-after").is_some(),
        "429 without Retry-After"
    );
    // ... and so is another user from the same client address.
    let bob = send(http.get(&url).basic_auth("bob", Some(BOB_PW))).await;
    assert_oci_error(
        &bob,
        429,
        "TOOMANYREQUESTS",
        "bob's right password from the same address",
    );
}

// ---------------------------------------------------------------------------
// 4. SIGHUP certificate reload during a download
// ---------------------------------------------------------------------------

/// Outcome of `GET /v2/` over a fresh connection trusting only `ca`.
async fn get_v2_trusting(ca: &Path, server: &Server) -> Result<StatusCode, String> {
    match tls_client(ca)
        .get(format!("{}/v2/", server.tls_url()))
        .send()
        .await
    {
        Ok(resp) => Ok(resp.status()),
        Err(e) => Err(format!("{e:?}")),
    }
}

#[tokio::test]
async fn sighup_swaps_certificates_while_a_download_runs() {
    const BIG: usize = 64 << 20;
    let work = Workdir::new();
    let certs = work.certs("certs", None);
    let old_ca = work.join("old-ca.crt");
    fs::copy(certs.join("ca.crt"), &old_ca).expect("keep the old CA");
    let server = Server::start_with_config(PLAIN_AND_TLS_CONFIG, work.path());

    let blob = pseudo_random(BIG, 64);
    let digest = push_blob(&plain_client(), &server.base_url(), "big/blob", &blob, None).await;
    drop(blob);

    // A slow download over TLS (HTTP/1.1, its own connection): a few chunks with pauses.
    let downloader = client_builder()
        .tls_certs_only([ca_cert(&old_ca)])
        .http1_only()
        .timeout(Duration::from_secs(180))
        .build()
        .expect("download client");
    let mut resp = downloader
        .get(format!("{}/v2/big/blob/blobs/{digest}", server.tls_url()))
        .send()
        .await
        .expect("start the download");
    assert_eq!(resp.status(), 200, "GET of the big blob over TLS");
    assert_eq!(resp.content_length(), Some(BIG as u64));
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut reads = 0;
    while received < (1 << 20) {
        let chunk = tokio::time::timeout(HTTP_TIMEOUT, resp.chunk())
            .await
            .expect("a chunk within the timeout")
            .expect("reading the download")
            .expect("download ended early");
        hasher.update(&chunk);
        received += chunk.len();
        reads += 1;
        if reads <= 4 {
            tokio::time::sleep(POLL).await;
        }
    }
    assert!(
        received < BIG,
        "the whole blob arrived before the reload; nothing to test"
    );

    // Before the reload: the old CA is trusted, a new one is not (sanity).
    assert_eq!(get_v2_trusting(&old_ca, &server).await, Ok(StatusCode::OK));
    let new_certs = work.certs("certs-new", None);
    let new_ca = new_certs.join("ca.crt");
    assert_ne!(
        fs::read(&new_ca).unwrap(),
        fs::read(&old_ca).unwrap(),
        "certs made a new CA"
    );
    assert!(
        get_v2_trusting(&new_ca, &server).await.is_err(),
        "a client trusting only the new CA connected before the reload"
    );

    // New server certificate (from the new CA) into the configured paths, then SIGHUP.
    fs::copy(new_certs.join("server.crt"), certs.join("server.crt")).expect("replace server.crt");
    fs::copy(new_certs.join("server.key"), certs.join("server.key")).expect("replace server.key");
    server.sighup();

    let status = eventually(
        "a new connection trusting only the new CA succeeds",
        RELOAD_BUDGET,
        || get_v2_trusting(&new_ca, &server),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let old = get_v2_trusting(&old_ca, &server).await;
    let error =
        old.expect_err("a new connection trusting only the OLD CA succeeded after the reload");
    assert!(
        error.contains("UnknownIssuer") || error.to_lowercase().contains("certificate"),
        "expected a certificate verification error, got: {error}"
    );
    let curl_new = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        path_str(&new_ca),
        &format!("{}/v2/", server.tls_url()),
    ]);
    assert_eq!(
        curl_new.stdout_str(),
        "200",
        "curl trusting the new CA: {}",
        curl_new.stderr
    );
    let curl_old = curl(&[
        "-o",
        "/dev/null",
        "--cacert",
        path_str(&old_ca),
        &format!("{}/v2/", server.tls_url()),
    ]);
    assert_eq!(
        curl_old.status.code(),
        Some(60),
        "curl trusting the old CA must fail verification: {}",
        curl_old.stderr
    );

    // The download that started before the reload completes intact.
    loop {
        let chunk = tokio::time::timeout(HTTP_TIMEOUT, resp.chunk())
            .await
            .expect("a chunk within the timeout")
            .expect("the running download broke after the reload");
        match chunk {
            Some(chunk) => {
                hasher.update(&chunk);
                received += chunk.len();
            }
            None => break,
        }
    }
    assert_eq!(
        received, BIG,
        "bytes of the download that spanned the reload"
    );
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        digest,
        "sha256 of the download"
    );

    // A broken key file at the next SIGHUP: the certificates in force stay.
    fs::write(certs.join("server.key"), "not a key\n").expect("break server.key");
    server.sighup();
    wait_for_log(&server, "certificates not reloaded", RELOAD_BUDGET);
    assert_eq!(
        get_v2_trusting(&new_ca, &server).await,
        Ok(StatusCode::OK),
        "after a failed reload the last good certificate must still be served"
    );
}

// ---------------------------------------------------------------------------
// 5. SIGHUP htpasswd reload
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sighup_reloads_the_htpasswd_file() {
    let work = Workdir::new();
    let htpasswd = work.add_user("alice", ALICE_PW);
    work.add_user("bob", BOB_PW);
    // Polling logins count as failures until the reload lands: keep the limit high.
    let server = Server::start_with_config(
        r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
[auth]
htpasswd = "htpasswd"
max_failures = 1000
"#,
        work.path(),
    );
    let http = plain_client();
    let url = format!("{}/v2/", server.base_url());
    let login = |user: &'static str, password: &'static str| {
        let rb = http.get(&url).basic_auth(user, Some(password));
        async move { send(rb).await }
    };

    let carol = login("carol", "carol-secret").await;
    assert_oci_error(&carol, 401, "UNAUTHORIZED", "carol before she is added");
    let bob = login("bob", BOB_PW).await;
    assert_eq!(
        bob.status,
        200,
        "bob before the reload (now cached): {}",
        bob.describe()
    );

    // Add carol (and dave, who will not log in yet), remove bob (he has a cached
    // login), then SIGHUP.
    htpasswd_add(&htpasswd, "carol", "carol-secret");
    htpasswd_add(&htpasswd, "dave", "dave-secret");
    run_ok(
        portcullis()
            .args(["htpasswd", "remove"])
            .arg(&htpasswd)
            .arg("bob"),
        TOOL_TIMEOUT,
    );
    let still_out = login("carol", "carol-secret").await;
    assert_eq!(still_out.status, 401, "the file is only read on SIGHUP");
    server.sighup();

    eventually("carol can log in after SIGHUP", RELOAD_BUDGET, || {
        let attempt = login("carol", "carol-secret");
        async move {
            let answer = attempt.await;
            if answer.status == 200 {
                Ok(())
            } else {
                Err(answer.describe())
            }
        }
    })
    .await;
    let bob = login("bob", BOB_PW).await;
    assert_oci_error(
        &bob,
        401,
        "UNAUTHORIZED",
        "bob (removed, cached before) after the reload",
    );
    let alice = login("alice", ALICE_PW).await;
    assert_eq!(
        alice.status,
        200,
        "alice is untouched by the reload: {}",
        alice.describe()
    );
    let wrong = login("carol", "not-carols").await;
    assert_oci_error(&wrong, 401, "UNAUTHORIZED", "carol with a wrong password");

    // An unreadable file at the next SIGHUP: the users in force stay (dave never
    // logged in, so his login is checked against the table, not the cache).
    fs::rename(&htpasswd, work.join("htpasswd.away")).expect("move htpasswd away");
    server.sighup();
    wait_for_log(&server, "htpasswd not reloaded", RELOAD_BUDGET);
    let dave = login("dave", "dave-secret").await;
    assert_eq!(
        dave.status,
        200,
        "dave after a failed reload: {}",
        dave.describe()
    );
    let bob = login("bob", BOB_PW).await;
    assert_eq!(bob.status, 401, "bob stays removed after a failed reload");
}

// ---------------------------------------------------------------------------
// 6. HTTP/2 over TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tls_listener_negotiates_http2() {
    let work = Workdir::new();
    let (server, certs) = start_tls_server_with_alice(&work);
    let ca = certs.join("ca.crt");
    let creds = format!("alice:{ALICE_PW}");
    let v2 = format!("{}/v2/", server.tls_url());

    let out = curl(&[
        "--http2",
        "--cacert",
        path_str(&ca),
        "-u",
        &creds,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &v2,
    ]);
    assert!(
        out.status.success(),
        "curl --http2 failed ({}): {}",
        out.status,
        out.stderr
    );
    assert_eq!(
        out.stdout_str(),
        "2 200",
        "curl --http2: HTTP version and status"
    );
    // Clients that only speak HTTP/1.1 still get it.
    let out = curl(&[
        "--http1.1",
        "--cacert",
        path_str(&ca),
        "-u",
        &creds,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &v2,
    ]);
    assert_eq!(
        out.stdout_str(),
        "1.1 200",
        "curl --http1.1: {}",
        out.stderr
    );

    // Push and pull a manifest with reqwest: ALPN picks h2.
    let http = tls_client(&ca);
    let alice = Some(("alice", ALICE_PW));
    let manifest = push_image(&http, &server.tls_url(), "team/h2", "v1", alice).await;
    let digest = sha256_digest(&manifest);
    for reference in ["v1", digest.as_str()] {
        let answer = send(
            http.get(format!(
                "{}/v2/team/h2/manifests/{reference}",
                server.tls_url()
            ))
            .header("accept", OCI_MANIFEST_TYPE)
            .basic_auth("alice", Some(ALICE_PW)),
        )
        .await;
        assert_eq!(
            answer.status,
            200,
            "GET manifest {reference} over TLS: {}",
            answer.describe()
        );
        assert_eq!(
            answer.version,
            Version::HTTP_2,
            "manifest GET {reference} must be served over h2"
        );
        assert!(answer.body == manifest, "manifest bytes over h2 differ");
        assert_eq!(
            answer.header("docker-content-digest").as_deref(),
            Some(digest.as_str())
        );
        assert_eq!(
            answer.header("content-type").as_deref(),
            Some(OCI_MANIFEST_TYPE)
        );
    }
    // Errors over h2 are OCI errors too.
    let anon = send(http.get(format!("{}/v2/team/h2/manifests/v1", server.tls_url()))).await;
    assert_eq!(anon.version, Version::HTTP_2);
    assert_oci_error(&anon, 401, "UNAUTHORIZED", "anonymous manifest GET over h2");
}

// ---------------------------------------------------------------------------
// 7. mTLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mtls_required_and_optional_client_certificates() {
    let work = Workdir::new();
    let certs = work.certs("certs", Some("ci-bot"));
    // A client certificate from a CA the server does not know.
    let foreign = work.certs("foreign", Some("intruder"));
    let ca = certs.join("ca.crt");
    let (client_crt, client_key) = (certs.join("client.crt"), certs.join("client.key"));
    // The servers run in their own directories and name the certificates by absolute path.
    let config = |mode: &str| {
        let certs = certs.display();
        format!(
            r#"
[server]
tls_listen = "127.0.0.1:{{TLS_PORT}}"
[tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
client_auth = "{mode}"
client_ca = "{certs}/ca.crt"
"#
        )
    };

    let required_dir = work.join("required");
    fs::create_dir_all(&required_dir).unwrap();
    let server = Server::start_with_config(&config("required"), &required_dir);
    let v2 = format!("{}/v2/", server.tls_url());

    let without = tls_client(&ca).get(&v2).send().await;
    assert!(
        without.is_err(),
        "required mTLS: a client without certificate got {:?}",
        without.map(|r| r.status())
    );
    let with = send(mtls_client(&ca, &client_crt, &client_key).get(&v2)).await;
    assert_eq!(
        with.status,
        200,
        "required mTLS: client with the generated certificate: {}",
        with.describe()
    );
    let intruder = mtls_client(
        &ca,
        &foreign.join("client.crt"),
        &foreign.join("client.key"),
    )
    .get(&v2)
    .send()
    .await;
    assert!(
        intruder.is_err(),
        "required mTLS: a certificate of an unknown CA was accepted: {:?}",
        intruder.map(|r| r.status())
    );

    let started = Instant::now();
    let curl_without = curl(&["--cacert", path_str(&ca), "-o", "/dev/null", &v2]);
    assert!(
        !curl_without.status.success(),
        "curl without client certificate succeeded"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refused handshake took {:?}",
        started.elapsed()
    );
    let curl_with = curl(&[
        "--cacert",
        path_str(&ca),
        "--cert",
        path_str(&client_crt),
        "--key",
        path_str(&client_key),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &v2,
    ]);
    assert!(
        curl_with.status.success(),
        "curl with client certificate failed: {}",
        curl_with.stderr
    );
    assert_eq!(curl_with.stdout_str(), "200");
    drop(server);

    // optional: no certificate is fine, but a presented one must verify.
    let optional_dir = work.join("optional");
    fs::create_dir_all(&optional_dir).unwrap();
    let server = Server::start_with_config(&config("optional"), &optional_dir);
    let v2 = format!("{}/v2/", server.tls_url());
    let without = send(tls_client(&ca).get(&v2)).await;
    assert_eq!(
        without.status,
        200,
        "optional mTLS without a certificate: {}",
        without.describe()
    );
    let with = send(mtls_client(&ca, &client_crt, &client_key).get(&v2)).await;
    assert_eq!(
        with.status, 200,
        "optional mTLS with the generated certificate"
    );
    let intruder = mtls_client(
        &ca,
        &foreign.join("client.crt"),
        &foreign.join("client.key"),
    )
    .get(&v2)
    .send()
    .await;
    assert!(
        intruder.is_err(),
        "optional mTLS: a certificate of an unknown CA was accepted"
    );
}

// ---------------------------------------------------------------------------
// 8. The wrong protocol for a port
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wrong_protocol_gets_an_answer_not_a_hang() {
    let work = Workdir::new();
    let certs = work.certs("certs", None);
    let server = Server::start_with_config(PLAIN_AND_TLS_CONFIG, work.path());
    let tls_port = server.tls_port();
    let plain_port = server.port();

    // Plain HTTP to the TLS port: 400 saying to use https.
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{tls_port}\r\n\r\n");
    let (status, head, body) = raw_exchange(tls_port, request.as_bytes(), Duration::from_secs(5));
    assert!(
        status.starts_with("HTTP/1.1 400"),
        "plain HTTP to the TLS port: {status}\n{head}\n{body}"
    );
    assert!(
        body.contains("https"),
        "the 400 should tell to use https: {body:?}"
    );
    assert!(
        raw_header(&head, "location").is_none(),
        "no redirect unless configured: {head}"
    );
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{tls_port}/v2/"),
    ]);
    assert_eq!(
        out.stdout_str(),
        "400",
        "curl http:// to the TLS port: {}",
        out.stderr
    );

    // TLS to the plain port: fails fast, with an HTTP 400 answer to the ClientHello.
    let started = Instant::now();
    let out = curl(&[
        "--cacert",
        path_str(&certs.join("ca.crt")),
        "-o",
        "/dev/null",
        &format!("https://127.0.0.1:{plain_port}/v2/"),
    ]);
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "curl https:// to the plain port succeeded"
    );
    assert!(
        took < Duration::from_secs(5),
        "TLS to the plain port took {took:?} to fail"
    );
    let started = Instant::now();
    let reqwest_tls = tls_client(&certs.join("ca.crt"))
        .get(format!("https://127.0.0.1:{plain_port}/v2/"))
        .send()
        .await;
    assert!(
        reqwest_tls.is_err(),
        "TLS to the plain port gave an answer: {:?}",
        reqwest_tls.map(|r| r.status())
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reqwest TLS to the plain port took {:?}",
        started.elapsed()
    );
    // The start of a ClientHello (record type 0x16) gets a plain-text 400.
    let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
    let started = Instant::now();
    let (status, _, body) = raw_exchange(plain_port, hello, Duration::from_secs(5));
    assert!(
        status.starts_with("HTTP/1.1 400"),
        "TLS bytes to the plain port: {status}"
    );
    assert!(
        body.contains("http://") && body.contains("TLS"),
        "the 400 should explain: {body:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Both ports still serve their own protocol.
    let plain = send(plain_client().get(format!("{}/v2/", server.base_url()))).await;
    assert_eq!(plain.status, 200);
    let tls =
        send(tls_client(&certs.join("ca.crt")).get(format!("{}/v2/", server.tls_url()))).await;
    assert_eq!(tls.status, 200);
}

#[tokio::test]
async fn redirect_to_https_answers_308() {
    let work = Workdir::new();
    let certs = work.certs("certs", None);
    let server = Server::start_with_config(
        r#"
[server]
tls_listen = "127.0.0.1:{TLS_PORT}"
redirect_to_https = true
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
"#,
        work.path(),
    );
    let port = server.tls_port();
    let request =
        format!("GET /v2/team/app/tags/list?n=5 HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    let (status, head, _) = raw_exchange(port, request.as_bytes(), Duration::from_secs(5));
    assert!(
        status.starts_with("HTTP/1.1 308"),
        "plain HTTP with redirect_to_https: {status}\n{head}"
    );
    let location =
        raw_header(&head, "location").unwrap_or_else(|| panic!("308 without Location:\n{head}"));
    assert_eq!(
        location,
        format!("https://localhost:{port}/v2/team/app/tags/list?n=5")
    );

    // curl sees the same and the target works over TLS.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://localhost:{port}/v2/"),
    ]);
    assert_eq!(
        out.stdout_str(),
        format!("308 https://localhost:{port}/v2/"),
        "curl: {}",
        out.stderr
    );
    let follow =
        send(tls_client(&certs.join("ca.crt")).get(format!("https://localhost:{port}/v2/"))).await;
    assert_eq!(
        follow.status,
        200,
        "the redirect target: {}",
        follow.describe()
    );
}

// ---------------------------------------------------------------------------
// 9. Read-only mode, size limits, config check
// ---------------------------------------------------------------------------

#[tokio::test]
async fn read_only_mode_refuses_writes_and_serves_pulls() {
    let work = Workdir::new();
    let writable = r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
"#;
    let http = plain_client();
    let (manifest, layer) = {
        let server = Server::start_with_config(writable, work.path());
        let manifest = push_image(&http, &server.base_url(), "team/ro", "v1", None).await;
        let layer = pseudo_random(10_000, 7);
        (manifest, layer)
        // Dropping the server stops it, releasing the data directory.
    };
    let digest = sha256_digest(&manifest);
    let layer_digest = sha256_digest(&layer);

    let server = Server::start_with_config(&format!("{writable}read_only = true\n"), work.path());
    let base = server.base_url();

    let session = send(http.post(format!("{base}/v2/team/ro/blobs/uploads/"))).await;
    assert_oci_error(
        &session,
        405,
        "UNSUPPORTED",
        "POST upload in read-only mode",
    );
    let mono = post_blob(&http, &base, "team/ro", &pseudo_random(2000, 9), None).await;
    assert_oci_error(
        &mono,
        405,
        "UNSUPPORTED",
        "monolithic upload in read-only mode",
    );
    let put = send(
        http.put(format!("{base}/v2/team/ro/manifests/v2"))
            .header("content-type", OCI_MANIFEST_TYPE)
            .body(manifest.clone()),
    )
    .await;
    assert_oci_error(&put, 405, "UNSUPPORTED", "manifest PUT in read-only mode");
    let delete = send(http.delete(format!("{base}/v2/team/ro/manifests/{digest}"))).await;
    assert_oci_error(
        &delete,
        405,
        "UNSUPPORTED",
        "manifest DELETE in read-only mode",
    );

    // Pulls work, and nothing changed.
    let got = send(
        http.get(format!("{base}/v2/team/ro/manifests/v1"))
            .header("accept", OCI_MANIFEST_TYPE),
    )
    .await;
    assert_eq!(
        got.status,
        200,
        "manifest GET in read-only mode: {}",
        got.describe()
    );
    assert!(got.body == manifest, "manifest bytes in read-only mode");
    let blob = send(http.get(format!("{base}/v2/team/ro/blobs/{layer_digest}"))).await;
    assert_eq!(blob.status, 200, "blob GET in read-only mode");
    assert!(blob.body == layer, "blob bytes in read-only mode");
    let tags = send(http.get(format!("{base}/v2/team/ro/tags/list"))).await;
    assert_eq!(tags.status, 200);
    let tags: Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(
        tags["tags"],
        json!(["v1"]),
        "no tag v2 after the refused PUT"
    );
}

#[tokio::test]
async fn manifest_size_limit_gives_413() {
    let work = Workdir::new();
    let server = start_plain_server(&work, "[limits]\nmax_manifest_bytes = 1024\n");
    let http = plain_client();
    let base = server.base_url();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = pseudo_random(5000, 11);
    push_blob(&http, &base, "team/lim", &config, None).await;
    push_blob(&http, &base, "team/lim", &layer, None).await;

    let small = image_manifest(&config, &layer, 10);
    assert!(small.len() <= 1024);
    let ok = send(
        http.put(format!("{base}/v2/team/lim/manifests/small"))
            .header("content-type", OCI_MANIFEST_TYPE)
            .body(small),
    )
    .await;
    assert_eq!(
        ok.status,
        201,
        "a manifest under the limit: {}",
        ok.describe()
    );

    let big = image_manifest(&config, &layer, 2000);
    assert!(big.len() > 1024);
    let refused = send(
        http.put(format!("{base}/v2/team/lim/manifests/big"))
            .header("content-type", OCI_MANIFEST_TYPE)
            .body(big.clone()),
    )
    .await;
    assert_oci_error(
        &refused,
        413,
        "SIZE_INVALID",
        "manifest over max_manifest_bytes",
    );

    // The same without Content-Length (chunked): counted while reading.
    let chunked = send(
        http.put(format!("{base}/v2/team/lim/manifests/big"))
            .header("content-type", OCI_MANIFEST_TYPE)
            .body(chunked_body(work.path(), &big).await),
    )
    .await;
    assert_oci_error(
        &chunked,
        413,
        "SIZE_INVALID",
        "chunked manifest over max_manifest_bytes",
    );

    let missing = send(
        http.get(format!("{base}/v2/team/lim/manifests/big"))
            .header("accept", OCI_MANIFEST_TYPE),
    )
    .await;
    assert_eq!(missing.status, 404, "a refused manifest must not be stored");
}

/// A request body without Content-Length (sent chunked): the bytes, streamed from a file.
async fn chunked_body(dir: &Path, bytes: &[u8]) -> reqwest::Body {
    let path = dir.join(format!("body-{}", uuid::Uuid::new_v4()));
    fs::write(&path, bytes).expect("write body file");
    let file = tokio::fs::File::open(&path).await.expect("open body file");
    reqwest::Body::from(file)
}

#[tokio::test]
async fn body_size_limit_gives_413() {
    let work = Workdir::new();
    let server = start_plain_server(&work, "[limits]\nmax_body_bytes = 65536\n");
    let http = plain_client();
    let base = server.base_url();

    let fits = pseudo_random(32 * 1024, 21);
    push_blob(&http, &base, "team/body", &fits, None).await;

    let too_big = pseudo_random(100 * 1024, 22);
    let refused = post_blob(&http, &base, "team/body", &too_big, None).await;
    assert_oci_error(
        &refused,
        413,
        "SIZE_INVALID",
        "monolithic upload over max_body_bytes",
    );
    let digest = sha256_digest(&too_big);
    let head = send(http.head(format!("{base}/v2/team/body/blobs/{digest}"))).await;
    assert_eq!(head.status, 404, "a refused upload must store nothing");

    // Without Content-Length the limit is enforced while reading.
    let chunked = send(
        http.post(format!(
            "{base}/v2/team/body/blobs/uploads/?digest={digest}"
        ))
        .header("content-type", "application/octet-stream")
        .body(chunked_body(work.path(), &too_big).await),
    )
    .await;
    assert_oci_error(
        &chunked,
        413,
        "SIZE_INVALID",
        "chunked monolithic upload over max_body_bytes",
    );

    // The server is still healthy for uploads that fit.
    let again = pseudo_random(1000, 23);
    push_blob(&http, &base, "team/body", &again, None).await;
}

#[test]
fn check_names_the_file_and_the_mistyped_key() {
    let work = Workdir::new();
    let bad = work.join("bad.toml");
    fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:5000\"\ntls_lisen = \"127.0.0.1:5443\"\n",
    )
    .unwrap();
    let out = run_with_timeout(
        portcullis().arg("check").arg("--config").arg(&bad),
        TOOL_TIMEOUT,
    );
    assert!(
        !out.status.success(),
        "check accepted a typo: {}",
        out.stdout_str()
    );
    let all = format!("{}\n{}", out.stdout_str(), out.stderr);
    let line = all
        .lines()
        .find(|l| l.contains("tls_lisen"))
        .unwrap_or_else(|| panic!("no line names the key tls_lisen:\n{all}"));
    assert!(
        line.contains(path_str(&bad)),
        "the line naming the key should name the file too: {line}"
    );
    assert!(
        line.contains("bad.toml:3"),
        "the line should give the line number: {line}"
    );

    let bad_limits = work.join("limits.toml");
    fs::write(&bad_limits, "[limits]\nmax_body_byte = 10\n").unwrap();
    let out = run_with_timeout(
        portcullis().arg("check").arg("--config").arg(&bad_limits),
        TOOL_TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(path_str(&bad_limits)) && l.contains("max_body_byte")),
        "file and key on one line: {}",
        out.stderr
    );

    // `serve` refuses the same file at once, with the same sentence.
    let started = Instant::now();
    let serve = run_with_timeout(
        portcullis().arg("serve").arg("--config").arg(&bad),
        TOOL_TIMEOUT,
    );
    assert!(
        !serve.status.success(),
        "serve started with a typo in its config"
    );
    assert!(
        serve
            .stderr
            .lines()
            .any(|l| l.contains("tls_lisen") && l.contains(path_str(&bad))),
        "{}",
        serve.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A correct file passes.
    let good = work.join("good.toml");
    fs::write(
        &good,
        "[server]\nlisten = \"127.0.0.1:5000\"\n[limits]\nmax_body_bytes = 10\n",
    )
    .unwrap();
    let out = run_with_timeout(
        portcullis().arg("check").arg("--config").arg(&good),
        TOOL_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "check refused a valid config: {}",
        out.stderr
    );
    assert!(out.stdout_str().contains("ok"), "{}", out.stdout_str());
}

// ---------------------------------------------------------------------------
// Metrics of the edge, and pingora's reports of what clients did
// ---------------------------------------------------------------------------

/// Completes a TLS handshake that offers only h2, then hangs up without sending the
/// HTTP/2 preface: pingora reports that as an h2 handshake error.
fn h2_handshake_then_hang_up(port: u16, ca: &Path) {
    use rustls::pki_types::pem::PemObject;
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
}

#[tokio::test]
async fn handshakes_logins_and_wrong_protocols_are_counted_and_client_noise_stays_quiet() {
    let work = Workdir::new();
    let certs = work.certs("certs", None);
    let other = work.certs("other", None);
    work.add_user("alice", ALICE_PW);
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{PLAIN_PORT}"
tls_listen = "127.0.0.1:{{TLS_PORT}}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
[auth]
htpasswd = "htpasswd"
max_failures = 2
[metrics]
listen = "127.0.0.1:{}"
"#,
        common::METRICS_PORT
    );
    let server = Server::start_with_config(&config, work.path());
    let before = common::scrape_metrics(&server);
    let count = |scrape: &str, name: &str, labels: &[(&str, &str)]| {
        common::metric(scrape, name, labels) - common::metric(&before, name, labels)
    };

    // Two good TLS requests on one connection: one handshake.
    let client = tls_client(&certs.join("ca.crt"));
    for _ in 0..2 {
        let answer = send(
            client
                .get(format!("{}/v2/", server.tls_url()))
                .basic_auth("alice", Some(ALICE_PW)),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.describe());
    }
    // A client that trusts another CA gives up in the handshake.
    let stranger = get_v2_trusting(&other.join("ca.crt"), &server).await;
    assert!(stranger.is_err(), "{stranger:?}");
    // Plain HTTP to the TLS port, TLS to the plain port.
    let request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_exchange(server.tls_port(), request, Duration::from_secs(5));
    let _ = curl(&[
        "--cacert",
        path_str(&certs.join("ca.crt")),
        "-o",
        "/dev/null",
        &format!("https://127.0.0.1:{}/v2/", server.port()),
    ]);
    // Two wrong passwords, then the limit.
    let http = plain_client();
    for expected in [401, 401, 429] {
        let answer = send(
            http.get(format!("{}/v2/", server.base_url()))
                .basic_auth("alice", Some("guess")),
        )
        .await;
        assert_eq!(answer.status, expected, "{}", answer.describe());
    }
    h2_handshake_then_hang_up(server.tls_port(), &certs.join("ca.crt"));
    // Their kept-alive connections close with them.
    drop((client, http));

    let after = eventually(
        "the metrics to show every connection",
        RELOAD_BUDGET,
        || async {
            let scrape = common::scrape_metrics(&server);
            let open = common::metric(&scrape, "portcullis_connections_open", &[]);
            if open == 0.0 {
                Ok(scrape)
            } else {
                Err(format!("{open} connections open"))
            }
        },
    )
    .await;
    let handshakes = |result| {
        count(
            &after,
            "portcullis_tls_handshakes_total",
            &[("result", result)],
        )
    };
    // The good client (one connection for both requests) and the h2 client.
    assert_eq!(handshakes("ok"), 2.0, "{after}");
    assert_eq!(handshakes("failed"), 1.0, "the stranger's: {after}");
    let wrong = |kind| count(&after, "portcullis_wrong_protocol_total", &[("kind", kind)]);
    assert_eq!(wrong("plain_on_tls"), 1.0);
    assert_eq!(wrong("tls_on_plain"), 1.0);
    let logins = |result| {
        count(
            &after,
            "portcullis_auth_attempts_total",
            &[("result", result)],
        )
    };
    assert_eq!(logins("success"), 2.0);
    assert_eq!(logins("failure"), 2.0);
    assert_eq!(logins("rate_limited"), 1.0);
    assert!(
        count(
            &after,
            "portcullis_connections_total",
            &[("listener", "tls")]
        ) >= 4.0
    );
    assert_eq!(
        count(
            &after,
            "portcullis_http_requests_total",
            &[("route", "base"), ("status", "429")]
        ),
        1.0
    );

    // pingora's report of the client that hung up is not in the default log ...
    let log = server.full_log();
    assert!(!log.contains("H2 handshake error"), "{log}");
    assert!(
        !log.contains("ERROR"),
        "a client's doing logged as an error:\n{log}"
    );
    // ... though pingora does report it, when asked.
    let verbose_dir = Workdir::new();
    fs::create_dir_all(verbose_dir.join("certs")).unwrap();
    for file in ["server.crt", "server.key"] {
        fs::copy(certs.join(file), verbose_dir.join("certs").join(file)).unwrap();
    }
    let verbose = Server::start_with_config_env(
        PLAIN_AND_TLS_CONFIG,
        verbose_dir.path(),
        &[("RUST_LOG", "info,pingora_core=debug")],
    );
    h2_handshake_then_hang_up(verbose.tls_port(), &certs.join("ca.crt"));
    eventually("pingora's report with RUST_LOG", RELOAD_BUDGET, || async {
        let log = verbose.full_log();
        if log.contains("H2 handshake error") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
}
