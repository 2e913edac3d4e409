//! `blob`: the request rate of whole-blob GETs (1 MiB by default), each body streamed
//! through sha256 and compared with the digest (unless `--no-verify`).

use crate::client::Result;
use crate::image::{random_bytes, Blob};
use crate::scenario::{closed_loop, Ctx, Measurement, Scenario};
use async_trait::async_trait;

#[derive(Default)]
pub struct BlobGet {
    repo: String,
    digest: String,
    size: u64,
}

#[async_trait]
impl Scenario for BlobGet {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        self.repo = ctx.repo("blob");
        let size = usize::try_from(ctx.settings.blob_size).map_err(|e| e.to_string())?;
        let blob = Blob::new(random_bytes(ctx.settings.seed ^ super::SEED_BLOB, size));
        ctx.api()
            .ensure_blob(&self.repo, &blob, ctx.settings.upload)
            .await?;
        self.digest = blob.digest;
        self.size = blob.data.len() as u64;
        Ok(())
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let workers = ctx.target.connections() * ctx.settings.streams;
        let (repo, digest, size, verify) = (
            self.repo.clone(),
            self.digest.clone(),
            self.size,
            ctx.settings.verify,
        );
        let mut m = closed_loop(ctx, workers, move |_, _, api| {
            let (repo, digest) = (repo.clone(), digest.clone());
            async move { api.get_blob(&repo, &digest, size, verify).await }
        })
        .await;
        m.notes.push(format!(
            "blob of {} bytes{}",
            self.size,
            if verify {
                ", every body digest-checked"
            } else {
                ", not verified"
            }
        ));
        Ok(m)
    }
}
