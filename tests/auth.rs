//! The authorization matrix of accounts, through real clients: who (anonymous, a
//! signed-in outsider, viewer, contributor, owner, admin, a robot, a CI token) may
//! pull, push and delete in a team namespace that is private, protected or public.
//! skopeo runs every cell with Docker token authentication and again with Basic; then
//! docker, podman and ctr log in through the token endpoint, and docker pulls a public
//! repository anonymously (which Basic-only servers cannot offer it).
//!
//! Accounts are set up through the library on the stopped server's data directory,
//! so this test depends on nothing but the request path.

// Each test file uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use common::daemons::{Containerd, Dockerd, DockerdOptions};
use common::netns::in_fresh_netns;
use common::{run_ok, run_with_timeout, CmdOutput, ContainersEnv, ImageFixture, Server};
use portcullis::accounts::{Accounts, Actions, Role, Settings, Visibility};
use std::path::Path;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "matrix-password";

fn config(token_auth: bool) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{{PLAIN_PORT}}\"\n[accounts]\nenabled = true\n\
         bcrypt_cost = 4\n[auth]\ntoken = {token_auth}\n"
    )
}

/// The secrets the directory hands out once.
struct Secrets {
    robot: String,
    ci_token: String,
}

fn with_accounts<T>(dir: &Path, f: impl AsyncFnOnce(&Accounts) -> T) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = Settings {
            global_visibility: Visibility::Protected,
            mirror_visibility: Default::default(),
        };
        let accounts = Accounts::open(&dir.join("data"), settings, vec![], 4).unwrap();
        f(&accounts).await
    })
}

/// admin; alice owns team `web`, bob is a viewer, carol a contributor, dave is in no
/// team; robot `web+ci` may push; alice's CI token may pull and push in `web`.
fn set_up_accounts(dir: &Path) -> Secrets {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    with_accounts(dir, async |a| {
        a.add_user("admin", PASSWORD, true).await.unwrap();
        for user in ["alice", "bob", "carol", "dave"] {
            a.add_user(user, PASSWORD, false).await.unwrap();
        }
        a.change(|d| d.create_team("web", "alice", "", 1))
            .await
            .unwrap();
        a.change(|d| d.set_member("web", "bob", Some(Role::Viewer)))
            .await
            .unwrap();
        a.change(|d| d.set_member("web", "carol", Some(Role::Contributor)))
            .await
            .unwrap();
        let (_, robot) = a
            .add_robot("web", "ci", Actions::parse("push").unwrap(), "")
            .await
            .unwrap();
        let (_, ci_token) = a
            .add_token(
                "alice",
                "ci",
                vec!["web".into()],
                Actions::parse("pull,push").unwrap(),
                None,
            )
            .await
            .unwrap();
        Secrets { robot, ci_token }
    })
}

fn set_visibility(dir: &Path, visibility: Visibility) {
    with_accounts(dir, async |a| {
        a.change(|d| d.set_visibility(Some("web"), visibility))
            .await
            .unwrap()
    })
}

