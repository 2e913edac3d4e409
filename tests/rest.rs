//! The REST API (`/api/v1/`) against the real binary: a walk through accounts, a CI
//! token that skopeo pushes with, a viewer who cannot push, revocation, tags with
//! their exact digest and size, deletes by role; and schemathesis, which generates
//! requests from the OpenAPI document the server serves and checks every answer
//! against it.

// Each test file uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use common::netns::in_fresh_netns;
use common::{
    run_with_timeout, skopeo_push_as, user_add, CmdOutput, ContainersEnv, ImageFixture, Server,
    OCI_MANIFEST_TYPE, PLAIN_PORT,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Upper bound for the whole schemathesis run.
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(300);
/// Makes a missing schemathesis a failure (CI, which installs it).
const REQUIRE_SCHEMATHESIS: &str = "REQUIRE_SCHEMATHESIS";

const ADMIN_PASSWORD: &str = "admin password";
const ALICE_PASSWORD: &str = "alice password";
const BOB_PASSWORD: &str = "bob password";

/// Accounts on, bcrypt at its cheapest (tests, not production).
const ACCOUNTS: &str = "[accounts]\nenabled = true\nbcrypt_cost = 4\n";

/// A server with accounts and an admin (`admin`), made before it starts as an
/// operator would: `portcullis user add admin --admin`.
/// `extra` is added to the configuration.
fn server_with_admin(dir: &Path, extra: &str) -> Server {
    let setup = dir.join("setup.toml");
    std::fs::write(&setup, ACCOUNTS).unwrap();
    user_add(&setup, &dir.join("data"), "admin", ADMIN_PASSWORD, true);
    let config = format!("[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n{ACCOUNTS}{extra}");
    Server::start_with_config(&config, dir)
}

/// Who a request is sent as.
#[derive(Clone, Copy)]
enum As<'a> {
    Anonymous,
    Basic(&'a str, &'a str),
}

/// A blocking client for the REST API.
struct Rest {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

/// An answer: status, `WWW-Authenticate`, and the body as text and, if it is JSON,
/// as JSON (else `null`).
struct Answer {
    status: u16,
    challenge: Option<String>,
    text: String,
    body: Value,
}

impl Answer {
    fn error_code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or("")
    }
}

impl Rest {
    fn new(server: &Server) -> Rest {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Rest {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: server.base_url().trim_end_matches('/').to_string(),
        }
    }

    fn call(&self, method: &str, path: &str, who: As, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method.clone(), format!("{}/api/v1{path}", self.base));
        if let As::Basic(user, password) = who {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            let json = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes() == b"application/json");
            let text = response.text().await.unwrap();
            let body = match json {
                false => Value::Null,
                true => serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}")),
            };
            Answer {
                status,
                challenge,
                text,
                body,
            }
        })
    }

    /// A call that must fail with `status` and error `code`.
    fn refused(
        &self,
        status: u16,
        code: &str,
        method: &str,
        path: &str,
        who: As,
        body: Option<Value>,
    ) {
        let answer = self.call(method, path, who, body);
        assert_eq!(
            (answer.status, answer.error_code()),
            (status, code),
            "{method} {path}: {}",
            answer.text
        );
    }

    /// A call that must answer `status`; returns the body.
    fn expect(&self, status: u16, method: &str, path: &str, who: As, body: Option<Value>) -> Value {
        let answer = self.call(method, path, who, body);
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        answer.body
    }
}

fn assert_refused(out: &CmdOutput, who: &str) {
    assert!(!out.status.success(), "{who} pushed: {}", out.stderr);
    let stderr = out.stderr.to_lowercase();
    assert!(
        stderr.contains("denied") || stderr.contains("unauthorized"),
        "{who}: skopeo failed for another reason: {}",
        out.stderr
    );
}

/// (actor, action, target, detail) of activity entries, oldest first.
fn changes(page: &Value) -> Vec<(String, String, String, String)> {
    let text = |e: &Value, key: &str| e[key].as_str().unwrap_or("").to_string();
    let mut changes: Vec<_> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                text(e, "actor"),
                text(e, "action"),
                text(e, "target"),
                text(e, "detail"),
            )
        })
        .collect();
    changes.reverse();
    changes
}

/// Bytes of the manifest, its config and its layers.
fn total_size(img: &ImageFixture) -> u64 {
    let layers: usize = img.layer_digests.iter().map(|d| img.blob(d).len()).sum();
    (img.manifest.len() + img.config.len() + layers) as u64
}

