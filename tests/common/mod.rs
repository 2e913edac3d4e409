//! Shared harness for portcullis integration tests.
//!
//! * [`Server`] starts the real `portcullis` binary on a free loopback port
//!   with its own data directory and kills it again on drop.
//! * [`ImageFixture`] builds an OCI image layout on disk (real gzip'd tar
//!   layers, a valid image config and manifest) for clients to push.
//! * [`run_with_timeout`] / [`run_ok`] run external tools with a hard time
//!   limit and readable failure messages.

pub mod daemons;
pub mod distribution;
pub mod fakehub;
pub mod netns;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Total time a server gets to answer `GET /v2/` with 200 (all attempts together).
const READY_BUDGET: Duration = Duration::from_secs(15);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many fresh ports are tried when the server exits before becoming ready.
const MAX_START_ATTEMPTS: usize = 5;
/// How much of the server log is shown in failure messages.
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// Ports already handed to a server by this test process, so that two tests
/// running in parallel never race for the same port.
static PORTS_IN_USE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A running `portcullis serve` child process.
pub struct Server {
    child: Child,
    /// The plain-HTTP port (for [`Server::start_with_config`] without a plain
    /// listener: the TLS port).
    port: u16,
    /// The TLS port of a server started with [`Server::start_with_config`].
    tls_port: Option<u16>,
    /// The metrics listener's port (`{METRICS_PORT}` in the config).
    metrics_port: Option<u16>,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// Holds the log file (and, for [`Server::start`], the data directory).
    _scratch: tempfile::TempDir,
}

impl Server {
    /// Starts a server on a fresh, empty data directory that is removed when
    /// the server is dropped.
    pub fn start() -> Server {
        let scratch = scratch_dir("portcullis-server-");
        let data_dir = scratch.path().join("data");
        fs::create_dir(&data_dir).expect("create data dir");
        Self::launch(scratch, data_dir)
    }

    /// Starts a server on an existing data directory owned by the caller
    /// (which therefore survives this server, e.g. for restart/crash tests).
    pub fn start_with_data(dir: &Path) -> Server {
        assert!(dir.is_dir(), "data dir {} does not exist", dir.display());
        Self::launch(scratch_dir("portcullis-server-"), dir.to_path_buf())
    }

    fn launch(scratch: tempfile::TempDir, data_dir: PathBuf) -> Server {
        let (child, ports, log_path) = spawn_until_ready(&scratch, |_| {
            let port = free_port();
            let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
            command
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data")
                .arg(&data_dir);
            Attempt {
                command,
                ports: vec![port],
                context: format!("listening on 127.0.0.1:{port}"),
                // Without authentication `/v2/` must answer 200.
                ready: |ports| probe_v2(ports[0]) == Some(200),
            }
        });
        Server {
            child,
            port: ports[0],
            tls_port: None,
            metrics_port: None,
            data_dir,
            log_path,
            _scratch: scratch,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the registry host as container tools spell it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory passed as `--data`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The last part of what the server wrote to stderr/stdout so far.
    pub fn log(&self) -> String {
        log_tail(&self.log_path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- portcullis log (port {}, data {}) ----\n{}\n---- end of portcullis log ----",
                self.port,
                self.data_dir.display(),
                log_tail(&self.log_path)
            );
        }
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.tls_port)
            .chain(self.metrics_port)
            .collect();
        release_ports(&ports);
    }
}

/// One try at starting the server: the command (arguments set, I/O not yet), the
/// loopback ports it will listen on, a description for failure messages, and when the
/// server counts as ready.
struct Attempt {
    command: Command,
    ports: Vec<u16>,
    context: String,
    ready: fn(&[u16]) -> bool,
}

fn release_ports(ports: &[u16]) {
    PORTS_IN_USE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| !ports.contains(p));
}

