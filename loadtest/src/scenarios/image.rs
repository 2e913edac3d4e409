//! Whole images: `push` and `pull` through the API, and `skopeo` (a real client
//! copying from an OCI layout this tool writes).
//!
//! Images are synthetic: `--layers` tar layers totalling `--image-size`. Every push
//! uses fresh content, so nothing is deduplicated or mounted; the content is generated
//! before the clock starts.

use crate::client::Result;
use crate::image::{synth_image, write_oci_layout, Image};
use crate::scenario::{one_at_a_time, Ctx, Figure, Measurement, Scenario};
use crate::stats::Samples;
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A synthetic image of the configured shape, generated off the async threads.
async fn generate(ctx: &Ctx, seed: u64) -> Result<Image> {
    let (layers, size) = (ctx.settings.layers, ctx.settings.image_size);
    tokio::task::spawn_blocking(move || synth_image(seed, layers, size))
        .await
        .map_err(|e| format!("generating an image: {e}"))
}

fn measurement(ctx: &Ctx, samples: Samples, what: &str) -> Measurement {
    let shape = format!(
        "{} of {} layers, {:.1} MiB in all",
        what,
        ctx.settings.layers,
        ctx.settings.image_size as f64 / (1 << 20) as f64
    );
    Measurement {
        elapsed: samples.total(),
        samples,
        figure: Figure::SecondsPerOp,
        concurrency: 1,
        notes: vec![shape],
    }
}

fn default_iterations(ctx: &Ctx) -> u64 {
    ctx.settings
        .iterations_or(if ctx.settings.quick { 2 } else { 3 })
}

/// `push`: blobs in parallel (HEAD, POST, PUT or PATCHes), then the manifest.
pub struct Push;

#[async_trait]
impl Scenario for Push {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        ctx.api().ping().await.map(drop)
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let (api, repo) = (ctx.api(), ctx.repo("push"));
        let samples = one_at_a_time(ctx, default_iterations(ctx), |i| {
            let (api, repo) = (api.clone(), repo.clone());
            async move {
                let image = generate(ctx, super::fresh_seed(ctx.settings.seed, i)).await?;
                let t0 = Instant::now();
                let sent = api
                    .push_image(&repo, &format!("i{i}"), &image, ctx.settings.upload)
                    .await?;
                let took = t0.elapsed();
                if sent != image.blob_bytes() {
                    return Err(format!(
                        "pushed {sent} of {} bytes: the registry claimed to have fresh blobs",
                        image.blob_bytes()
                    ));
                }
                Ok((sent + image.manifest.size(), took))
            }
        })
        .await;
        let mode = match ctx.settings.upload {
            crate::client::UploadMode::Monolithic => "monolithic uploads".to_string(),
            crate::client::UploadMode::Chunked(n) => format!("chunked uploads of {n} bytes"),
        };
        let mut m = measurement(ctx, samples, "push");
        m.notes.push(mode);
        Ok(m)
    }
}

/// `pull`: manifest by tag, then the blobs in parallel, each digest-checked.
#[derive(Default)]
pub struct Pull {
    repo: String,
    digest: String,
}

#[async_trait]
impl Scenario for Pull {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        self.repo = ctx.repo("pull");
        let image = generate(ctx, ctx.settings.seed ^ super::SEED_PULL).await?;
        ctx.api()
            .push_image(&self.repo, "latest", &image, ctx.settings.upload)
            .await?;
        self.digest = image.manifest.digest.clone();
        Ok(())
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let api = ctx.api();
        let samples = one_at_a_time(ctx, default_iterations(ctx), |_| {
            let (api, repo, digest) = (api.clone(), self.repo.clone(), self.digest.clone());
            async move {
                let t0 = Instant::now();
                let bytes = api.pull_image(&repo, "latest", Some(&digest)).await?;
                Ok((bytes, t0.elapsed()))
            }
        })
        .await;
        Ok(measurement(ctx, samples, "pull"))
    }
}