struct Caller {
    label: &'static str,
    creds: Option<String>,
    /// What it may do, for private, protected and public `web`.
    expected: [&'static str; 3],
}

fn callers(secrets: &Secrets) -> Vec<Caller> {
    let user = |name: &str| Some(format!("{name}:{PASSWORD}"));
    let all = "pull,push,delete";
    vec![
        Caller {
            label: "anonymous",
            creds: None,
            expected: ["", "", "pull"],
        },
        Caller {
            label: "dave (signed in, no team)",
            creds: user("dave"),
            expected: ["", "pull", "pull"],
        },
        Caller {
            label: "bob (viewer)",
            creds: user("bob"),
            expected: ["pull"; 3],
        },
        Caller {
            label: "carol (contributor)",
            creds: user("carol"),
            expected: ["pull,push"; 3],
        },
        Caller {
            label: "alice (owner)",
            creds: user("alice"),
            expected: [all; 3],
        },
        Caller {
            label: "admin",
            creds: user("admin"),
            expected: [all; 3],
        },
        Caller {
            label: "robot web+ci (push)",
            creds: Some(format!("web+ci:{}", secrets.robot)),
            expected: ["pull,push"; 3],
        },
        Caller {
            label: "alice's CI token (pull,push in web)",
            creds: Some(format!("alice:{}", secrets.ci_token)),
            expected: ["pull,push"; 3],
        },
    ]
}

fn creds_args<'a>(flag: &'a str, creds: &'a Option<String>) -> Vec<&'a str> {
    match creds {
        Some(c) => vec![flag, c.as_str()],
        None => vec![],
    }
}

/// A refused client must have been refused by the registry, not by anything else.
fn assert_refused(out: &CmdOutput, what: &str) {
    let text = out.stderr.to_lowercase();
    assert!(
        !out.status.success(),
        "{what}: allowed, but should be refused"
    );
    assert!(
        [
            "unauthorized",
            "denied",
            "authentication required",
            "401",
            "403",
            // Docker's words when a Basic server asks for a login it has not got.
            "no basic auth credentials",
        ]
        .iter()
        .any(|w| text.contains(w)),
        "{what}: failed, but not with an authorization error:\n{text}"
    );
}

fn assert_outcome(out: &CmdOutput, allowed: bool, what: &str) {
    if allowed {
        assert!(
            out.status.success(),
            "{what}: refused, but should be allowed:\n{}",
            out.stderr
        );
    } else {
        assert_refused(out, what);
    }
}

/// Whether the server's access log has an answered `/token` request by this method,
/// user, status and client (user agent).
fn asked_for_token(server: &Server, method: &str, user: &str, status: u16, agent: &str) -> bool {
    server.log().lines().any(|line| {
        line.contains(&format!("method=\"{method}\" path=\"/token\""))
            && line.contains(&format!("user=\"{user}\""))
            && line.contains(&format!("status=\"{status}\""))
            && line.contains(&format!("agent=\"{agent}"))
    })
}

fn push(env: &ContainersEnv, server: &Server, creds: &Option<String>, repo_tag: &str) -> CmdOutput {
    let img = ImageFixture::build("1", &[512]);
    let src = format!("oci:{}:{}", img.layout.display(), img.tag);
    let dest = format!("docker://{}/{repo_tag}", server.host_port());
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    args.extend(creds_args("--dest-creds", creds));
    args.extend([src.as_str(), dest.as_str()]);
    run_with_timeout(&mut env.skopeo(&args), CLIENT_TIMEOUT)
}

/// `skopeo VERB [FLAGS] docker://HOST/<repo_tag>`, with `--creds` when given.
fn skopeo_on(
    env: &ContainersEnv,
    server: &Server,
    verb: &[&str],
    creds: &Option<String>,
    repo_tag: &str,
) -> CmdOutput {
    let src = format!("docker://{}/{repo_tag}", server.host_port());
    let mut args = verb.to_vec();
    args.push("--tls-verify=false");
    args.extend(creds_args("--creds", creds));
    args.push(&src);
    run_with_timeout(&mut env.skopeo(&args), CLIENT_TIMEOUT)
}

fn inspect(
    env: &ContainersEnv,
    server: &Server,
    creds: &Option<String>,
    repo_tag: &str,
) -> CmdOutput {
    skopeo_on(env, server, &["inspect", "--raw"], creds, repo_tag)
}

fn delete(
    env: &ContainersEnv,
    server: &Server,
    creds: &Option<String>,
    repo_tag: &str,
) -> CmdOutput {
    skopeo_on(env, server, &["delete"], creds, repo_tag)
}

/// Every caller × pull/push/delete × private/protected/public, with skopeo.
fn run_matrix(token_auth: bool) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = set_up_accounts(dir.path());
    let env = ContainersEnv::new();
    let admin = Some(format!("admin:{PASSWORD}"));
    let visibilities = [
        Visibility::Private,
        Visibility::Protected,
        Visibility::Public,
    ];
    let mut cells = 0;
    for (v, visibility) in visibilities.into_iter().enumerate() {
        set_visibility(dir.path(), visibility);
        let server = Server::start_with_config(&config(token_auth), dir.path());
        let image = push(&env, &server, &admin, "web/app:1");
        assert!(image.status.success(), "admin push: {:?}", image.stderr);
        for (c, caller) in callers(&secrets).iter().enumerate() {
            let may = |action| caller.expected[v].split(',').any(|a| a == action);
            let what = |action: &str| {
                format!(
                    "{} {action} in {visibility:?} web ({} auth)",
                    caller.label,
                    if token_auth { "token" } else { "basic" }
                )
            };
            let pulled = inspect(&env, &server, &caller.creds, "web/app:1");
            assert_outcome(&pulled, may("pull"), &what("pull"));
            let pushed = push(
                &env,
                &server,
                &caller.creds,
                &format!("web/pushed-{v}-{c}:1"),
            );
            assert_outcome(&pushed, may("push"), &what("push"));
            let victim = format!("web/victim:{v}-{c}");
            assert!(push(&env, &server, &admin, &victim).status.success());
            let deleted = delete(&env, &server, &caller.creds, &victim);
            assert_outcome(&deleted, may("delete"), &what("delete"));
            // What a refused delete left is still there; what an allowed one took is gone.
            let still_there = inspect(&env, &server, &admin, &victim).status.success();
            assert_eq!(still_there, !may("delete"), "{} afterwards", what("delete"));
            cells += 3;
        }
    }
    assert_eq!(cells, 3 * 3 * 8);
}