#[test]
fn accounts_tokens_pushes_tags_and_deletes_through_the_rest_api() {
    // skopeo talks to nothing but this loopback.
    if !in_fresh_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_admin(dir.path(), "");
    let rest = Rest::new(&server);
    let admin = As::Basic("admin", ADMIN_PASSWORD);
    let alice = As::Basic("alice", ALICE_PASSWORD);
    let bob = As::Basic("bob", BOB_PASSWORD);

    // Anonymous callers are asked to sign in, with a challenge.
    let me = rest.call("GET", "/users", As::Anonymous, None);
    assert_eq!((me.status, me.error_code()), (401, "UNAUTHORIZED"));
    assert_eq!(me.challenge.as_deref(), Some("Basic realm=\"portcullis\""));
    let who = rest.expect(200, "GET", "/me", As::Anonymous, None);
    assert_eq!(
        who,
        json!({"name": null, "kind": "anonymous", "token": null, "admin": false, "accounts": true, "teams": []})
    );

    // The admin adds alice and bob; alice may not add users.
    for (name, password) in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)] {
        let user = rest.expect(
            201,
            "POST",
            "/users",
            admin,
            Some(json!({"name": name, "password": password})),
        );
        assert_eq!(user["name"], name);
        assert_eq!(
            (user["admin"].clone(), user["teams"].clone()),
            (json!(false), json!([]))
        );
    }
    rest.refused(
        403,
        "DENIED",
        "POST",
        "/users",
        alice,
        Some(json!({"name": "eve", "password": "eve password"})),
    );
    rest.refused(
        409,
        "CONFLICT",
        "POST",
        "/users",
        admin,
        Some(json!({"name": "bob", "password": "another one"})),
    );
    rest.refused(
        400,
        "INVALID",
        "POST",
        "/users",
        admin,
        Some(json!({"name": "carol"})),
    );

    // alice makes team web and adds bob as a viewer.
    let web = rest.expect(
        201,
        "POST",
        "/teams",
        alice,
        Some(json!({"name": "web", "description": "the web team"})),
    );
    assert_eq!(web["members"], json!([{"user": "alice", "role": "owner"}]));
    assert_eq!(web["namespaces"], json!(["web"]));
    let web = rest.expect(
        200,
        "PUT",
        "/teams/web/members/bob",
        alice,
        Some(json!({"role": "viewer"})),
    );
    assert_eq!(
        web["members"],
        json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "viewer"}])
    );
    let bob_me = rest.expect(200, "GET", "/me", bob, None);
    assert_eq!(bob_me["teams"], json!([{"team": "web", "role": "viewer"}]));
    assert_eq!(
        rest.call(
            "PUT",
            "/teams/web/members/bob",
            bob,
            Some(json!({"role": "owner"}))
        )
        .status,
        403
    );

    // Visibility: private at first; its owner opens it, a viewer may not.
    let ns = rest.expect(200, "GET", "/namespaces/web", bob, None);
    assert_eq!(ns["visibility"], "private");
    assert_eq!(
        ns["rights"],
        json!({"pull": true, "push": false, "delete": false, "manage": false})
    );
    assert_eq!(
        rest.call("GET", "/namespaces/web", As::Anonymous, None)
            .status,
        404
    );
    let ns = rest.expect(
        200,
        "PATCH",
        "/namespaces/web",
        alice,
        Some(json!({"visibility": "public"})),
    );
    assert_eq!(ns["visibility"], "public");
    rest.refused(
        403,
        "DENIED",
        "PATCH",
        "/namespaces/web",
        bob,
        Some(json!({"visibility": "private"})),
    );

    // A CI token for web, pull and push; its secret is shown once.
    let created = rest.expect(
        201,
        "POST",
        "/tokens",
        alice,
        Some(json!({"name": "ci", "namespaces": ["web"], "actions": ["pull", "push"], "expires_days": 30})),
    );
    let secret = created["secret"].as_str().unwrap().to_string();
    let token_id = created["token"]["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pct_"), "{secret}");
    assert_eq!(created["token"]["actions"], json!(["pull", "push"]));
    assert_eq!(created["token"]["namespaces"], json!(["web"]));
    let listed = rest.expect(200, "GET", "/tokens", alice, None);
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is shown once"
    );
    let with_token = As::Basic("alice", &secret);
    let token_me = rest.expect(200, "GET", "/me", with_token, None);
    assert_eq!(
        (token_me["kind"].clone(), token_me["token"].clone()),
        (json!("token"), json!(token_id))
    );
    assert_eq!(
        rest.call(
            "POST",
            "/teams",
            with_token,
            Some(json!({"name": "sneaky"}))
        )
        .status,
        403
    );

    // skopeo pushes with the token; bob, a viewer, cannot push.
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1");
    let pushed = skopeo_push_as(
        &env,
        &img,
        &server,
        "web/app:1",
        Some(&format!("alice:{secret}")),
    );
    assert!(
        pushed.status.success(),
        "push with the token: {}\n{}",
        pushed.stderr,
        server.log()
    );
    assert_refused(
        &skopeo_push_as(
            &env,
            &img,
            &server,
            "web/app:2",
            Some(&format!("bob:{BOB_PASSWORD}")),
        ),
        "bob (viewer)",
    );

    // Revoked, the token is refused by the registry and the REST API alike.
    rest.expect(204, "DELETE", &format!("/tokens/{token_id}"), alice, None);
    assert_refused(
        &skopeo_push_as(
            &env,
            &img,
            &server,
            "web/app:3",
            Some(&format!("alice:{secret}")),
        ),
        "a revoked token",
    );
    assert_eq!(rest.call("GET", "/me", with_token, None).status, 401);
    assert_eq!(
        rest.expect(200, "GET", "/tokens", alice, None),
        json!({"tokens": []})
    );

    // The tag, with its digest, size and platform; public, so anonymous sees it.
    let tag = json!({
        "tag": "1",
        "digest": img.manifest_digest,
        "media_type": OCI_MANIFEST_TYPE,
        "size": total_size(&img),
        "platforms": ["linux/amd64"],
    });
    let tags = rest.expect(200, "GET", "/repositories/web/app/tags", bob, None);
    assert_eq!(
        tags,
        json!({"repository": "web/app", "tags": [tag], "next": null})
    );
    let repos = rest.expect(
        200,
        "GET",
        "/repositories?namespace=web",
        As::Anonymous,
        None,
    );
    assert_eq!(
        repos,
        json!({"repositories": [{"name": "web/app", "namespace": "web", "actions": ["pull"]}], "next": null})
    );
    let manifest = rest.expect(200, "GET", "/repositories/web%2Fapp/manifests/1", bob, None);
    assert_eq!(manifest["digest"], img.manifest_digest.as_str());
    assert_eq!(manifest["config"]["digest"], img.config_digest.as_str());
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, img.layer_digests);
    assert_eq!(manifest["total_size"], total_size(&img));
    assert_eq!(manifest["referrers"], json!([]));
    // Private again: anonymous callers see nothing, and are asked to sign in for tags.
    rest.expect(
        200,
        "PATCH",
        "/namespaces/web",
        alice,
        Some(json!({"visibility": "private"})),
    );
    let repos = rest.expect(200, "GET", "/repositories", As::Anonymous, None);
    assert_eq!(repos, json!({"repositories": [], "next": null}));
    rest.refused(
        401,
        "UNAUTHORIZED",
        "GET",
        "/repositories/web/app/tags",
        As::Anonymous,
        None,
    );

    // Deleting the tag: refused to bob (a viewer), done for alice (the owner).
    rest.refused(
        403,
        "DENIED",
        "DELETE",
        "/repositories/web/app/tags/1",
        bob,
        None,
    );
    rest.expect(204, "DELETE", "/repositories/web/app/tags/1", alice, None);
    let tags = rest.expect(200, "GET", "/repositories/web/app/tags", alice, None);
    assert_eq!(tags["tags"], json!([]));
    rest.refused(
        404,
        "NOT_FOUND",
        "DELETE",
        "/repositories/web/app/tags/1",
        alice,
        None,
    );
    // The manifest stays until deleted by digest.
    rest.expect(
        204,
        "DELETE",
        &format!("/repositories/web/app/manifests/{}", img.manifest_digest),
        alice,
        None,
    );
    assert_eq!(
        rest.call(
            "GET",
            &format!("/repositories/web/app/manifests/{}", img.manifest_digest),
            alice,
            None
        )
        .status,
        404
    );

    // The activity log has every change, by whom; the recorder commits moments later.
    let change = |actor: &str, action: &str, target: &str, detail: &str| {
        (
            actor.to_string(),
            action.to_string(),
            target.to_string(),
            detail.to_string(),
        )
    };
    let token_target = format!("token:{token_id}");
    let expected = vec![
        change("admin", "user.create", "user:alice", ""),
        change("admin", "user.create", "user:bob", ""),
        change("alice", "team.create", "team:web", ""),
        change("alice", "member.set", "team:web", "bob viewer"),
        change("alice", "namespace.visibility", "namespace:web", "public"),
        change("alice", "token.create", &token_target, "ci"),
        change("alice", "push", "web/app", "1"),
        change("alice", "token.revoke", &token_target, "of alice"),
        change("alice", "namespace.visibility", "namespace:web", "private"),
        change("alice", "delete", "web/app", "1"),
        change("alice", "delete", "web/app", &img.manifest_digest),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let page = rest.expect(200, "GET", "/activity?n=100", admin, None);
        if changes(&page) == expected || std::time::Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(changes(&logged), expected);
    assert_eq!(logged["next"], Value::Null);
    assert_eq!(logged["entries"][0]["client"], "127.0.0.1");
    // bob sees what happened to the repository he may pull, not who changed what
    // else, nor from where.
    let seen = rest.expect(200, "GET", "/activity", bob, None);
    assert_eq!(
        changes(&seen),
        expected[6..7]
            .iter()
            .chain(&expected[9..])
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(seen["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.get("client").is_none()));
    let filtered = rest.expect(200, "GET", "/activity?action=token.create", alice, None);
    assert_eq!(changes(&filtered), expected[5..6]);
    let page = rest.expect(200, "GET", "/activity?n=2&actor=alice", admin, None);
    assert_eq!(changes(&page), expected[9..]);
    let cursor = page["next"].as_str().unwrap();
    let page = rest.expect(
        200,
        "GET",
        &format!("/activity?n=2&actor=alice&cursor={cursor}"),
        admin,
        None,
    );
    assert_eq!(changes(&page), expected[7..9]);
    // Everything at once as JSON lines, oldest first.
    let lines = rest.call("GET", "/activity?format=jsonl&actor=admin", admin, None);
    assert_eq!(lines.status, 200);
    let lines: Vec<Value> = lines
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let targets: Vec<&str> = lines
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["user:alice", "user:bob"]);
    rest.refused(
        400,
        "INVALID",
        "GET",
        "/activity?since=yesterday",
        admin,
        None,
    );
}

/// Whether schemathesis can run here; `Err` says why not.
fn schemathesis_available() -> Result<(), String> {
    match std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "schemathesis --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!(
            "schemathesis is not installed ({e}); `pip install schemathesis` as .ci/run does"
        )),
    }
}

