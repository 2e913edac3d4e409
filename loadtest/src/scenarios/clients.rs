//! Real clients: `skopeo` and `podman` pushing and pulling whole images, each command
//! timed from start to exit, so a fixed cost per command (a handshake the server makes
//! a client wait for, say) shows beside the transfer time.
//!
//! - `skopeo-push`: `skopeo copy oci:<layout> docker://<target>/<repo>:<tag>`
//! - `skopeo-pull`: `skopeo copy docker://<target>/<repo>:<tag> oci:<scratch>`
//! - `podman-pull`: `podman pull <target>/<repo>:<tag>` into fresh storage
//! - `podman-push`: `podman push <local image> docker://<target>/<repo>:<tag>`
//!
//! Every iteration moves a fresh image (nothing is deduplicated or mounted), prepared
//! before the clock starts. The clients run with a private configuration in a scratch
//! directory (storage, registries.conf, policy), never the user's, and with no proxy.
//! podman compresses layers when it pushes (containers/image does for the docker
//! transport), so its push figure includes gzip time on the client.

use super::image::{generate, measurement};
use crate::client::{Credentials, Result};
use crate::image::write_oci_layout;
use crate::scenario::{one_at_a_time, Ctx, Measurement, Scenario};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Skopeo,
    Podman,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Push,
    Pull,
}

/// One real-client scenario.
pub struct ClientCopy {
    tool: Tool,
    direction: Direction,
}

impl ClientCopy {
    pub fn new(tool: Tool, direction: Direction) -> ClientCopy {
        ClientCopy { tool, direction }
    }

    fn name(&self) -> &'static str {
        match (self.tool, self.direction) {
            (Tool::Skopeo, Direction::Push) => "skopeo-push",
            (Tool::Skopeo, Direction::Pull) => "skopeo-pull",
            (Tool::Podman, Direction::Push) => "podman-push",
            (Tool::Podman, Direction::Pull) => "podman-pull",
        }
    }

    /// A short word for scratch directory names.
    fn tool_short(&self) -> &'static str {
        match self.tool {
            Tool::Skopeo => "sk",
            Tool::Podman => "pm",
        }
    }

    fn program<'a>(&self, ctx: &'a Ctx) -> &'a str {
        match self.tool {
            Tool::Skopeo => &ctx.settings.skopeo,
            Tool::Podman => &ctx.settings.podman,
        }
    }
}

/// A private containers configuration in a scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Scratch {
    fn new(what: &str) -> Result<Scratch> {
        // Short: podman refuses a run root of more than 50 characters.
        let dir = std::env::temp_dir().join(format!(
            "plt-{what}-{:x}",
            super::fresh_seed(0, 0) & 0xff_ffff
        ));
        let scratch = Scratch(dir);
        let write = |rel: &str, text: String| {
            let path = scratch.0.join(rel);
            std::fs::create_dir_all(path.parent().expect("a parent"))
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|e| format!("writing {}: {e}", path.display()))
        };
        write(
            "registries.conf",
            "unqualified-search-registries = []\n".into(),
        )?;
        write(
            "policy.json",
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#.into(),
        )?;
        write("auth.json", r#"{"auths":{}}"#.into())?;
        write("containers.conf", String::new())?;
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                scratch.0.join("storage/root").display(),
                scratch.0.join("storage/run").display()
            ),
        )?;
        for sub in ["home", "tmp", "certs", "run", "storage/root", "storage/run"] {
            std::fs::create_dir_all(scratch.0.join(sub)).map_err(|e| e.to_string())?;
        }
        Ok(scratch)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// `program` with this configuration and no proxy; podman also gets its storage.
    fn command(&self, program: &str, tool: Tool) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .env("HOME", self.path("home"))
            .env("TMPDIR", self.path("tmp"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            command.env_remove(var);
        }
        match tool {
            Tool::Skopeo => {
                command.arg("--policy").arg(self.path("policy.json"));
            }
            Tool::Podman => {
                command
                    .arg("--root")
                    .arg(self.path("storage/root"))
                    .arg("--runroot")
                    .arg(self.path("storage/run"))
                    .args([
                        "--storage-driver",
                        "vfs",
                        "--cgroup-manager=cgroupfs",
                        "--events-backend=none",
                    ]);
            }
        }
        command
    }
}

/// Runs a prepared command to its end within the scenario's time limit; its standard
/// output, if it was piped.
async fn run_command(
    ctx: &Ctx,
    what: &str,
    mut command: tokio::process::Command,
) -> Result<String> {
    let child = command
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let output = tokio::time::timeout(ctx.settings.max_time, child.wait_with_output())
        .await
        .map_err(|_| format!("{what} took longer than {:?}", ctx.settings.max_time))?
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!("{what} failed ({}): {tail}", output.status))
}

/// `host:port` as the clients want it in a reference.
fn registry_host(ctx: &Ctx) -> Result<String> {
    let base = &ctx.target.base;
    let host = base.host_str().ok_or("target URL has no host")?;
    let port = base
        .port_or_known_default()
        .ok_or("target URL has no port")?;
    Ok(format!("{host}:{port}"))
}

