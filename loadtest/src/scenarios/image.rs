//! Whole images: `push` and `pull` through the API (the real clients are in
//! `clients`).
//!
//! Images are synthetic: `--layers` tar layers totalling `--image-size`. Every push
//! uses fresh content, so nothing is deduplicated or mounted; the content is generated
//! before the clock starts.

use crate::client::Result;
use crate::image::{synth_image, Image};
use crate::scenario::{one_at_a_time, Ctx, Figure, Measurement, Scenario};
use crate::stats::Samples;
use async_trait::async_trait;
use std::time::Instant;

/// A synthetic image of the configured shape, generated off the async threads.
pub(super) async fn generate(ctx: &Ctx, seed: u64) -> Result<Image> {
    let (layers, size) = (ctx.settings.layers, ctx.settings.image_size);
    tokio::task::spawn_blocking(move || synth_image(seed, layers, size))
        .await
        .map_err(|e| format!("generating an image: {e}"))
}

pub(super) fn measurement(ctx: &Ctx, samples: Samples, what: &str) -> Measurement {
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