/// `skopeo`: `skopeo copy oci:<layout>:<tag> docker://<target>/<repo>:<tag>`.
pub struct Skopeo;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(what: &str) -> Result<Scratch> {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-loadtest-{}-{what}-{}",
        std::process::id(),
        super::fresh_seed(0, 0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(Scratch(dir))
}

/// `host:port` as skopeo wants it in a `docker://` reference.
fn registry_host(ctx: &Ctx) -> Result<String> {
    let base = &ctx.target.base;
    let host = base.host_str().ok_or("target URL has no host")?;
    let port = base
        .port_or_known_default()
        .ok_or("target URL has no port")?;
    Ok(format!("{host}:{port}"))
}

/// The TLS and credential flags for the destination.
fn dest_flags(ctx: &Ctx, certs: &Path) -> Result<Vec<String>> {
    let options = &ctx.target.options;
    let mut flags = Vec::new();
    match (&options.ca, ctx.target.base.scheme()) {
        (Some(ca), "https") => {
            // containers/image reads every *.crt in the directory as a CA.
            std::fs::copy(ca, certs.join("ca.crt"))
                .map_err(|e| format!("copying --ca into a cert dir: {e}"))?;
            flags.push(format!("--dest-cert-dir={}", certs.display()));
        }
        // Plain HTTP (or https without a CA to check): containers/image needs this.
        _ => flags.push("--dest-tls-verify=false".to_string()),
    }
    if let Some((user, password)) = &options.credentials {
        flags.push(format!("--dest-creds={user}:{password}"));
    }
    Ok(flags)
}

async fn skopeo_copy(ctx: &Ctx, args: &[String]) -> Result<()> {
    let mut command = tokio::process::Command::new(&ctx.settings.skopeo);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // No proxy may take the copy off this machine.
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
    let child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", ctx.settings.skopeo))?;
    let output = tokio::time::timeout(ctx.settings.max_time, child.wait_with_output())
        .await
        .map_err(|_| format!("skopeo took longer than {:?}", ctx.settings.max_time))?
        .map_err(|e| format!("skopeo: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
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
        Err(format!("skopeo copy failed ({}): {tail}", output.status))
    }
}

#[async_trait]
impl Scenario for Skopeo {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        let output = tokio::process::Command::new(&ctx.settings.skopeo)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("skopeo not usable ({}): {e}", ctx.settings.skopeo))?;
        if !output.status.success() {
            return Err(format!("{} --version failed", ctx.settings.skopeo));
        }
        ctx.api().ping().await.map(drop)
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let repo = ctx.repo("skopeo");
        let host = registry_host(ctx)?;
        let iterations = ctx
            .settings
            .iterations_or(if ctx.settings.quick { 1 } else { 2 });
        let samples = one_at_a_time(ctx, iterations, |i| {
            let (repo, host) = (repo.clone(), host.clone());
            async move {
                let image = generate(ctx, super::fresh_seed(ctx.settings.seed ^ 0x5c0, i)).await?;
                let scratch = scratch_dir("skopeo")?;
                let layout = scratch.0.join("layout");
                let certs = scratch.0.join("certs");
                std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
                let tag = format!("i{i}");
                write_oci_layout(&layout, &image, &tag)
                    .map_err(|e| format!("writing the OCI layout: {e}"))?;
                let mut args = vec![
                    "--insecure-policy".to_string(),
                    "copy".to_string(),
                    "--quiet".to_string(),
                ];
                args.extend(dest_flags(ctx, &certs)?);
                args.push(format!("oci:{}:{tag}", layout.display()));
                args.push(format!("docker://{host}/{repo}:{tag}"));
                let t0 = Instant::now();
                skopeo_copy(ctx, &args).await?;
                let took: Duration = t0.elapsed();
                // The copy must have landed: the tag answers with a manifest.
                if ctx.api().head_manifest(&repo, &tag).await?.is_none() {
                    return Err(format!("after skopeo copy, {repo}:{tag} is unknown"));
                }
                Ok((image.blob_bytes() + image.manifest.size(), took))
            }
        })
        .await;
        let mut m = measurement(ctx, samples, "skopeo copy");
        m.notes
            .push("skopeo picks its own protocol (HTTP/1.1 or h2 by ALPN)".to_string());
        Ok(m)
    }
}