#[test]
fn matrix_through_skopeo_with_token_auth() {
    if !in_fresh_netns() {
        return;
    }
    run_matrix(true);
}

#[test]
fn matrix_through_skopeo_with_basic_auth() {
    if !in_fresh_netns() {
        return;
    }
    run_matrix(false);
}

/// docker login (OAuth2 POST, identity token), push and pull; podman and ctr log in
/// and pull through the token endpoint; docker pulls a public repository anonymously.
#[test]
fn docker_podman_and_ctr_with_token_auth() {
    if !in_fresh_netns() {
        return;
    }
    clients_log_in_and_work(true);
}

/// The same with Basic authentication, where Docker cannot pull without a login.
#[test]
fn docker_podman_and_ctr_with_basic_auth() {
    if !in_fresh_netns() {
        return;
    }
    clients_log_in_and_work(false);
}

/// With token auth each client must have got its token from `/token` as this user
/// and client; with Basic none may have asked there at all.
fn assert_token_use(server: &Server, token_auth: bool, method: &str, user: &str, agent: &str) {
    let asked = asked_for_token(server, method, user, 200, agent);
    assert_eq!(
        asked,
        token_auth,
        "{agent} as {user}: token endpoint used = {asked}, token auth = {token_auth}:\n{}",
        server.log()
    );
}

