//! containerd and dockerd as plain child processes of the test, every path under a
//! temp dir of their own: no system service, no `/var/lib`, no `/etc/docker`.
//!
//! Both fall back to the real Docker Hub when a mirror fails, so they start only inside
//! [`in_fresh_netns`](super::netns::in_fresh_netns), where that fallback fails at once.
//!
//! ```ignore
//! let dockerd = Dockerd::start(DockerdOptions {
//!     registry_mirrors: vec![server.base_url()],
//!     ..Default::default()
//! });
//! run_ok(&mut dockerd.docker(&["pull", "team/app:v1"]), PULL_TIMEOUT);
//! ```

// Each test binary uses only part of the shared harness.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::netns::is_inner_run;
use super::{log_tail, remove_proxy_env, run_ok, run_with_timeout, POLL_INTERVAL};

/// Debian's docker.io client; an unrelated `docker` may come first in PATH.
const DOCKER: &str = "/usr/bin/docker";
/// Debian's docker.io daemon.
const DOCKERD: &str = "/usr/sbin/dockerd";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
/// Upper bound for a daemon to answer on its socket (it takes well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one readiness probe (`docker version`, `ctr version`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for `docker image inspect` and `ctr images ls` / `ctr content ls`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to shut down on SIGTERM before it is killed. A clean stop
/// lets dockerd undo the bind mount it puts on its data root.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The containerd namespace `ctr` uses.
const CTR_NAMESPACE: &str = "default";

/// A daemon child process: stopped (SIGTERM, then SIGKILL) and awaited on drop, its log
/// tail printed when the test panics.
struct DaemonProcess {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
}

impl DaemonProcess {
    /// Spawns `command` (output to `log_path`) and waits until `ready()` holds, polling
    /// within [`READY_TIMEOUT`]; panics with the log when it exits or stays unready.
    fn spawn(
        name: &'static str,
        mut command: Command,
        log_path: PathBuf,
        ready: impl Fn() -> bool,
    ) -> DaemonProcess {
        let log = File::create(&log_path).expect("create daemon log");
        let log_err = log.try_clone().expect("clone daemon log handle");
        remove_proxy_env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        // From here on, a panic stops it again (and shows its log).
        let mut daemon = DaemonProcess {
            name,
            child,
            log_path,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait().expect("poll daemon") {
                panic!("{name} exited with {status} before becoming ready");
            }
            if ready() {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become ready within {READY_TIMEOUT:?}"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn log(&self) -> String {
        log_tail(&self.log_path)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been awaited yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}\n---- end of {} log ----",
                self.name,
                self.log_path.display(),
                self.log(),
                self.name
            );
        }
    }
}

/// Panics with an `ENVIRONMENT:` message unless every binary exists, and unless this is
/// the inner run of `in_fresh_netns` (a daemon outside could reach the real Docker Hub).
fn assert_can_start(what: &str, binaries: &[&str]) {
    for binary in binaries {
        assert!(
            Path::new(binary).is_file(),
            "ENVIRONMENT: {what} needs {binary} (Debian: apt-get install docker.io containerd)"
        );
    }
    assert!(
        is_inner_run(),
        "{what} starts only inside in_fresh_netns(): it falls back to the real Docker Hub"
    );
}

/// A temp dir under `/tmp` (not `$TMPDIR`): unix socket paths must stay short (108 bytes).
fn daemon_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("create daemon temp dir")
}

