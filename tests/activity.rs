//! The activity log against the real binary.
//!
//! * skopeo pushes an image, pulls it twice, a DELETE removes its manifest; SIGTERM
//!   stops the server, whose drain saves what waits; `portcullis activity export`
//!   then shows exactly one push (with the tag), one pull entry counting both pulls
//!   in their hour, and one delete (with the digest), and its filters choose among them.
//! * While a server runs, the export says that the server holds the log and where to
//!   ask instead; on a directory without a log it says so.

#[allow(dead_code)]
mod common;

use common::netns::in_fresh_netns;
use common::{
    portcullis, raw_exchange, run_ok, run_with_timeout, skopeo_push, ContainersEnv, ImageFixture,
    Server,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(120);
const HOUR_MS: u64 = 3_600_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `portcullis activity export --data DATA ARGS...`, parsed line by line.
fn export(data: &Path, args: &[&str]) -> Vec<Value> {
    let out = run_ok(
        portcullis()
            .args(["activity", "export", "--data"])
            .arg(data)
            .args(args),
        TIMEOUT,
    );
    out.stdout_str()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// An entry's time, checked to lie within `range` (unix milliseconds), then removed so
/// that the rest of the entry can be compared exactly.
fn time_within(entry: &mut Value, range: std::ops::RangeInclusive<u64>) {
    let time = entry
        .as_object_mut()
        .unwrap()
        .remove("time")
        .and_then(|t| t.as_u64())
        .unwrap_or_else(|| panic!("no time in {entry}"));
    assert!(range.contains(&time), "{time} not in {range:?}: {entry}");
}

#[test]
fn a_push_two_pulls_and_a_delete_are_three_entries_after_sigterm() {
    if !in_fresh_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut server = Server::start_with_data(&data);
    let env = ContainersEnv::new();
    let img = ImageFixture::small("1.0");

    let started = now_ms();
    skopeo_push(&env, &img, &server, "team/app:1.0");
    let pushed = now_ms();
    // Both pulls in one hour: wait out an hour about to end.
    let left_in_hour = HOUR_MS - now_ms() % HOUR_MS;
    if left_in_hour < 60_000 {
        std::thread::sleep(Duration::from_millis(left_in_hour + 1_000));
    }
    let pulls_began = now_ms();
    let remote = format!("docker://{}/team/app:1.0", server.host_port());
    for n in 0..2 {
        let layout = dir.path().join(format!("pulled-{n}"));
        let dest = format!("oci:{}:1.0", layout.display());
        run_ok(
            &mut env.skopeo(&["copy", "--src-tls-verify=false", &remote, &dest]),
            TIMEOUT,
        );
    }
    let pulled = now_ms();
    assert_eq!(
        pulls_began / HOUR_MS,
        pulled / HOUR_MS,
        "the pulls took over a minute"
    );
    let request = format!(
        "DELETE /v2/team/app/manifests/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        img.manifest_digest,
        server.host_port()
    );
    let (status, _, body) = raw_exchange(server.port(), request.as_bytes(), TIMEOUT);
    assert!(status.contains(" 202 "), "{status}: {body}");
    let deleted = now_ms();

    run_ok(
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(server.pid().to_string()),
        Duration::from_secs(10),
    );
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits");
    assert!(status.success(), "{status}");

    let entries = export(&data, &[]);
    let times: Vec<u64> = entries
        .iter()
        .map(|e| e["time"].as_u64().unwrap())
        .collect();
    assert!(times.is_sorted(), "oldest first: {entries:#?}");
    let [mut push, mut pull, mut delete] = ["push", "pull", "delete"].map(|action| {
        let found: Vec<&Value> = entries.iter().filter(|e| e["action"] == action).collect();
        assert_eq!(found.len(), 1, "one {action}: {entries:#?}");
        found[0].clone()
    });
    assert_eq!(entries.len(), 3, "{entries:#?}");
    time_within(&mut push, started..=pushed);
    // The pulls count at the start of their hour.
    let hour = pulls_began - pulls_began % HOUR_MS;
    time_within(&mut pull, hour..=hour);
    time_within(&mut delete, pulled..=deleted);
    let anonymous = |action: &str, detail: &str, count: u64| {
        json!({
            "client": "127.0.0.1",
            "action": action,
            "target": "team/app",
            "detail": detail,
            "count": count,
        })
    };
    assert_eq!(push, anonymous("push", "1.0", 1));
    assert_eq!(pull, anonymous("pull", "1.0", 2));
    assert_eq!(delete, anonymous("delete", &img.manifest_digest, 1));

    let actions = |args: &[&str]| -> Vec<String> {
        export(&data, args)
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(actions(&["--action", "pull"]), ["pull"]);
    assert_eq!(actions(&["--repository", "team/"]).len(), 3);
    assert!(actions(&["--repository", "other/"]).is_empty());
    assert!(
        actions(&["--actor", "alice"]).is_empty(),
        "anonymous pushes"
    );
    let after_delete =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(deleted + 1))
            .to_string();
    assert!(actions(&["--since", &after_delete]).is_empty());
    assert_eq!(actions(&["--until", &after_delete]).len(), 3);
}

#[test]
fn the_export_points_to_the_server_that_holds_the_log() {
    let server = Server::start();
    let held = run_with_timeout(
        portcullis()
            .args(["activity", "export", "--data"])
            .arg(server.data_dir()),
        TIMEOUT,
    );
    assert_eq!(held.status.code(), Some(2), "{}", held.stderr);
    let file = server.data_dir().join("activity.redb");
    for fragment in [
        &format!("{} is open in another process", file.display()),
        "GET /api/v1/activity?format=jsonl",
    ] {
        assert!(
            held.stderr.contains(fragment),
            "{fragment:?}: {}",
            held.stderr
        );
    }
    assert!(held.stdout.is_empty());

    let empty = tempfile::tempdir().unwrap();
    let none = run_with_timeout(
        portcullis()
            .args(["activity", "export", "--data"])
            .arg(empty.path()),
        TIMEOUT,
    );
    assert_eq!(none.status.code(), Some(2));
    assert!(
        none.stderr.contains("holds no activity log"),
        "{}",
        none.stderr
    );
    assert!(!empty.path().join("activity.redb").exists());
}