fn clients_log_in_and_work(token_auth: bool) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = set_up_accounts(dir.path());
    set_visibility(dir.path(), Visibility::Private);
    let server = Server::start_with_config(&config(token_auth), dir.path());
    let host = server.host_port();
    let env = ContainersEnv::new();
    let admin = Some(format!("admin:{PASSWORD}"));
    assert!(push(&env, &server, &admin, "web/app:1").status.success());
    let image_digest = common::sha256_digest(&inspect(&env, &server, &admin, "web/app:1").stdout);

    let dockerd = Dockerd::start(DockerdOptions::default());
    // A private repository: no anonymous pull, and the refusal is the registry's.
    let private = format!("{host}/web/app:1");
    let anonymous = run_with_timeout(&mut dockerd.docker(&["pull", &private]), CLIENT_TIMEOUT);
    assert_refused(&anonymous, "docker anonymous pull of private web/app");
    // docker login with the CI token, then push and pull as alice's token.
    let mut login = dockerd.docker(&["login", "--username", "alice", "--password-stdin", &host]);
    let login = common::run_with_stdin(&mut login, &secrets.ci_token, CLIENT_TIMEOUT);
    assert!(login.status.success(), "docker login: {:?}", login.stderr);
    run_ok(&mut dockerd.docker(&["pull", &private]), CLIENT_TIMEOUT);
    let pushed = format!("{host}/web/from-docker:1");
    run_ok(
        &mut dockerd.docker(&["tag", &private, &pushed]),
        CLIENT_TIMEOUT,
    );
    run_ok(&mut dockerd.docker(&["push", &pushed]), CLIENT_TIMEOUT);
    assert!(inspect(&env, &server, &admin, "web/from-docker:1")
        .status
        .success());
    assert_token_use(&server, token_auth, "POST", "alice", "docker/");
    run_ok(&mut dockerd.docker(&["logout", &host]), CLIENT_TIMEOUT);

    // ctr: pulls the private repository with the robot's login (containerd's OAuth2
    // POST); a wrong secret is refused.
    let containerd = Containerd::start();
    let robot = format!("web+ci:{}", secrets.robot);
    run_ok(
        &mut containerd.ctr(&["images", "pull", "--plain-http", "--user", &robot, &private]),
        CLIENT_TIMEOUT,
    );
    assert_eq!(
        containerd.image_digest(&private).as_deref(),
        Some(image_digest.as_str())
    );
    let wrong = "web+ci:not-the-secret";
    let refused = run_with_timeout(
        &mut containerd.ctr(&["images", "pull", "--plain-http", "--user", wrong, &private]),
        CLIENT_TIMEOUT,
    );
    assert_refused(&refused, "ctr pull with a wrong robot secret");
    assert_token_use(&server, token_auth, "POST", "web+ci", "containerd/");
    drop(containerd);

    // Once the namespace is public, docker pulls anonymously through an anonymous
    // token. With Basic it cannot: the server asks for a login on /v2/, which Docker
    // then insists on (why token auth matters for public repositories).
    drop(server);
    set_visibility(dir.path(), Visibility::Public);
    let server = Server::start_with_config(&config(token_auth), dir.path());
    let host = server.host_port();
    let public = format!("{host}/web/app:1");
    run_ok(&mut dockerd.docker(&["rmi", &private]), CLIENT_TIMEOUT);
    let pulled = run_with_timeout(&mut dockerd.docker(&["pull", &public]), CLIENT_TIMEOUT);
    if token_auth {
        assert!(
            pulled.status.success(),
            "docker anonymous pull: {}",
            pulled.stderr
        );
    } else {
        assert_refused(&pulled, "docker anonymous pull from a Basic server");
        let admin_login =
            &mut dockerd.docker(&["login", "--username", "admin", "--password-stdin", &host]);
        assert!(
            common::run_with_stdin(admin_login, PASSWORD, CLIENT_TIMEOUT)
                .status
                .success()
        );
        run_ok(&mut dockerd.docker(&["pull", &public]), CLIENT_TIMEOUT);
        run_ok(&mut dockerd.docker(&["logout", &host]), CLIENT_TIMEOUT);
    }
    let pushed_anonymously = format!("{host}/web/anonymous:1");
    run_ok(
        &mut dockerd.docker(&["tag", &public, &pushed_anonymously]),
        CLIENT_TIMEOUT,
    );
    let refused = run_with_timeout(
        &mut dockerd.docker(&["push", &pushed_anonymously]),
        CLIENT_TIMEOUT,
    );
    assert_refused(&refused, "docker anonymous push");
    drop(dockerd);

    // podman: login with a password (token endpoint via GET + Basic), pull, push.
    let mut login = env.command("podman");
    login.args([
        "login",
        "--tls-verify=false",
        "--username",
        "carol",
        "--password-stdin",
        &host,
    ]);
    let login = common::run_with_stdin(&mut login, PASSWORD, CLIENT_TIMEOUT);
    assert!(login.status.success(), "podman login: {:?}", login.stderr);
    let podman = |args: &[&str]| {
        let mut cmd = env.podman(args);
        run_ok(&mut cmd, CLIENT_TIMEOUT)
    };
    podman(&["pull", "--tls-verify=false", &public]);
    let from_podman = format!("{host}/web/from-podman:1");
    podman(&["tag", &public, &from_podman]);
    podman(&["push", "--tls-verify=false", &from_podman]);
    assert!(inspect(&env, &server, &admin, "web/from-podman:1")
        .status
        .success());
    assert_token_use(&server, token_auth, "GET", "carol", "containers/");
}

