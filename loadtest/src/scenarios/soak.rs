//! `soak`: a bounded mixed workload. Each worker owns a repository and, for
//! `--duration` (at most `--max-ops` operations in all), picks one of:
//!
//! - push a fresh image (2 layers of random size) under a new tag, then check the
//!   tag answers with its digest;
//! - pull a live tag: manifest digest and every blob checked byte for byte;
//! - delete the oldest tag (202 expected), then check the tag is gone (404);
//! - delete the blobs of an untagged image (202 each), then check they are gone.
//!
//! Workers never share blobs, so a delete in one cannot break a pull in another.
//! Blob sizes are random up to `--opt soak-max-blob=SIZE` (4 MiB; 256 KiB in quick mode).
//!
//! distribution 2.8 answers a tag DELETE with 400 DIGEST_INVALID (it deletes only by
//! digest). With `--opt soak-tag-delete=digest-fallback` such a 400 is followed by a
//! DELETE of the manifest by digest and counted in the notes instead of as an error;
//! by default (`strict`) it is an error.

use crate::client::{Api, Result};
use crate::image::{image_of, parse_size, tar_layer, Blob, Image, Rng};
use crate::scenario::{closed_loop, Ctx, Measurement, Scenario};
use async_trait::async_trait;
use reqwest::StatusCode;
use std::collections::VecDeque;
use std::sync::Arc;

/// Tags a worker keeps before it must delete one.
const MAX_LIVE: usize = 6;

pub struct Soak;

struct Worker {
    repo: String,
    rng: Rng,
    seed: u64,
    next_tag: u64,
    max_blob: u64,
    /// Fall back to a DELETE by digest when a tag DELETE gets 400.
    digest_fallback: bool,
    fallbacks: u64,
    live: VecDeque<(String, Image)>,
    untagged: Vec<Image>,
}

impl Worker {
    fn fresh_image(&mut self) -> Image {
        self.seed = self.seed.wrapping_add(1);
        let layers = (0..2)
            .map(|i| {
                let size = 1024 + self.rng.below(self.max_blob.max(1025) - 1024);
                Blob::new(tar_layer(
                    self.seed.wrapping_mul(31).wrapping_add(i),
                    size as usize,
                ))
            })
            .collect();
        image_of(self.seed, layers)
    }

    async fn step(&mut self, api: &Api) -> Result<u64> {
        let roll = self.rng.below(100);
        if self.live.is_empty() || (roll < 30 && self.live.len() < MAX_LIVE) {
            self.push(api).await
        } else if roll < 70 || (roll >= 90 && self.untagged.is_empty()) {
            self.pull(api).await
        } else if roll < 90 || self.live.len() >= MAX_LIVE {
            self.delete_tag(api).await
        } else {
            self.delete_blobs(api).await
        }
    }

    async fn push(&mut self, api: &Api) -> Result<u64> {
        let image = self.fresh_image();
        let tag = format!("t{}", self.next_tag);
        self.next_tag += 1;
        let sent = api
            .push_image(
                &self.repo,
                &tag,
                &image,
                crate::client::UploadMode::Monolithic,
            )
            .await?;
        match api.head_manifest(&self.repo, &tag).await? {
            Some(d) if d == image.manifest.digest => {}
            other => return Err(format!("pushed {tag}, HEAD answers {other:?}")),
        }
        self.live.push_back((tag, image));
        Ok(sent)
    }

    async fn pull(&mut self, api: &Api) -> Result<u64> {
        let pick = self.rng.below(self.live.len() as u64) as usize;
        let (tag, image) = &self.live[pick];
        api.pull_image(&self.repo, tag, Some(&image.manifest.digest))
            .await
    }

    async fn delete_tag(&mut self, api: &Api) -> Result<u64> {
        let (tag, image) = self.live.pop_front().ok_or("no tag to delete")?;
        let mut status = api.delete_manifest(&self.repo, &tag).await?;
        if status == StatusCode::BAD_REQUEST && self.digest_fallback {
            self.fallbacks += 1;
            status = api
                .delete_manifest(&self.repo, &image.manifest.digest)
                .await?;
        }
        if status != StatusCode::ACCEPTED {
            return Err(format!("DELETE tag {tag}: HTTP {status}, expected 202"));
        }
        if let Some(d) = api.head_manifest(&self.repo, &tag).await? {
            return Err(format!("tag {tag} still answers ({d}) after its DELETE"));
        }
        self.untagged.push(image);
        Ok(0)
    }

    async fn delete_blobs(&mut self, api: &Api) -> Result<u64> {
        let image = self.untagged.pop().ok_or("no untagged image")?;
        for blob in image.blobs() {
            let status = api.delete_blob(&self.repo, &blob.digest).await?;
            if status != StatusCode::ACCEPTED {
                return Err(format!(
                    "DELETE blob {}: HTTP {status}, expected 202",
                    blob.digest
                ));
            }
            let after = api.blob_status(&self.repo, &blob.digest).await?;
            if after != StatusCode::NOT_FOUND {
                return Err(format!(
                    "blob {} answers {after} after its DELETE",
                    blob.digest
                ));
            }
        }
        Ok(0)
    }
}

#[async_trait]
impl Scenario for Soak {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        ctx.api().ping().await.map(drop)
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let workers = ctx.target.connections();
        let max_blob = match ctx.settings.opt("soak-max-blob") {
            Some(s) => parse_size(s)?,
            None if ctx.settings.quick => 256 << 10,
            None => 4 << 20,
        };
        let digest_fallback = match ctx.settings.opt("soak-tag-delete") {
            None | Some("strict") => false,
            Some("digest-fallback") => true,
            Some(other) => {
                return Err(format!(
                    "--opt soak-tag-delete={other:?}: expected strict or digest-fallback"
                ))
            }
        };
        let base = super::fresh_seed(ctx.settings.seed, 0x50a4);
        let states: Arc<Vec<tokio::sync::Mutex<Worker>>> = Arc::new(
            (0..workers)
                .map(|w| {
                    tokio::sync::Mutex::new(Worker {
                        repo: ctx.repo(&format!("soak-{w}")),
                        rng: Rng::new(base ^ w as u64),
                        seed: base.wrapping_add((w as u64) << 40),
                        next_tag: 0,
                        max_blob,
                        digest_fallback,
                        fallbacks: 0,
                        live: VecDeque::new(),
                        untagged: Vec::new(),
                    })
                })
                .collect(),
        );
        let shared = states.clone();
        let mut m = closed_loop(ctx, workers, move |w, _, api| {
            let states = shared.clone();
            async move { states[w].lock().await.step(&api).await }
        })
        .await;
        m.notes.push(format!(
            "{workers} workers, blobs up to {} KiB, every pulled byte digest-checked",
            max_blob >> 10
        ));
        let mut fallbacks = 0;
        for state in states.iter() {
            fallbacks += state.lock().await.fallbacks;
        }
        if fallbacks > 0 {
            m.notes.push(format!(
                "{fallbacks} tag DELETEs answered 400: deleted the manifest by digest instead \
                 (--opt soak-tag-delete=digest-fallback)"
            ));
        }
        Ok(m)
    }
}