/// Starts the attempts `next_attempt` makes (fresh ports each time, at most
/// `MAX_START_ATTEMPTS`, within `READY_BUDGET` in all) until one is ready; returns the
/// child, its ports and its log. Panics with the logs when none becomes ready.
fn spawn_until_ready(
    scratch: &tempfile::TempDir,
    mut next_attempt: impl FnMut(usize) -> Attempt,
) -> (Child, Vec<u16>, PathBuf) {
    let deadline = Instant::now() + READY_BUDGET;
    let mut failures = Vec::new();
    for number in 1..=MAX_START_ATTEMPTS {
        let Attempt {
            mut command,
            ports,
            context,
            ready,
        } = next_attempt(number);
        let log_path = scratch.path().join(format!("server-{number}.log"));
        let log = File::create(&log_path).expect("create server log file");
        let log_out = log.try_clone().expect("clone server log handle");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn portcullis binary");
        loop {
            if let Some(status) = child.try_wait().expect("poll server process") {
                failures.push(format!(
                    "attempt {number} (ports {ports:?}, {context}): exited with {status} before becoming ready; log:\n{}",
                    log_tail(&log_path)
                ));
                release_ports(&ports);
                break;
            }
            if ready(&ports) {
                // Make sure it is *our* child that answered, not a stranger.
                thread::sleep(POLL_INTERVAL);
                if child.try_wait().expect("poll server process").is_none() {
                    return (child, ports, log_path);
                }
                continue;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                release_ports(&ports);
                panic!(
                    "portcullis did not answer on ports {ports:?} within {READY_BUDGET:?} ({context})\n\
                     earlier attempts: {failures:#?}\nserver log:\n{}",
                    log_tail(&log_path)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    panic!(
        "portcullis failed to start after {} attempt(s):\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}

fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

/// Asks the kernel for a free loopback port and releases it again.
fn free_port() -> u16 {
    for _ in 0..50 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        let mut used = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
    panic!("could not find a free loopback port");
}

/// One `GET /v2/` over a raw socket; returns the HTTP status, if any.
fn probe_v2(port: u16) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    let request =
        format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            let prefix = if start > 0 { "[...]\n" } else { "" };
            format!("{prefix}{}", String::from_utf8_lossy(&bytes[start..]))
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

// ---------------------------------------------------------------------------
// External commands
// ---------------------------------------------------------------------------

/// What a finished command produced.
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl CmdOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `cmd` (stdin closed, stdout/stderr captured), killing it after
/// `timeout`. Panics if it cannot be spawned or runs out of time; a non-zero
/// exit is returned to the caller.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    run_with_input(cmd, None, timeout)
}

#[allow(dead_code)]
/// [`run_with_timeout`] with `input` and a newline on stdin (a password, say).
pub fn run_with_stdin(cmd: &mut Command, input: &str, timeout: Duration) -> CmdOutput {
    run_with_input(cmd, Some(input), timeout)
}

fn run_with_input(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> CmdOutput {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(format!("{input}\n").as_bytes())
            .unwrap_or_else(|e| panic!("writing stdin of {what}: {e}"));
    }
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Pipes may be held open by grandchildren: wait for them only briefly.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| b"<output not available>".to_vec())
    };
    let stdout = collect(stdout);
    let stderr = String::from_utf8_lossy(&collect(stderr)).into_owned();
    match status {
        Some(status) => CmdOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "timed out after {timeout:?} (killed): {what}\nstdout:\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&stdout)
        ),
    }
}

/// Like [`run_with_timeout`] but also asserts that the command succeeded.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let what = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    assert!(
        out.status.success(),
        "command failed with {}: {what}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout_str(),
        out.stderr
    );
    out
}

fn drain<R: Read + Send + 'static>(mut reader: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

// ---------------------------------------------------------------------------
// OCI image layout fixture
// ---------------------------------------------------------------------------

