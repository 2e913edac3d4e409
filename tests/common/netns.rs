//! Runs one `#[test]` inside a fresh network namespace that has nothing but `lo`.
//!
//! Clients such as dockerd, ctr, skopeo and podman fall back to the real Docker Hub
//! when a mirror fails. Inside such a namespace that fallback fails at once (network
//! unreachable), and the portcullis server, fake upstreams, clients and the test's own
//! HTTP calls all share the namespace's loopback.
//!
//! ```ignore
//! #[test]
//! fn docker_pulls_through_mirror() {
//!     if !in_fresh_netns() {
//!         return; // the outer run: the body ran (and passed) in the namespace
//!     }
//!     // ... the body, run inside the namespace
//! }
//! ```
//!
//! How: the outer run creates `ip netns add portcullis-test-PID-N`, brings `lo` up and
//! re-executes this test binary for this one test only (`--exact NAME
//! --include-ignored --nocapture --test-threads=1`) with [`INNER_RUN_ENV`] set, entering
//! the namespace between fork and exec. It asserts that exactly one test ran and
//! passed, and deletes the namespace afterwards (also on panic, killing whatever
//! processes are still left in it).
//!
//! The test name comes from libtest itself: it runs every test on a thread named after
//! the test's path inside the test crate (`docker_pulls` for a function at the top of
//! `tests/daemons.rs`, `mirror::docker_pulls` inside `mod mirror`), which is exactly
//! what `--exact` matches, with or without `--test-threads=1`. `module_path!()`, by
//! contrast, starts with the crate name (`daemons::mirror`), which `--exact` does not.
//!
//! Why not `ip netns exec`: it also remounts `/sys`, which drops the cgroup mounts under
//! `/sys/fs/cgroup`, and dockerd then refuses to start ("Devices cgroup isn't mounted").
//! Instead the inner run gets its own mount namespace (slave to the host's, so mounts
//! that dockerd makes on its data root stay inside and vanish with the run) and joins
//! the network namespace with `setns`; `/sys` stays the host's.

// Each test binary uses only part of the shared harness.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::run_with_timeout;

/// Set (to the namespace name) for the inner run. Deliberately not `PORTCULLIS_*`: the
/// server reads those as configuration and it inherits this environment.
pub const INNER_RUN_ENV: &str = "TEST_NETNS_NAME";
/// Upper bound for one whole inner run (the test body).
const INNER_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound for one `ip` call.
const IP_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for a killed leftover process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes namespace names unique within this test process (the pid does across processes).
static NAMESPACE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// In the outer run: runs the calling test inside a fresh network namespace, asserts
/// that it passed there and returns false. In the inner run (inside the namespace):
/// returns true, and the caller runs its body. Call it first thing in a `#[test]`.
///
/// Panics with an `ENVIRONMENT:` message when not root or `ip` (iproute2) is missing,
/// so such a test can never pass without having run.
pub fn in_fresh_netns() -> bool {
    let test_name = current_test_name();
    if let Some(namespace) = std::env::var_os(INNER_RUN_ENV) {
        let namespace = namespace.to_string_lossy().into_owned();
        assert_inside(&namespace);
        return true;
    }
    assert_environment();
    become_subreaper();
    let namespace = Namespace::create();
    let exe = std::env::current_exe().expect("path of the running test binary");
    let ns_file = File::open(namespace.path())
        .unwrap_or_else(|e| panic!("open {}: {e}", namespace.path().display()));
    let mut inner = Command::new(&exe);
    inner
        .args([
            "--exact",
            &test_name,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_RUN_ENV, &namespace.name);
    let ns_fd = ns_file.as_raw_fd();
    // SAFETY: between fork and exec only raw system calls are made (no allocation, no
    // locks); `ns_file` outlives the spawn, so `ns_fd` stays open.
    unsafe {
        inner.pre_exec(move || enter_namespaces(ns_fd));
    }
    let out = run_with_timeout(&mut inner, INNER_RUN_TIMEOUT);
    drop(ns_file);
    let stdout = out.stdout_str();
    // libtest shows this only when the outer test fails (or with --nocapture).
    eprintln!(
        "---- inner run of {test_name} in netns {} ({}) ----\nstdout:\n{stdout}\nstderr:\n{}\n---- end of inner run ----",
        namespace.name,
        out.status,
        out.stderr
    );
    assert!(
        out.status.success(),
        "{test_name} failed inside netns {} ({}); its output is above",
        namespace.name,
        out.status
    );
    // A name that matched nothing would "pass" with 0 tests.
    assert!(
        stdout.contains("test result: ok. 1 passed;"),
        "the inner run of {test_name} did not run exactly that one test; its output is above"
    );
    false
}

/// Whether this process is the inner run of [`in_fresh_netns`], i.e. inside a private
/// network namespace with only loopback.
pub fn is_inner_run() -> bool {
    std::env::var_os(INNER_RUN_ENV).is_some()
}

/// The libtest name of the running test, from its thread name (see the module docs).
fn current_test_name() -> String {
    match thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        other => panic!(
            "in_fresh_netns() must be called on the thread libtest runs a #[test] on \
             (named after the test); this thread is {other:?}"
        ),
    }
}