/// TLS and credential flags for the registry side: skopeo names them `--src-*` or
/// `--dest-*`, podman without a prefix.
fn registry_flags(ctx: &Ctx, certs: &Path, prefix: &str) -> Result<Vec<String>> {
    let options = &ctx.target.options;
    let mut flags = Vec::new();
    match (&options.ca, ctx.target.base.scheme()) {
        (Some(ca), "https") => {
            // containers/image reads every *.crt in the directory as a CA.
            std::fs::copy(ca, certs.join("ca.crt"))
                .map_err(|e| format!("copying --ca into a cert dir: {e}"))?;
            flags.push(format!("--{prefix}cert-dir={}", certs.display()));
        }
        // Plain HTTP (or https without a CA to check): containers/image needs this.
        _ => flags.push(format!("--{prefix}tls-verify=false")),
    }
    match &options.credentials {
        Some(Credentials::Basic { user, password }) => {
            flags.push(format!("--{prefix}creds={user}:{password}"));
        }
        // skopeo and podman get their own tokens from the realm; a fixed one cannot be given.
        Some(Credentials::Bearer(_)) => {
            return Err(
                "the client scenarios log in with --user and --password, not --bearer".into(),
            )
        }
        None => {}
    }
    Ok(flags)
}

/// What one iteration needs before the clock starts, and the command it times.
struct Prepared {
    _scratch: Scratch,
    command: tokio::process::Command,
    repo: String,
    tag: String,
    bytes: u64,
}

impl ClientCopy {
    /// Makes a fresh image where the timed command will find it, and the command.
    async fn prepare(&self, ctx: &Ctx, i: u64) -> Result<Prepared> {
        let scratch = Scratch::new(self.tool_short())?;
        let image = generate(ctx, super::fresh_seed(ctx.settings.seed ^ 0xc11e, i)).await?;
        let bytes = image.blob_bytes() + image.manifest.size();
        let tag = format!("i{i}");
        let repo = ctx.repo(self.name());
        let remote = format!("{}/{repo}:{tag}", registry_host(ctx)?);
        // A push reads the image from a layout; a pull finds it in the registry.
        let layout = scratch.path("layout");
        match self.direction {
            Direction::Push => write_oci_layout(&layout, &image, &tag)
                .map_err(|e| format!("writing the OCI layout: {e}"))?,
            Direction::Pull => {
                ctx.api()
                    .push_image(&repo, &tag, &image, ctx.settings.upload)
                    .await?;
            }
        }
        let program = self.program(ctx);
        let certs = scratch.path("certs");
        let mut command = scratch.command(program, self.tool);
        match (self.tool, self.direction) {
            (Tool::Skopeo, Direction::Push) => {
                command
                    .args(["copy", "--quiet"])
                    .args(registry_flags(ctx, &certs, "dest-")?);
                command
                    .arg(format!("oci:{}:{tag}", layout.display()))
                    .arg(format!("docker://{remote}"));
            }
            (Tool::Skopeo, Direction::Pull) => {
                command
                    .args(["copy", "--quiet"])
                    .args(registry_flags(ctx, &certs, "src-")?);
                command
                    .arg(format!("docker://{remote}"))
                    .arg(format!("oci:{}:{tag}", scratch.path("pulled").display()));
            }
            (Tool::Podman, Direction::Pull) => {
                command
                    .args(["pull", "--quiet"])
                    .args(registry_flags(ctx, &certs, "")?)
                    .arg(&remote);
            }
            (Tool::Podman, Direction::Push) => {
                // Into local storage from the layout (no registry involved, so the blob
                // cache of containers/image knows of no copy to mount from).
                let mut load = scratch.command(program, self.tool);
                load.args(["pull", "--quiet"])
                    .arg(format!("oci:{}:{tag}", layout.display()))
                    .stdout(Stdio::piped());
                // `pull --quiet` prints the image id.
                let id = run_command(ctx, "podman pull oci:", load).await?;
                let id = id.trim().to_string();
                if id.is_empty() {
                    return Err("podman pull oci: printed no image id".into());
                }
                command
                    .args(["push", "--quiet"])
                    .args(registry_flags(ctx, &certs, "")?);
                command.arg(&id).arg(format!("docker://{remote}"));
            }
        }
        Ok(Prepared {
            _scratch: scratch,
            command,
            repo,
            tag,
            bytes,
        })
    }
}

#[async_trait]
impl Scenario for ClientCopy {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        let program = self.program(ctx).to_string();
        let output = tokio::process::Command::new(&program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{program} not usable: {e}"))?;
        if !output.status.success() {
            return Err(format!("{program} --version failed"));
        }
        ctx.api().ping().await.map(drop)
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let iterations = ctx
            .settings
            .iterations_or(if ctx.settings.quick { 1 } else { 2 });
        let this = &*self;
        let samples = one_at_a_time(ctx, iterations, |i| async move {
            let prepared = this.prepare(ctx, i).await?;
            let Prepared {
                _scratch,
                command,
                repo,
                tag,
                bytes,
            } = prepared;
            let t0 = Instant::now();
            run_command(ctx, this.name(), command).await.map(drop)?;
            let took: Duration = t0.elapsed();
            // A push must have landed: the tag answers with a manifest.
            if this.direction == Direction::Push
                && ctx.api().head_manifest(&repo, &tag).await?.is_none()
            {
                return Err(format!("after {}, {repo}:{tag} is unknown", this.name()));
            }
            Ok((bytes, took))
        })
        .await;
        let mut m = measurement(ctx, samples, self.name());
        m.notes.push(format!(
            "{} picks its own protocol (HTTP/1.1 or h2 by ALPN); each command timed start to exit",
            self.program(ctx)
        ));
        Ok(m)
    }
}