/// Whether `probe` succeeds within [`PROBE_TIMEOUT`], once `socket` exists.
fn answers(socket: &Path, mut probe: Command) -> bool {
    socket.exists() && run_with_timeout(&mut probe, PROBE_TIMEOUT).status.success()
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// A private containerd (CRI off): root, state, sockets and opt under its temp dir.
pub struct Containerd {
    // Declared first: stopped before the directory is removed.
    process: DaemonProcess,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        assert_can_start("Containerd", &[CONTAINERD, CTR]);
        let dir = daemon_dir("portcullis-containerd-");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let socket = dir.path().join("containerd.sock");
        // The ttrpc socket is the grpc address plus ".ttrpc".
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{socket}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = path("root"),
            state = path("state"),
            socket = socket.display(),
            opt = path("opt"),
        );
        let config_path = dir.path().join("containerd.toml");
        fs::write(&config_path, config).expect("write containerd config");
        let mut command = Command::new(CONTAINERD);
        command.arg("--config").arg(&config_path);
        let probe = || answers(&socket, ctr_command(&socket, &["version"]));
        let process = DaemonProcess::spawn(
            "containerd",
            command,
            dir.path().join("containerd.log"),
            probe,
        );
        Containerd {
            process,
            socket,
            dir,
        }
    }

    /// The grpc socket (`dockerd --containerd`, `ctr -a`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ctr -a SOCKET ARGS...` with the native snapshotter (pulls unpack without overlay).
    pub fn ctr(&self, args: &[&str]) -> Command {
        ctr_command(&self.socket, args)
    }

    /// The target (manifest or index) digest of an image in `ctr images ls`, if present.
    pub fn image_digest(&self, reference: &str) -> Option<String> {
        let list = run_ok(&mut self.ctr(&["images", "ls"]), QUERY_TIMEOUT).stdout_str();
        // Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS.
        list.lines().skip(1).find_map(|line| {
            let mut columns = line.split_whitespace();
            let is_it = columns.next() == Some(reference);
            is_it.then(|| columns.nth(1)).flatten().map(str::to_string)
        })
    }

    /// The digests in containerd's content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> Vec<String> {
        run_ok(&mut self.ctr(&["content", "ls", "-q"]), QUERY_TIMEOUT)
            .stdout_str()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Writes `certs.d/REGISTRY_HOST/hosts.toml` so that `ctr images pull --hosts-dir DIR
    /// REGISTRY_HOST/...` tries `mirror_url` (`http://127.0.0.1:PORT`) for pull and
    /// resolve before the registry itself (`registry-1.docker.io` for `docker.io`).
    /// Returns DIR. ctr adds `?ns=REGISTRY_HOST` to every request it sends the mirror.
    pub fn write_mirror_hosts_dir(&self, registry_host: &str, mirror_url: &str) -> PathBuf {
        let hosts_dir = self.dir.path().join("certs.d");
        let host_dir = hosts_dir.join(registry_host);
        fs::create_dir_all(&host_dir).expect("create hosts.toml dir");
        let server = match registry_host {
            "docker.io" => "https://registry-1.docker.io".to_string(),
            other => format!("https://{other}"),
        };
        let hosts = format!(
            "server = \"{server}\"\n\n\
             [host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        fs::write(host_dir.join("hosts.toml"), hosts).expect("write hosts.toml");
        hosts_dir
    }

    /// The last part of containerd's log.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn ctr_command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(CTR);
    command
        .arg("-a")
        .arg(socket)
        .args(args)
        .env("CONTAINERD_SNAPSHOTTER", "native")
        .env("CONTAINERD_NAMESPACE", CTR_NAMESPACE)
        .env_remove("CONTAINERD_ADDRESS");
    remove_proxy_env(&mut command);
    command
}

// ---------------------------------------------------------------------------
// dockerd
// ---------------------------------------------------------------------------

/// What goes into dockerd's `daemon.json`.
#[derive(Default, Clone, Debug)]
pub struct DockerdOptions {
    /// `registry-mirrors`: tried for Docker Hub (`docker.io`) images before the Hub,
    /// e.g. `http://127.0.0.1:PORT`.
    pub registry_mirrors: Vec<String>,
    /// `insecure-registries`. Not needed for 127.0.0.0/8, which dockerd always treats
    /// as insecure (it tries HTTPS, then plain HTTP).
    pub insecure_registries: Vec<String>,
}

/// A private dockerd (vfs storage, no bridge, no iptables, no IP forwarding) on its own
/// [`Containerd`], with a `docker` client bound to it.
pub struct Dockerd {
    // Stopped in this order: dockerd, then its containerd, then the directory removed.
    process: DaemonProcess,
    containerd: Containerd,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Dockerd {
    pub fn start(options: DockerdOptions) -> Dockerd {
        assert_can_start("Dockerd", &[DOCKERD, DOCKER, CONTAINERD, CTR]);
        let containerd = Containerd::start();
        let dir = daemon_dir("portcullis-dockerd-");
        let path = |name: &str| dir.path().join(name);
        let socket = path("docker.sock");
        fs::create_dir(path("client-config")).expect("create docker client config dir");
        let config = json!({
            "registry-mirrors": options.registry_mirrors,
            "insecure-registries": options.insecure_registries,
            // dockerd 20.10 writes its identity key to /etc/docker/key.json otherwise.
            "deprecated-key-path": path("key.json"),
        });
        fs::write(path("daemon.json"), config.to_string()).expect("write daemon.json");
        let mut command = Command::new(DOCKERD);
        command
            .arg("--config-file")
            .arg(path("daemon.json"))
            .arg("--data-root")
            .arg(path("data"))
            .arg("--exec-root")
            .arg(path("exec"))
            .arg("--pidfile")
            .arg(path("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(containerd.socket())
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ]);
        let probe = || {
            answers(
                &socket,
                docker_command(
                    &socket,
                    &dir,
                    &["version", "--format", "{{.Server.Version}}"],
                ),
            )
        };
        let process = DaemonProcess::spawn("dockerd", command, path("dockerd.log"), probe);
        Dockerd {
            process,
            containerd,
            socket,
            dir,
        }
    }

    /// `/usr/bin/docker ARGS...` talking to this dockerd, with a private `DOCKER_CONFIG`.
    pub fn docker(&self, args: &[&str]) -> Command {
        docker_command(&self.socket, &self.dir, args)
    }

    /// `docker image inspect REFERENCE`: the one image object.
    pub fn inspect_image(&self, reference: &str) -> serde_json::Value {
        let out = run_ok(
            &mut self.docker(&["image", "inspect", reference]),
            QUERY_TIMEOUT,
        );
        let mut images: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("docker image inspect JSON");
        assert_eq!(images.len(), 1, "docker image inspect {reference}");
        images.remove(0)
    }

    /// The containerd this dockerd runs on.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The last part of dockerd's log.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn docker_command(socket: &Path, dir: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(DOCKER);
    command
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", dir.path().join("client-config"));
    for variable in ["DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"] {
        command.env_remove(variable);
    }
    remove_proxy_env(&mut command);
    command
}