pub const OCI_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Time limit for the tar/gzip calls that build a layer.
const LAYER_TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// An OCI image layout directory holding one multi-layer linux/amd64 image
/// under a ref name (tag). Everything lives in a temp dir removed on drop.
pub struct ImageFixture {
    _dir: tempfile::TempDir,
    /// The layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`).
    pub layout: PathBuf,
    /// The `org.opencontainers.image.ref.name` of the image in `index.json`.
    pub tag: String,
    /// Exact manifest bytes as stored in the layout.
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// Digests of the compressed layer blobs, in manifest order.
    pub layer_digests: Vec<String>,
    /// sha256 of each uncompressed layer tar, as listed in the config.
    pub diff_ids: Vec<String>,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
}

impl ImageFixture {
    /// A small three-layer image (a few hundred KiB in total).
    pub fn small(tag: &str) -> ImageFixture {
        Self::build(tag, &[96 * 1024, 160 * 1024, 32 * 1024])
    }

    /// Builds an image with one layer per entry of `layer_sizes`; each layer
    /// holds a random (incompressible) file of that many bytes plus a small
    /// text file, so even equal sizes give distinct layers.
    pub fn build(tag: &str, layer_sizes: &[usize]) -> ImageFixture {
        assert!(!layer_sizes.is_empty(), "an image needs at least one layer");
        let dir = scratch_dir("portcullis-image-");
        let layout = dir.path().join("layout");
        let blobs = layout.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).expect("create blobs dir");
        let work = dir.path().join("work");
        fs::create_dir(&work).expect("create work dir");

        let mut layers = Vec::new(); // (digest, size)
        let mut diff_ids = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let root = work.join(format!("rootfs{i}"));
            let content = root.join(format!("layer{i}"));
            fs::create_dir_all(content.join("sub")).expect("create layer dirs");
            write_random_file(&content.join("data.bin"), size);
            fs::write(
                content.join("sub").join("README.txt"),
                format!(
                    "portcullis test layer {i} of image {tag}\nnonce {}\n{}",
                    uuid::Uuid::new_v4(),
                    "compressible text line\n".repeat(64)
                ),
            )
            .expect("write text file");

            let tar_path = work.join(format!("layer{i}.tar"));
            run_ok(
                Command::new("tar")
                    .args([
                        "--sort=name",
                        "--mtime=@0",
                        "--owner=0",
                        "--group=0",
                        "--numeric-owner",
                        "-cf",
                    ])
                    .arg(&tar_path)
                    .arg("-C")
                    .arg(&root)
                    .arg("."),
                LAYER_TOOL_TIMEOUT,
            );
            diff_ids.push(sha256_file(&tar_path));
            run_ok(
                Command::new("gzip").arg("-n").arg("-f").arg(&tar_path),
                LAYER_TOOL_TIMEOUT,
            );
            let gz_path = work.join(format!("layer{i}.tar.gz"));
            let digest = sha256_file(&gz_path);
            let size = fs::metadata(&gz_path).expect("stat layer").len();
            fs::rename(&gz_path, blobs.join(hex_part(&digest))).expect("move layer blob");
            layers.push((digest, size));
        }

        let cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("echo {tag}"),
        ];
        let config = serde_json::to_vec(&json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": cmd,
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .expect("serialize config");
        let config_digest = write_blob(&blobs, &config);

        // Pretty-printed on purpose: a registry must keep the exact bytes.
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_TYPE,
            "config": {
                "mediaType": OCI_CONFIG_TYPE,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|(digest, size)| json!({
                "mediaType": OCI_LAYER_GZIP_TYPE,
                "digest": digest,
                "size": size,
            })).collect::<Vec<_>>(),
            "annotations": { "org.example.fixture": format!("portcullis-tests/{tag}") },
        }))
        .expect("serialize manifest");
        let manifest_digest = write_blob(&blobs, &manifest);

        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("write oci-layout");
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX_TYPE,
            "manifests": [{
                "mediaType": OCI_MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).expect("serialize index"),
        )
        .expect("write index.json");
        let _ = fs::remove_dir_all(&work);

        ImageFixture {
            _dir: dir,
            layout,
            tag: tag.to_string(),
            manifest,
            manifest_digest,
            config,
            config_digest,
            layer_digests: layers.into_iter().map(|(d, _)| d).collect(),
            diff_ids,
            cmd,
        }
    }

    /// Manifest, config and layer digests.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut all = vec![self.manifest_digest.clone(), self.config_digest.clone()];
        all.extend(self.layer_digests.iter().cloned());
        all
    }

    /// Bytes of a blob in the layout.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let path = self
            .layout
            .join("blobs")
            .join("sha256")
            .join(hex_part(digest));
        fs::read(&path).unwrap_or_else(|e| panic!("read blob {}: {e}", path.display()))
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_part(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    fs::write(blobs.join(hex_part(&digest)), bytes).expect("write blob");
    digest
}

fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read for hashing");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn write_random_file(path: &Path, size: usize) {
    let mut random = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = File::create(path).expect("create random file");
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        random.read_exact(&mut buf[..n]).expect("read /dev/urandom");
        out.write_all(&buf[..n]).expect("write random file");
        left -= n;
    }
}

// ---------------------------------------------------------------------------
// Servers started from a configuration file (TLS, authentication, limits)
// ---------------------------------------------------------------------------

/// Placeholder for the plain-HTTP port in [`Server::start_with_config`] texts.
#[allow(dead_code)]
pub const PLAIN_PORT: &str = "{PLAIN_PORT}";
/// Placeholder for the TLS port in [`Server::start_with_config`] texts.
#[allow(dead_code)]
pub const TLS_PORT: &str = "{TLS_PORT}";
/// Placeholder for the metrics listener's port in [`Server::start_with_config`] texts.
#[allow(dead_code)]
pub const METRICS_PORT: &str = "{METRICS_PORT}";
/// Placeholder for the (absolute) directory given to [`Server::start_with_config`].
#[allow(dead_code)]
pub const DIR: &str = "{DIR}";

/// The `portcullis` binary under test, as a command to add arguments to.
#[allow(dead_code)]
pub fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[allow(dead_code)]
impl Server {
    /// Starts `portcullis serve --config DIR/portcullis.toml --data DIR/data` with the
    /// working directory `dir` (so relative paths in the config, such as
    /// `certs/server.crt`, resolve inside it). Before writing the file, `{PLAIN_PORT}`
    /// and `{TLS_PORT}` are replaced with free loopback ports and `{DIR}` with `dir`.
    /// The text must use at least one of the port placeholders.
    ///
    /// Ready means every configured port gives an HTTP answer to `GET /v2/` of any
    /// status: 200, or 401 with authentication on, and on a TLS port the 400 (or 308)
    /// a plain request gets there. The data directory belongs to `dir`, so a later
    /// server started on the same `dir` sees the same content.
    pub fn start_with_config(config: &str, dir: &Path) -> Server {
        Self::start_with_config_env(config, dir, &[])
    }

