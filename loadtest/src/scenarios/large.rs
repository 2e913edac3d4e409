//! `large`: download speed of one large blob (512 MiB by default), hashed while it
//! streams. The blob is uploaded once (skipped when the registry already has it).

use crate::client::Result;
use crate::image::{random_bytes, Blob};
use crate::scenario::{one_at_a_time, Ctx, Figure, Measurement, Scenario};
use async_trait::async_trait;
use std::time::Instant;

#[derive(Default)]
pub struct Large {
    repo: String,
    digest: String,
    size: u64,
}

#[async_trait]
impl Scenario for Large {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        self.repo = ctx.repo("large");
        let size = usize::try_from(ctx.settings.large_size).map_err(|e| e.to_string())?;
        // Generated on the blocking pool: hundreds of MiB of bytes and their sha256.
        let seed = ctx.settings.seed ^ super::SEED_LARGE;
        let blob = tokio::task::spawn_blocking(move || Blob::new(random_bytes(seed, size)))
            .await
            .map_err(|e| e.to_string())?;
        let api = ctx.api();
        api.ensure_blob(&self.repo, &blob, ctx.settings.upload)
            .await?;
        self.digest = blob.digest;
        self.size = blob.data.len() as u64;
        drop(blob.data);
        // One unmeasured download: every target starts with warm caches (the page
        // cache, and nginx's proxy_cache in the reference stack).
        api.get_blob(&self.repo, &self.digest, self.size, true)
            .await
            .map(drop)
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let api = ctx.api();
        let iterations = ctx
            .settings
            .iterations_or(if ctx.settings.quick { 1 } else { 3 });
        let samples = one_at_a_time(ctx, iterations, |_| {
            let api = api.clone();
            let (repo, digest, size) = (self.repo.clone(), self.digest.clone(), self.size);
            async move {
                let t0 = Instant::now();
                let bytes = api.get_blob(&repo, &digest, size, true).await?;
                Ok((bytes, t0.elapsed()))
            }
        })
        .await;
        Ok(Measurement {
            elapsed: samples.total(),
            samples,
            figure: Figure::MibPerSecond,
            concurrency: 1,
            notes: vec![format!(
                "{} MiB blob, digest-checked while streaming",
                self.size >> 20
            )],
        })
    }
}