#[test]
fn schemathesis_finds_no_server_errors_and_every_answer_matches_the_document() {
    if let Err(reason) = schemathesis_available() {
        if std::env::var_os(REQUIRE_SCHEMATHESIS).is_some_and(|v| !v.is_empty() && v != "0") {
            panic!("{REQUIRE_SCHEMATHESIS} is set, and {reason}");
        }
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Schemathesis also sends wrong credentials on purpose; the failure limit would
    // soon answer everything with 429.
    let server = server_with_admin(dir.path(), "[auth]\nmax_failures = 1000000\n");
    let rest = Rest::new(&server);
    let admin = As::Basic("admin", ADMIN_PASSWORD);
    // Some data for the generated requests to meet: users, a team with a member, a
    // robot, a token, an image.
    for (name, password) in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)] {
        rest.expect(
            201,
            "POST",
            "/users",
            admin,
            Some(json!({"name": name, "password": password})),
        );
    }
    let alice = As::Basic("alice", ALICE_PASSWORD);
    rest.expect(201, "POST", "/teams", alice, Some(json!({"name": "web"})));
    rest.expect(
        200,
        "PUT",
        "/teams/web/members/bob",
        alice,
        Some(json!({"role": "contributor"})),
    );
    rest.expect(
        201,
        "POST",
        "/namespaces/web/robots",
        alice,
        Some(json!({"name": "ci", "actions": ["pull"]})),
    );
    rest.expect(
        201,
        "POST",
        "/tokens",
        admin,
        Some(json!({"name": "ci", "actions": ["pull"]})),
    );
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1");
    let pushed = skopeo_push_as(
        &env,
        &img,
        &server,
        "web/app:1",
        Some(&format!("admin:{ADMIN_PASSWORD}")),
    );
    assert!(pushed.status.success(), "push: {}", pushed.stderr);

    let url = format!(
        "{}/api/v1/openapi.json",
        server.base_url().trim_end_matches('/')
    );
    let report = dir.path().join("schemathesis");
    let mut command = std::process::Command::new("schemathesis");
    command
        .args(["run", &url, "--auth", &format!("admin:{ADMIN_PASSWORD}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "30",
            "--seed",
            "12",
            "--workers",
            "2",
            "--request-timeout",
            "20",
            "--no-color",
        ])
        .arg("--report-dir")
        .arg(&report)
        // Its cache (.schemathesis/) goes there too, not into the checkout.
        .current_dir(dir.path())
        .env("NO_COLOR", "1");
    common::remove_proxy_env(&mut command);
    let out = run_with_timeout(&mut command, SCHEMATHESIS_TIMEOUT);
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{}\n{}\nserver log:\n{}",
        out.status,
        out.stdout_str(),
        out.stderr,
        server.log()
    );
    println!("{}", out.stdout_str());
}