/// Daemons orphaned by a killed inner run then become children of this process, so the
/// namespace guard can reap them (PID 1 here does not).
fn become_subreaper() {
    // SAFETY: prctl(2) with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(
        rc,
        0,
        "prctl(PR_SET_CHILD_SUBREAPER): {}",
        std::io::Error::last_os_error()
    );
}

/// SIGKILLs `pid` and, when it is our child (an orphan, see [`become_subreaper`]),
/// reaps it, waiting at most [`REAP_TIMEOUT`].
fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill(2) and waitpid(2) on a pid inside our own namespace; no memory passed.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + REAP_TIMEOUT;
    // 0: not exited yet; pid: reaped; -1: not our child (nothing to reap).
    while unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
}

/// In the child between fork and exec: a mount namespace of its own whose mounts do not
/// propagate back to the host, then the network namespace behind `ns_fd`.
fn enter_namespaces(ns_fd: i32) -> std::io::Result<()> {
    let check = |rc: i32| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on valid arguments (static C strings, an open fd).
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        check(libc::setns(ns_fd, libc::CLONE_NEWNET))
    }
}

/// Panics unless the inner run really is in the namespace it was told about (the
/// marker could also come from a stray environment).
fn assert_inside(namespace: &str) {
    let ours = std::fs::metadata("/proc/self/ns/net").expect("stat /proc/self/ns/net");
    let path = namespace_path(namespace);
    let theirs = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{INNER_RUN_ENV}={namespace}, but {}: {e}", path.display()));
    assert!(
        ours.dev() == theirs.dev() && ours.ino() == theirs.ino(),
        "{INNER_RUN_ENV}={namespace} is set, but this process is not in that network namespace"
    );
}

fn assert_environment() {
    // SAFETY: geteuid(2) cannot fail. (Not `is_root()`: that needs `id` in PATH.)
    let is_root = unsafe { libc::geteuid() } == 0;
    assert!(
        is_root,
        "ENVIRONMENT: this test runs inside a network namespace of its own and needs root \
         (`ip netns add`, setns); run the tests as root (CI does)"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.as_ref().is_ok_and(|o| o.status.success()),
        "ENVIRONMENT: this test needs `ip` from iproute2 (apt-get install iproute2): {ip:?}"
    );
}

fn namespace_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `ip ARGS` and panics with its output when it fails.
fn ip(args: &[&str]) -> String {
    let out = run_with_timeout(Command::new("ip").args(args), IP_TIMEOUT);
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        out.stderr
    );
    out.stdout_str()
}

/// A named network namespace with `lo` up; on drop, kills the processes still in it
/// and deletes it.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Namespace {
        let name = format!(
            "portcullis-test-{}-{}",
            std::process::id(),
            NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        // From here on the guard deletes it, whatever fails next.
        let namespace = Namespace { name };
        ip(&["-n", &namespace.name, "link", "set", "lo", "up"]);
        namespace
    }

    fn path(&self) -> PathBuf {
        namespace_path(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Left over only when the inner run was killed (timeout): its daemons.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    eprintln!("netns {}: killing leftover process {pid}", self.name);
                    kill_and_reap(pid);
                }
            }
        }
        let deleted = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        if !deleted.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("could not delete netns {}: {deleted:?}", self.name);
        }
    }
}