    /// [`Server::start_with_config`] with extra environment variables (`RUST_LOG`, say).
    pub fn start_with_config_env(config: &str, dir: &Path, env: &[(&str, &str)]) -> Server {
        let uses_plain = config.contains(PLAIN_PORT);
        let uses_tls = config.contains(TLS_PORT);
        assert!(
            uses_plain || uses_tls,
            "the config must listen on {PLAIN_PORT} and/or {TLS_PORT}:\n{config}"
        );
        let dir = dir
            .canonicalize()
            .unwrap_or_else(|e| panic!("config dir {}: {e}", dir.display()));
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).expect("create data dir");
        let config_path = dir.join("portcullis.toml");
        let scratch = scratch_dir("portcullis-server-");
        let mut tls_port = None;
        let mut metrics_port = None;
        let (child, ports, log_path) = spawn_until_ready(&scratch, |_| {
            let plain = uses_plain.then(free_port);
            let tls = uses_tls.then(free_port);
            let metrics = config.contains(METRICS_PORT).then(free_port);
            tls_port = tls;
            metrics_port = metrics;
            let port_text = |p: Option<u16>| p.map_or_else(String::new, |p| p.to_string());
            let text = config
                .replace(PLAIN_PORT, &port_text(plain))
                .replace(TLS_PORT, &port_text(tls))
                .replace(METRICS_PORT, &port_text(metrics))
                .replace(DIR, &dir.display().to_string());
            fs::write(&config_path, &text).expect("write config file");
            let mut command = portcullis();
            command
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .arg("--data")
                .arg(&data_dir)
                .current_dir(&dir)
                .envs(env.iter().copied());
            Attempt {
                command,
                // The plain port first: it becomes `port()`. The metrics listener
                // answers `/v2/` with a 404, which counts as ready too.
                ports: plain.into_iter().chain(tls).chain(metrics).collect(),
                context: format!("config:\n{text}"),
                // With authentication or on a TLS port, any HTTP answer means ready.
                ready: |ports| ports.iter().all(|p| probe_v2(*p).is_some()),
            }
        });
        Server {
            child,
            port: ports[0],
            tls_port,
            metrics_port,
            data_dir,
            log_path,
            _scratch: scratch,
        }
    }

    /// Process id of the server, e.g. for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (re-read certificates and the htpasswd file).
    pub fn sighup(&self) {
        let out = run_with_timeout(
            Command::new("kill").arg("-HUP").arg(self.pid().to_string()),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "kill -HUP {} failed ({}): {}",
            self.pid(),
            out.status,
            out.stderr
        );
    }

    /// The TLS port; panics for a server without one.
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("this server has no TLS listener")
    }

    /// `localhost:TLS_PORT`, a name the generated server certificate covers.
    pub fn tls_host_port(&self) -> String {
        format!("localhost:{}", self.tls_port())
    }

    /// `https://localhost:TLS_PORT`
    pub fn tls_url(&self) -> String {
        format!("https://{}", self.tls_host_port())
    }

    /// The plain-HTTP port (the TLS port for a server without plain listener).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The metrics listener's port; panics for a server without one.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
            .expect("this server has no metrics listener")
    }

    /// Everything the server wrote to stderr/stdout so far.
    pub fn full_log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) for the server process to exit; its status, or `None` if it
    /// still runs at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll server process") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

// ---------------------------------------------------------------------------
// Private containers environment for skopeo and podman
// ---------------------------------------------------------------------------

/// A private containers configuration (registries.conf, policy, auth file,
/// storage) so skopeo and podman never read or write the user's own config.
pub struct ContainersEnv {
    dir: tempfile::TempDir,
}

