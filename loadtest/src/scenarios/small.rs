//! `small`: the request rate of small responses. Each worker cycles through
//! `GET /v2/`, `HEAD` of a manifest by tag and `GET` of it (digest checked) on its own
//! keep-alive connection. `--opt small-ops=head,get` (any of ping, head, get) narrows
//! the cycle, to see what each request type costs.
//!
//! `ceiling` is the same loop over `GET /v2/` alone, with nothing seeded, so it also
//! runs against a plain web server answering `/v2/` with a small static file: the
//! small-response rate this machine can reach at all.

use crate::client::Result;
use crate::image::synth_image;
use crate::scenario::{closed_loop, Ctx, Measurement, Scenario};
use async_trait::async_trait;

const TAG: &str = "latest";

#[derive(Default)]
pub struct Small {
    repo: String,
    digest: String,
    /// `ceiling`: only `GET /v2/`, nothing seeded.
    ping_only: bool,
}

impl Small {
    pub fn ceiling() -> Small {
        Small {
            ping_only: true,
            ..Small::default()
        }
    }

    fn cycle(&self, ctx: &Ctx) -> Result<Vec<Op>> {
        if self.ping_only {
            return Ok(vec![Op::Ping]);
        }
        ops(ctx.settings.opt("small-ops"))
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Ping,
    Head,
    Get,
}

fn ops(spec: Option<&str>) -> Result<Vec<Op>> {
    let Some(spec) = spec else {
        return Ok(vec![Op::Ping, Op::Head, Op::Get]);
    };
    spec.split(',')
        .map(|op| match op.trim() {
            "ping" => Ok(Op::Ping),
            "head" => Ok(Op::Head),
            "get" => Ok(Op::Get),
            other => Err(format!(
                "--opt small-ops: unknown request {other:?} (ping, head, get)"
            )),
        })
        .collect()
}

#[async_trait]
impl Scenario for Small {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        if self.ping_only {
            return ctx.api().ping().await.map(drop);
        }
        self.repo = ctx.repo("small");
        let image = synth_image(ctx.settings.seed ^ super::SEED_SMALL, 2, 2048);
        let api = ctx.api();
        api.ping().await?;
        api.push_image(&self.repo, TAG, &image, ctx.settings.upload)
            .await?;
        self.digest = image.manifest.digest.clone();
        match api.head_manifest(&self.repo, TAG).await? {
            Some(d) if d == self.digest => Ok(()),
            other => Err(format!("seeded manifest answers HEAD with {other:?}")),
        }
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let workers = ctx.target.connections() * ctx.settings.streams;
        let cycle = self.cycle(ctx)?;
        let note = format!("request cycle {cycle:?}");
        let (repo, digest) = (self.repo.clone(), self.digest.clone());
        let mut m = closed_loop(ctx, workers, move |_, n, api| {
            let (repo, digest) = (repo.clone(), digest.clone());
            let op = cycle[(n % cycle.len() as u64) as usize];
            async move {
                match op {
                    Op::Ping => api.ping().await,
                    Op::Head => match api.head_manifest(&repo, TAG).await? {
                        Some(d) if d == digest => Ok(0),
                        other => Err(format!(
                            "HEAD manifest: digest {other:?}, expected {digest}"
                        )),
                    },
                    Op::Get => api
                        .get_manifest(&repo, TAG, Some(&digest))
                        .await
                        .map(|b| b.len() as u64),
                }
            }
        })
        .await;
        m.notes.push(note);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_cycle() {
        assert_eq!(ops(None).unwrap(), vec![Op::Ping, Op::Head, Op::Get]);
        assert_eq!(ops(Some("get, head")).unwrap(), vec![Op::Get, Op::Head]);
        assert!(ops(Some("put")).is_err());
    }
}