/// What `helm push` and `helm pull` do (helm is not packaged for Debian): an OCI
/// artifact with Helm's media types, pushed and pulled by oci-client, which meets the
/// Bearer challenge and logs in at the token endpoint as helm's client does.
#[test]
fn a_helm_chart_artifact_through_token_auth_with_oci_client() {
    let dir = tempfile::tempdir().unwrap();
    set_up_accounts(dir.path());
    let server = Server::start_with_config(&config(true), dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(push_and_pull_a_chart(&server));
    for user in ["carol", "bob"] {
        assert!(
            asked_for_token(&server, "GET", user, 200, "oci-client/"),
            "oci-client got {user}'s token from /token:\n{}",
            server.log()
        );
    }
}

async fn push_and_pull_a_chart(server: &Server) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
    const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let chart: oci_client::Reference = format!("{}/web/charts/app:0.1.0", server.host_port())
        .parse()
        .unwrap();
    let config = br#"{"name":"app","version":"0.1.0","apiVersion":"v2"}"#.to_vec();
    let content = b"not really a gzipped tar, but bytes all the same".to_vec();
    let layers = [ImageLayer::new(
        content.clone(),
        HELM_CHART.to_string(),
        None,
    )];
    let carol = RegistryAuth::Basic("carol".into(), PASSWORD.into());
    client
        .push(
            &chart,
            &layers,
            Config::new(config.clone(), HELM_CONFIG.to_string(), None),
            &carol,
            None,
        )
        .await
        .expect("a contributor pushes a chart");
    // oci-client keeps the first login per registry: bob needs a client of his own.
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let bob = RegistryAuth::Basic("bob".into(), PASSWORD.into());
    let pulled = client
        .pull(&chart, &bob, vec![HELM_CHART])
        .await
        .expect("a viewer pulls it");
    assert_eq!(pulled.layers[0].data.as_ref(), content.as_slice());
    assert_eq!(pulled.config.data.as_ref(), config.as_slice());
    let refused = client
        .push(
            &format!("{}/web/charts/other:0.1.0", server.host_port())
                .parse()
                .unwrap(),
            &layers,
            Config::new(config, HELM_CONFIG.to_string(), None),
            &bob,
            None,
        )
        .await;
    assert!(refused.is_err(), "a viewer pushed a chart");
}

/// The matrix's manage column, through the REST API: changing the members and the
/// visibility of team `web` is for its owner and admins; every other caller is
/// refused (401 anonymous, 403 the rest) and nothing changes.
#[test]
fn manage_through_the_rest_api() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = set_up_accounts(dir.path());
    let server = Server::start_with_config(&config(true), dir.path());
    let base = server.base_url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let call =
        |method: reqwest::Method, path: &str, creds: &Option<String>, body: serde_json::Value| {
            let mut request = http
                .request(method, format!("{base}/api/v1{path}"))
                .json(&body);
            if let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) {
                request = request.basic_auth(user, Some(password));
            }
            runtime.block_on(async { request.send().await.unwrap().status().as_u16() })
        };
    for caller in callers(&secrets) {
        let manages = caller.expected[0].contains("delete");
        // Who cannot even see the private team is told it does not exist.
        let refused = match (&caller.creds, caller.expected[0]) {
            (None, _) => 401,
            (Some(_), "") => 404,
            (Some(_), _) => 403,
        };
        let member = call(
            reqwest::Method::PUT,
            "/teams/web/members/dave",
            &caller.creds,
            serde_json::json!({"role": "viewer"}),
        );
        let visibility = call(
            reqwest::Method::PATCH,
            "/namespaces/web",
            &caller.creds,
            serde_json::json!({"visibility": "protected"}),
        );
        let want = if manages { 200 } else { refused };
        assert_eq!(
            (member, visibility),
            (want, want),
            "{} manages web",
            caller.label
        );
        if manages {
            // Put things back for the next caller.
            let admin = Some(format!("admin:{PASSWORD}"));
            let removed = call(
                reqwest::Method::DELETE,
                "/teams/web/members/dave",
                &admin,
                serde_json::json!({}),
            );
            assert!(matches!(removed, 200 | 204), "removing dave: {removed}");
            let private = serde_json::json!({"visibility": "private"});
            assert_eq!(
                call(reqwest::Method::PATCH, "/namespaces/web", &admin, private),
                200
            );
        }
    }
}

/// `GET /v2/_catalog` with a bearer token lists what the token's subject may pull
/// (the token names only the repositories it was asked for): bob, a viewer of `web`,
/// sees `web/app` but not alice's private repository.
#[test]
fn the_catalog_with_a_bearer_token_lists_what_its_subject_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    set_up_accounts(dir.path());
    let server = Server::start_with_config(&config(true), dir.path());
    let env = ContainersEnv::new();
    let admin = Some(format!("admin:{PASSWORD}"));
    for repo in ["web/app:1", "alice/private:1"] {
        assert!(push(&env, &server, &admin, repo).status.success(), "{repo}");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let catalog = runtime.block_on(async {
        let http = reqwest::Client::new();
        let base = server.base_url();
        let token: serde_json::Value = http
            .get(format!(
                "{base}/token?service=portcullis&scope=registry:catalog:*"
            ))
            .basic_auth("bob", Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["token"].as_str().expect("a token").to_string();
        let listed: serde_json::Value = http
            .get(format!("{base}/v2/_catalog"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed
    });
    assert_eq!(catalog, serde_json::json!({"repositories": ["web/app"]}));
}