impl ContainersEnv {
    pub fn new() -> ContainersEnv {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-containers-")
            .tempdir()
            .expect("create containers env dir");
        let p = dir.path();
        for sub in [
            "home",
            "xdg-config/containers",
            "xdg-data",
            "xdg-runtime",
            "registries.d",
            "tmp",
            "podman/root",
            "podman/runroot",
            "podman/tmp",
            "podman/net",
        ] {
            fs::create_dir_all(p.join(sub)).expect("create containers env subdir");
        }
        fs::write(
            p.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        let policy = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
        fs::write(p.join("policy.json"), policy).unwrap();
        fs::write(p.join("xdg-config/containers/policy.json"), policy).unwrap();
        fs::write(p.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        fs::write(p.join("containers.conf"), "").unwrap();
        fs::write(
            p.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p.join("podman/root").display(),
                p.join("podman/runroot").display()
            ),
        )
        .unwrap();
        ContainersEnv { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("XDG_RUNTIME_DIR", self.path("xdg-runtime"))
            .env("TMPDIR", self.path("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("REGISTRIES_CONFIG_PATH", self.path("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"));
        remove_proxy_env(&mut cmd);
        cmd
    }

    /// `skopeo --policy P --registries.d D ARGS...`
    pub fn skopeo(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("skopeo");
        cmd.arg("--policy")
            .arg(self.path("policy.json"))
            .arg("--registries.d")
            .arg(self.path("registries.d"))
            .args(args);
        cmd
    }

    /// `podman` with private storage and headless-friendly settings.
    pub fn podman(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("podman");
        cmd.arg("--root")
            .arg(self.path("podman/root"))
            .arg("--runroot")
            .arg(self.path("podman/runroot"))
            .arg("--tmpdir")
            .arg(self.path("podman/tmp"))
            .arg("--network-config-dir")
            .arg(self.path("podman/net"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
            ])
            .args(args);
        cmd
    }
}

/// Upper bound for one skopeo push.
const SKOPEO_PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Pushes the fixture image to `docker://HOST/<repo_tag>` with skopeo.
#[allow(dead_code)]
pub fn skopeo_push(env: &ContainersEnv, img: &ImageFixture, server: &Server, repo_tag: &str) {
    let out = skopeo_push_as(env, img, server, repo_tag, None);
    assert!(
        out.status.success(),
        "skopeo push to {repo_tag} failed with {}:\n{}",
        out.status,
        out.stderr
    );
}

/// Pushes the fixture image to `docker://HOST/<repo_tag>` with skopeo, signed in as
/// `creds` (`user:password`) if given; the caller judges the outcome.
#[allow(dead_code)]
pub fn skopeo_push_as(
    env: &ContainersEnv,
    img: &ImageFixture,
    server: &Server,
    repo_tag: &str,
    creds: Option<&str>,
) -> CmdOutput {
    let src = format!("oci:{}:{}", img.layout.display(), img.tag);
    let dest = format!("docker://{}/{repo_tag}", server.host_port());
    let mut args = vec!["copy", "--preserve-digests", "--dest-tls-verify=false"];
    if let Some(creds) = creds {
        args.extend(["--dest-creds", creds]);
    }
    args.extend([src.as_str(), dest.as_str()]);
    run_with_timeout(&mut env.skopeo(&args), SKOPEO_PUSH_TIMEOUT)
}

/// Removes every proxy variable from `cmd`'s environment, so a client tool
/// always talks to the loopback server directly.
pub fn remove_proxy_env(cmd: &mut Command) {
    for proxy in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
}

/// Runs `podman info` and asserts that it succeeds, so that a podman that
/// cannot run on this machine is reported as an environment problem instead of
/// being blamed on the registry.  Returns the output (stdout: the storage driver).
pub fn assert_podman_usable(env: &ContainersEnv, timeout: Duration) -> CmdOutput {
    let probe = run_with_timeout(
        &mut env.podman(&["info", "--format", "{{.Store.GraphDriverName}}"]),
        timeout,
    );
    assert!(
        probe.status.success(),
        "ENVIRONMENT: podman cannot run on this machine (not a registry problem): \
         `podman info` exited with {}\nstdout:\n{}\nstderr:\n{}",
        probe.status,
        probe.stdout_str(),
        probe.stderr
    );
    probe
}

/// `podman pull ARGS... REFERENCE`: asserts that the pull succeeds (showing the
/// server log otherwise) and that the image ID podman prints is the hex part of
/// `config_digest`.
pub fn podman_pull_checked(
    env: &ContainersEnv,
    server: &Server,
    args: &[&str],
    reference: &str,
    config_digest: &str,
    timeout: Duration,
) {
    let mut pull_args = vec!["pull"];
    pull_args.extend_from_slice(args);
    pull_args.push(reference);
    let pull = run_with_timeout(&mut env.podman(&pull_args), timeout);
    assert!(
        pull.status.success(),
        "podman pull {reference} failed ({})\nstdout:\n{}\nstderr:\n{}\nserver log:\n{}",
        pull.status,
        pull.stdout_str(),
        pull.stderr,
        server.log()
    );
    // podman prints the image ID, which is the config digest.
    assert_eq!(
        pull.stdout_str().trim(),
        hex_part(config_digest),
        "image ID printed by podman pull"
    );
}

/// `podman image inspect REFERENCE`, parsed as JSON (an array of images).
pub fn podman_inspect(
    env: &ContainersEnv,
    reference: &str,
    timeout: Duration,
) -> serde_json::Value {
    let inspect = run_ok(&mut env.podman(&["image", "inspect", reference]), timeout);
    serde_json::from_slice(&inspect.stdout).expect("podman inspect JSON")
}

/// Deterministic, incompressible-looking bytes (xorshift64*), so that offset
/// mistakes show up as digest mismatches.
#[allow(dead_code)]
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// Raw HTTP over TCP, for requests a client library would tidy
// ---------------------------------------------------------------------------

/// Upper bound for connecting to a local server.
const RAW_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for `portcullis htpasswd add`.
const HTPASSWD_TIMEOUT: Duration = Duration::from_secs(30);

#[allow(dead_code)]
/// One raw request over TCP; returns (status line, head, body) of the answer,
/// which must arrive within `timeout` (the server closes these connections).
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> (String, String, String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, RAW_CONNECT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    stream.write_all(request).expect("send request");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no complete answer within {timeout:?} (after {:?}): {e}; got so far: {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("answer is not HTTP: {text:?}"));
    let status_line = head.lines().next().unwrap_or_default().to_string();
    (status_line, head.to_string(), body.to_string())
}

#[allow(dead_code)]
/// A header value from a raw response head.
pub fn raw_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[allow(dead_code)]
/// `portcullis htpasswd add FILE USER --password-stdin --cost 4`, password on stdin.
pub fn htpasswd_add(file: &Path, user: &str, password: &str) {
    let mut cmd = portcullis();
    cmd.args(["htpasswd", "add"])
        .arg(file)
        .arg(user)
        .args(["--password-stdin", "--cost", "4"]);
    run_with_password(cmd, password, &format!("portcullis htpasswd add {user}"));
}

/// `portcullis user --config CONFIG --data DATA add USER --password-stdin [--admin]`:
/// an account (the first admin, say) made before the server starts.
#[allow(dead_code)]
pub fn user_add(config: &Path, data: &Path, user: &str, password: &str, admin: bool) {
    let mut cmd = portcullis();
    cmd.arg("user")
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .args(["add", user, "--password-stdin"]);
    if admin {
        cmd.arg("--admin");
    }
    run_with_password(cmd, password, &format!("portcullis user add {user}"));
}

/// Runs `cmd` with `password` on its stdin; panics unless it succeeds in time.
fn run_with_password(mut cmd: Command, password: &str, what: &str) {
    let out = run_with_stdin(&mut cmd, password, HTPASSWD_TIMEOUT);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// A small file system that fills up
// ---------------------------------------------------------------------------

/// Whether the tests run as root (CI does), which mounting needs.
#[allow(dead_code)]
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs of a given size mounted on a directory; unmounted on drop.
#[allow(dead_code)]
pub struct Tmpfs {
    path: PathBuf,
}

#[allow(dead_code)]
impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("create mount point");
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path),
            Duration::from_secs(10),
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// ---------------------------------------------------------------------------
// The metrics listener
// ---------------------------------------------------------------------------

/// `GET /metrics` on the server's metrics listener (`{METRICS_PORT}` in its config).
#[allow(dead_code)]
pub fn scrape_metrics(server: &Server) -> String {
    let request = b"GET /metrics HTTP/1.1\r\nHost: monitor\r\nConnection: close\r\n\r\n";
    let (status, _, body) = raw_exchange(server.metrics_port(), request, Duration::from_secs(10));
    assert!(status.contains(" 200 "), "{status}: {body}");
    body
}

/// The sum of the series of `name` in a scrape whose labels include every one of
/// `labels` (0 when none does).
#[allow(dead_code)]
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
