//! The web UI in a real browser: `tests/ui/e2e.mjs` drives Debian's chromium
//! (playwright-core, no downloaded browser) through the pages against the real binary
//! with accounts on, runs axe-core on every page it visits and takes screenshots
//! (`target/ui-screenshots/`). Between its two phases this test pushes an image with
//! skopeo, signed in with the CI token the first phase created in the UI.
//!
//! Where chromium, node or the npm packages are missing, the test says why and passes,
//! unless `REQUIRE_UI_TEST=1` (set by `.ci/run`, which installs them).

// This test uses a small part of the shared harness.
#[allow(dead_code)]
mod common;

use common::{portcullis, run_with_timeout, skopeo_push_as, ContainersEnv, ImageFixture, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-password-1";
/// One phase of the browser script, page loads and all.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

fn ui_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

/// `target/ui-screenshots`, beside the test binaries (`target/debug/deps/ui-...`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lies in target/debug/deps");
    target.join("ui-screenshots")
}

fn works(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What is missing for the browser test, after installing the npm packages if npm can.
fn missing_tools() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if !works("node", "--version") {
        return Some("node is missing (apt-get install nodejs)".into());
    }
    if !works("skopeo", "--version") {
        return Some("skopeo is missing (apt-get install skopeo)".into());
    }
    let dir = ui_tests_dir();
    if !dir.join("node_modules/playwright-core").is_dir() {
        if !works("npm", "--version") {
            return Some(
                "tests/ui/node_modules is missing and so is npm (apt-get install npm)".into(),
            );
        }
        let out = run_with_timeout(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir),
            NPM_TIMEOUT,
        );
        if !out.status.success() {
            return Some(format!("npm ci --prefix tests/ui failed: {}", out.stderr));
        }
    }
    None
}

/// `portcullis user add admin --admin` on the data directory, before the server starts.
fn add_admin(work: &Path) {
    let cli_config = work.join("cli.toml");
    std::fs::write(&cli_config, "[accounts]\nenabled = true\nbcrypt_cost = 4\n").unwrap();
    let mut add = portcullis();
    add.args(["user", "--config"])
        .arg(&cli_config)
        .arg("--data")
        .arg(work.join("data"))
        .args(["add", ADMIN, "--admin", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = add.spawn().expect("spawn portcullis user add");
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{ADMIN_PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "portcullis user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one phase of `e2e.mjs`; panics with its output (and the server's log) if it fails.
fn browser_phase(server: &Server, phase: &str, state: &Path) {
    let mut node = Command::new("node");
    node.arg(ui_tests_dir().join("e2e.mjs"))
        .arg(phase)
        .env("UI_URL", server.base_url())
        .env("UI_ADMIN_USER", ADMIN)
        .env("UI_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("UI_STATE", state)
        .env("UI_SCREENSHOTS", screenshot_dir())
        .env("UI_CHROMIUM", CHROMIUM);
    common::remove_proxy_env(&mut node);
    let out = run_with_timeout(&mut node, PHASE_TIMEOUT);
    println!(
        "---- e2e.mjs {phase} ----\n{}{}",
        out.stdout_str(),
        out.stderr
    );
    assert!(
        out.status.success(),
        "e2e.mjs {phase} failed ({}); its output is above\nserver log:\n{}",
        out.status,
        server.log()
    );
}

#[test]
fn the_web_ui_in_a_browser() {
    if let Some(missing) = missing_tools() {
        if std::env::var("REQUIRE_UI_TEST").as_deref() == Ok("1") {
            panic!("REQUIRE_UI_TEST=1 but the browser test cannot run: {missing}");
        }
        println!("skipping the browser test: {missing}");
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("portcullis-ui-")
        .tempdir()
        .unwrap();
    add_admin(work.path());
    let server = Server::start_with_config(
        "[server]\nlisten = \"127.0.0.1:{PLAIN_PORT}\"\n[accounts]\nenabled = true\nbcrypt_cost = 4\n",
        work.path(),
    );
    std::fs::create_dir_all(screenshot_dir()).unwrap();
    let state = work.path().join("state.json");

    browser_phase(&server, "before-push", &state);

    // The first phase signed in as a new user and created a CI token in the UI.
    let handed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("the first phase's state")).unwrap();
    if let Some(push) = handed.get("push") {
        let (user, token, target) = (
            push["user"].as_str().unwrap(),
            push["token"].as_str().unwrap(),
            push["target"].as_str().unwrap(),
        );
        let env = ContainersEnv::new();
        let image = ImageFixture::small("1.0");
        let creds = format!("{user}:{token}");
        let pushed = skopeo_push_as(&env, &image, &server, target, Some(&creds));
        assert!(
            pushed.status.success(),
            "skopeo push with the UI's token failed: {}\nserver log:\n{}",
            pushed.stderr,
            server.log()
        );
        // The token names alice's namespace only: team web's, which she owns, is out.
        let elsewhere = skopeo_push_as(&env, &image, &server, "web/app:1.0", Some(&creds));
        assert!(
            !elsewhere.status.success(),
            "the token pushed outside its namespaces"
        );
    }

    browser_phase(&server, "after-push", &state);
}
