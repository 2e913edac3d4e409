//! `mirror`: a pull-through cache, measured against a mirror target (Portcullis with
//! `--mirror docker.io=URL`, or distribution in proxy mode) whose upstream is a fake hub
//! (`portcullis-loadtest fake-hub`). Whoever starts the target starts the hub too
//! (compare.sh does both); the scenario is told where the hub is with
//! `--opt mirror-hub=http://HOST:PORT` (its registry listener) and
//! `--opt mirror-hub-content=DIR` (its content directory). Every upstream request is
//! read from the hub's own request log, reset before each phase.
//!
//! Setup writes fresh images into the hub's content directory (new seeds every run, so
//! every first pull through the mirror is cold); run removes them at the end. Phases:
//!
//! 1. rounds (`--iterations`, default 3; 1 with --quick), each with fresh images of
//!    `--layers` layers and `--image-size` bytes: one is pulled straight from the hub
//!    (token dance, blob GETs through the 307 to the CDN), then cold through the mirror
//!    by one client; another cold through the mirror by `--connections` clients at once
//!    (default 8). The hub's CDN sends these images' blobs at `--opt
//!    mirror-upstream-rate` bytes per second each (default 16MiB; 4MiB with --quick), as
//!    an upstream slower than the LAN is, so the rounds time the cache, not this
//!    machine's CPU. A third image repeats the first pair with the CDN unthrottled
//!    (skipped with `mirror-upstream-rate=0`, which leaves every image unthrottled):
//!    what the mirror's own work costs when the upstream is as fast as loopback;
//! 2. warm: the last round's shared image again by one client, as many times as there
//!    are rounds; a cache should send no upstream request at all;
//! 3. late joiner: the hub's CDN sends one blob (`--opt mirror-slow-size`) at
//!    `--opt mirror-slow-rate` bytes per second; client A GETs it, client B starts the
//!    same GET once A has `--opt mirror-join-after` bytes; their times to first byte;
//! 4. fan-out: `--connections` clients pull an image of one `--large-size` layer at
//!    once, cold, while the server's resident memory and CPU are sampled (`--server-pid`).
//!
//! Images are `library/<prefix>-<phase>-<seed>`, Docker Hub's layout: Portcullis sends
//! unprefixed names to its default upstream, distribution forwards names as they are.

use crate::client::{BlobTiming, Result};
use crate::hubclient::{count_upstream, pull_direct, Hub, UpstreamCount};
use crate::image::{parse_size, synth_image, Image};
use crate::procmon::{self, Monitor};
use crate::report::Report;
use crate::scenario::{Ctx, Figure, Measurement, Scenario};
use crate::stats::{median, Samples};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TAG: &str = "latest";
/// How often, and how many times at most, the request log is read until it stops
/// growing: a mirror may still be talking to the upstream after its clients are done
/// (distribution stores a blob with a fetch of its own, beside the one it serves).
const SETTLE_EVERY: Duration = Duration::from_millis(100);
const SETTLE_READS: usize = 20;

/// One cold round: the same image straight from the hub and through the mirror by
/// one client, then another image through the mirror by every client at once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ColdRound {
    pub direct_s: f64,
    pub one_s: f64,
    pub one_upstream: UpstreamCount,
    /// Wall time from the first client's start to the last one's end.
    pub all_s: f64,
    pub all_upstream: UpstreamCount,
    /// The direct and the one-client pull again, of an image the CDN does not throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unthrottled_direct_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unthrottled_one_s: Option<f64>,
}

/// Pulls of an image the mirror already holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WarmPull {
    pub pulls: u64,
    /// Median seconds per pull.
    pub seconds: f64,
    /// Every request the hub saw during these pulls.
    pub upstream_requests: u64,
}

/// Client B asking for a blob that is still arriving for client A.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LateJoiner {
    pub blob_bytes: u64,
    /// The CDN's rate for this blob.
    pub bytes_per_sec: u64,
    /// What A had received when B started, and when (from A's start).
    pub joined_after_bytes: u64,
    pub joined_at_ms: f64,
    pub first_byte_ms: f64,
    pub first_total_s: f64,
    pub joiner_first_byte_ms: f64,
    pub joiner_total_s: f64,
    pub upstream: UpstreamCount,
}

/// Every client pulling one large image at once, cold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FanOut {
    pub clients: usize,
    pub layer_bytes: u64,
    pub seconds: f64,
    /// The server's resident memory just before, and its peak during the pulls.
    pub rss_before_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub upstream: UpstreamCount,
}

/// Everything the scenario measured; in the JSON line as `mirror`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MirrorFigures {
    /// Clients at once in the shared cold pull and the fan-out.
    pub clients: usize,
    /// Blobs per image (config and layers) and their bytes.
    pub blobs: usize,
    pub image_bytes: u64,
    /// The CDN's rate for each blob of the rounds' images (0: unthrottled).
    #[serde(default)]
    pub upstream_bytes_per_sec: u64,
    /// The rounds that completed.
    pub rounds: Vec<ColdRound>,
    pub warm: Option<WarmPull>,
    pub late_joiner: Option<LateJoiner>,
    pub fan_out: Option<FanOut>,
}

/// `a / b` when both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl MirrorFigures {
    /// The median of one time over the rounds that have it.
    fn median_of(&self, field: fn(&ColdRound) -> Option<f64>) -> Option<f64> {
        median(&self.rounds.iter().filter_map(field).collect::<Vec<_>>())
    }

    /// Median seconds of one client's cold pull through the mirror.
    pub fn one_s(&self) -> Option<f64> {
        self.median_of(|r| Some(r.one_s))
    }

    /// Median wall seconds of every client's cold pull of one image at once.
    pub fn all_s(&self) -> Option<f64> {
        self.median_of(|r| Some(r.all_s))
    }

    /// Median seconds of the pull straight from the hub.
    pub fn direct_s(&self) -> Option<f64> {
        self.median_of(|r| Some(r.direct_s))
    }

    /// [`MirrorFigures::one_s`] with the upstream unthrottled.
    pub fn unthrottled_one_s(&self) -> Option<f64> {
        self.median_of(|r| r.unthrottled_one_s)
    }

    /// [`MirrorFigures::direct_s`] with the upstream unthrottled.
    pub fn unthrottled_direct_s(&self) -> Option<f64> {
        self.median_of(|r| r.unthrottled_direct_s)
    }

    /// Every client at once against one client alone (1.0: the crowd costs nothing).
    pub fn all_vs_one(&self) -> Option<f64> {
        ratio(self.all_s(), self.one_s())
    }

    /// A cold pull through the mirror against the same pull straight from upstream.
    pub fn cold_vs_direct(&self) -> Option<f64> {
        ratio(self.one_s(), self.direct_s())
    }

    /// The round whose `which` count fetched the most from upstream.
    pub fn worst_upstream(
        &self,
        which: impl Fn(&ColdRound) -> UpstreamCount,
    ) -> Option<UpstreamCount> {
        self.rounds
            .iter()
            .map(which)
            .max_by_key(|u| (u.blob_gets.max(u.cdn_gets), u.blob_gets + u.cdn_gets))
    }

    /// The shared cold pull that fetched the most from upstream.
    pub fn worst_all_upstream(&self) -> Option<UpstreamCount> {
        self.worst_upstream(|r| r.all_upstream)
    }

    /// Whether the shared cold pulls fetched every blob exactly once (registry GET
    /// and CDN GET alike), in every round.
    pub fn one_fetch_per_blob(&self) -> Option<bool> {
        let blobs = self.blobs as u64;
        (!self.rounds.is_empty()).then(|| {
            self.rounds.iter().all(|r| {
                let u = r.all_upstream;
                u.blob_gets == blobs && u.cdn_gets == blobs && u.most_gets_of_one_blob == 1
            })
        })
    }
}

/// An image the hub serves: what pulling it must fetch.
struct Placed {
    repo: String,
    manifest: String,
    /// Config and layers: digest and size.
    blobs: Vec<(String, u64)>,
}

impl Placed {
    fn digests(&self) -> Vec<String> {
        self.blobs.iter().map(|(d, _)| d.clone()).collect()
    }

    /// The hub's log about this image once it has stopped growing (bounded polling).
    async fn settled_count(&self, hub: &Hub) -> Result<UpstreamCount> {
        let mut log = hub.requests().await?;
        for _ in 0..SETTLE_READS {
            tokio::time::sleep(SETTLE_EVERY).await;
            let now = hub.requests().await?;
            let settled = now.len() == log.len();
            log = now;
            if settled {
                break;
            }
        }
        Ok(count_upstream(&log, &self.repo, &self.digests()))
    }
}

/// The late joiner's knobs.
#[derive(Default)]
struct SlowBlob {
    bytes_per_sec: u64,
    join_after: u64,
}

/// The fresh images of one cold round.
struct RoundImages {
    /// Pulled straight from the hub, then by one client through the mirror.
    own: Placed,
    /// Pulled by every client at once.
    shared: Placed,
    /// Like `own`, with the CDN unthrottled.
    unthrottled: Option<Placed>,
}

impl RoundImages {
    fn all(&self) -> impl Iterator<Item = &Placed> {
        [&self.own, &self.shared]
            .into_iter()
            .chain(&self.unthrottled)
    }
}

#[derive(Default)]
pub struct MirrorPull {
    hub: Option<Hub>,
    rounds: Vec<RoundImages>,
    late: Option<Placed>,
    fan_out: Option<Placed>,
    slow: SlowBlob,
    figures: MirrorFigures,
}

fn size_opt(ctx: &Ctx, key: &str, full: u64, quick: u64) -> Result<u64> {
    match ctx.settings.opt(key) {
        Some(text) => parse_size(text).map_err(|e| format!("--opt {key}: {e}")),
        None if ctx.settings.quick => Ok(quick),
        None => Ok(full),
    }
}

/// Generates an image off the async threads and has the hub serve it.
async fn place(
    ctx: &Ctx,
    hub: &Hub,
    phase: &str,
    n: u64,
    shape: (usize, u64),
) -> Result<(Placed, Image)> {
    let seed = super::fresh_seed(ctx.settings.seed ^ super::SEED_MIRROR, n);
    let (layers, size) = shape;
    let image = tokio::task::spawn_blocking(move || synth_image(seed, layers, size))
        .await
        .map_err(|e| format!("generating an image: {e}"))?;
    let prefix = ctx.settings.repo_prefix.replace('/', "-");
    let repo = format!("library/{prefix}-{phase}-{seed:016x}");
    hub.place(&repo, TAG, &image).await?;
    let placed = Placed {
        repo,
        manifest: image.manifest.digest.clone(),
        blobs: image
            .blobs()
            .map(|b| (b.digest.clone(), b.size()))
            .collect(),
    };
    Ok((placed, image))
}

/// Every client of the target pulls `image` at once; the wall time of the lot.
async fn pull_together(ctx: &Ctx, image: &Placed) -> Result<Duration> {
    let started = Instant::now();
    let mut pulls = tokio::task::JoinSet::new();
    for i in 0..ctx.target.connections() {
        let (api, repo, manifest) = (
            ctx.target.api(i),
            image.repo.clone(),
            image.manifest.clone(),
        );
        pulls.spawn(async move { api.pull_image(&repo, TAG, Some(&manifest)).await });
    }
    let mut first_error = None;
    while let Some(joined) = pulls.join_next().await {
        let outcome = joined
            .map_err(|e| format!("pull task failed: {e}"))
            .and_then(|pulled| pulled);
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(started.elapsed()),
    }
}

/// Pulls `image` straight from the hub, then cold through the mirror by one client:
/// both times, and what the mirror asked the hub for.
async fn direct_then_mirror(
    ctx: &Ctx,
    hub: &Hub,
    image: &Placed,
) -> Result<(Duration, Duration, UpstreamCount)> {
    let started = Instant::now();
    pull_direct(hub.api(), &image.repo, TAG)
        .await
        .map_err(|e| format!("straight from the hub: {e}"))?;
    let direct = started.elapsed();
    hub.reset().await?;
    let started = Instant::now();
    ctx.api()
        .pull_image(&image.repo, TAG, Some(&image.manifest))
        .await?;
    let one = started.elapsed();
    Ok((direct, one, image.settled_count(hub).await?))
}

async fn cold_round(ctx: &Ctx, hub: &Hub, images: &RoundImages) -> Result<ColdRound> {
    let (direct, one, one_upstream) = direct_then_mirror(ctx, hub, &images.own).await?;
    hub.reset().await?;
    let all = pull_together(ctx, &images.shared).await?;
    let all_upstream = images.shared.settled_count(hub).await?;
    let mut round = ColdRound {
        direct_s: direct.as_secs_f64(),
        one_s: one.as_secs_f64(),
        one_upstream,
        all_s: all.as_secs_f64(),
        all_upstream,
        ..ColdRound::default()
    };
    if let Some(image) = &images.unthrottled {
        let (direct, one, _) = direct_then_mirror(ctx, hub, image).await?;
        round.unthrottled_direct_s = Some(direct.as_secs_f64());
        round.unthrottled_one_s = Some(one.as_secs_f64());
    }
    Ok(round)
}

async fn warm_pulls(ctx: &Ctx, hub: &Hub, image: &Placed, pulls: u64) -> Result<WarmPull> {
    hub.reset().await?;
    let api = ctx.api();
    let mut times = Vec::new();
    for _ in 0..pulls {
        let started = Instant::now();
        api.pull_image(&image.repo, TAG, Some(&image.manifest))
            .await?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(WarmPull {
        pulls,
        seconds: median(&times).unwrap_or_default(),
        upstream_requests: image.settled_count(hub).await?.all,
    })
}

/// Client A's and client B's GETs of one blob, B started once A had some bytes.
struct Joined {
    first: BlobTiming,
    joiner: BlobTiming,
    /// When B started (from A's start), and what A had by then.
    joined_at: Duration,
    joined_after_bytes: u64,
}

/// A GETs the blob; once A has `join_after` bytes, B GETs it too.
async fn join_late(
    ctx: &Ctx,
    repo: &str,
    (digest, size): (&str, u64),
    join_after: u64,
) -> Result<Joined> {
    let (progress, mut watched) = tokio::sync::watch::channel(0u64);
    let first = ctx.target.api(0);
    let (repo_a, digest_a) = (repo.to_string(), digest.to_string());
    let started = Instant::now();
    let a = tokio::spawn(async move {
        first
            .get_blob_observed(&repo_a, &digest_a, size, true, move |n| {
                progress.send_replace(n);
            })
            .await
    });
    let limit = ctx.target.options.timeout;
    let reached = tokio::time::timeout(limit, watched.wait_for(|&n| n >= join_after))
        .await
        .map(|seen| seen.map(drop));
    let (joined_at, joined_after_bytes) = (started.elapsed(), *watched.borrow());
    match reached {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => {
            // A ended (its progress sender is gone) before reaching the mark.
            let a = a.await.map_err(|e| format!("client A's task: {e}"))?;
            return Err(format!(
                "client A ended ({}) with {joined_after_bytes} bytes, before the {join_after} \
                 after which B was to join",
                a.map_or_else(|e| e, |_| "complete".to_string())
            ));
        }
        Err(_) => {
            a.abort();
            return Err(format!(
                "client A had {joined_after_bytes} of {join_after} bytes after {limit:?}"
            ));
        }
    }
    let joiner = ctx
        .target
        .api(1)
        .get_blob_observed(repo, digest, size, true, |_| {})
        .await
        .map_err(|e| format!("client B: {e}"))?;
    let first = a
        .await
        .map_err(|e| format!("client A's task: {e}"))?
        .map_err(|e| format!("client A: {e}"))?;
    if first.total <= joined_at {
        return Err(format!(
            "client A had the whole blob {:?} after its start, before B joined: not a late join \
             (lower mirror-join-after or mirror-slow-rate)",
            first.total
        ));
    }
    Ok(Joined {
        first,
        joiner,
        joined_at,
        joined_after_bytes,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn late_joiner(ctx: &Ctx, hub: &Hub, image: &Placed, slow: &SlowBlob) -> Result<LateJoiner> {
    let (digest, size) = image.blobs.last().ok_or("an image without a layer")?;
    let hex = digest.trim_start_matches("sha256:");
    hub.reset().await?;
    hub.add_faults(&json!({
        "kind": "slow_body",
        "bytes_per_sec": slow.bytes_per_sec,
        "target": "cdn",
        "path_contains": hex,
    }))
    .await?;
    let joined = join_late(ctx, &image.repo, (digest, *size), slow.join_after).await;
    // The fault goes whatever happened, so no later phase meets it.
    let cleared = hub.clear_faults().await;
    let joined = joined?;
    cleared?;
    Ok(LateJoiner {
        blob_bytes: *size,
        bytes_per_sec: slow.bytes_per_sec,
        joined_after_bytes: joined.joined_after_bytes,
        joined_at_ms: millis(joined.joined_at),
        first_byte_ms: millis(joined.first.first_byte),
        first_total_s: joined.first.total.as_secs_f64(),
        joiner_first_byte_ms: millis(joined.joiner.first_byte),
        joiner_total_s: joined.joiner.total.as_secs_f64(),
        upstream: image.settled_count(hub).await?,
    })
}

async fn fan_out(ctx: &Ctx, hub: &Hub, image: &Placed) -> Result<FanOut> {
    hub.reset().await?;
    let pids = &ctx.server_pids;
    let rss_before_mib = (!pids.is_empty()).then(|| procmon::tree_rss_mib(pids));
    let monitor = if pids.is_empty() {
        None
    } else {
        Some(Monitor::start(pids)?)
    };
    let pulled = pull_together(ctx, image).await;
    let usage = monitor.map(Monitor::finish);
    let seconds = pulled?.as_secs_f64();
    Ok(FanOut {
        clients: ctx.target.connections(),
        layer_bytes: image.blobs.last().map_or(0, |(_, size)| *size),
        seconds,
        rss_before_mib,
        peak_rss_mib: usage.map(|u| u.peak_rss_mib),
        server_cpu_s: usage.map(|u| u.cpu_seconds),
        upstream: image.settled_count(hub).await?,
    })
}

#[async_trait]
impl Scenario for MirrorPull {
    async fn setup(&mut self, ctx: &Ctx) -> Result<()> {
        let need = |key: &str, what: &str| {
            ctx.settings.opt(key).map(str::to_string).ok_or_else(|| {
                format!("the mirror scenario needs --opt {key}={what} (see compare.sh)")
            })
        };
        let hub = Hub::new(
            &need("mirror-hub", "http://HOST:PORT of a fake hub")?,
            PathBuf::from(need("mirror-hub-content", "the fake hub's --content DIR")?),
            &ctx.target.options,
        )?;
        hub.health().await?;
        hub.clear_faults().await?;
        ctx.api()
            .ping()
            .await
            .map_err(|e| format!("the mirror target: {e}"))?;
        let slow_size = size_opt(ctx, "mirror-slow-size", 64 << 20, 4 << 20)?;
        self.slow = SlowBlob {
            bytes_per_sec: size_opt(ctx, "mirror-slow-rate", 16 << 20, 4 << 20)?.max(1),
            join_after: size_opt(ctx, "mirror-join-after", 1 << 20, 256 << 10)?,
        };
        if self.slow.join_after >= slow_size {
            return Err(format!(
                "mirror-join-after ({}) must be below mirror-slow-size ({slow_size})",
                self.slow.join_after
            ));
        }
        let upstream_rate = size_opt(ctx, "mirror-upstream-rate", 16 << 20, 4 << 20)?;
        let settings = &ctx.settings;
        let shape = (settings.layers, settings.image_size);
        let rounds = settings.iterations_or(if settings.quick { 1 } else { 3 });
        for i in 0..rounds {
            let (own, image) = place(ctx, &hub, "cold", 3 * i, shape).await?;
            let (shared, _) = place(ctx, &hub, "shared", 3 * i + 1, shape).await?;
            let unthrottled = match upstream_rate {
                0 => None,
                _ => Some(place(ctx, &hub, "fast", 3 * i + 2, shape).await?.0),
            };
            self.figures.blobs = image.layers.len() + 1;
            self.figures.image_bytes = image.blob_bytes();
            if upstream_rate > 0 {
                let throttled = own.blobs.iter().chain(&shared.blobs).map(|(digest, _)| {
                    json!({
                        "kind": "slow_body",
                        "bytes_per_sec": upstream_rate,
                        "target": "cdn",
                        "path_contains": digest.trim_start_matches("sha256:"),
                    })
                });
                hub.add_faults(&json!(throttled.collect::<Vec<_>>()))
                    .await?;
            }
            self.rounds.push(RoundImages {
                own,
                shared,
                unthrottled,
            });
        }
        self.figures.upstream_bytes_per_sec = upstream_rate;
        self.late = Some(place(ctx, &hub, "late", 0, (1, slow_size)).await?.0);
        self.fan_out = Some(
            place(ctx, &hub, "fanout", 0, (1, settings.large_size))
                .await?
                .0,
        );
        self.figures.clients = ctx.target.connections();
        self.hub = Some(hub);
        Ok(())
    }

    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement> {
        let hub = self.hub.as_ref().ok_or("setup did not run")?;
        let mut samples = Samples::default();
        for images in &self.rounds {
            match cold_round(ctx, hub, images).await {
                Ok(round) => {
                    let pulled: u64 = images.shared.blobs.iter().map(|(_, size)| size).sum();
                    let clients = self.figures.clients as u64;
                    samples.ok(Duration::from_secs_f64(round.all_s), pulled * clients);
                    self.figures.rounds.push(round);
                }
                Err(e) => samples.error(format!("cold round: {e}")),
            }
        }
        if let Some(images) = self.rounds.last() {
            let pulls = self.rounds.len() as u64;
            match warm_pulls(ctx, hub, &images.shared, pulls).await {
                Ok(warm) => self.figures.warm = Some(warm),
                Err(e) => samples.error(format!("warm pull: {e}")),
            }
        }
        // The rounds' throttles end here; the late joiner sets its own.
        if let Err(e) = hub.clear_faults().await {
            samples.error(e);
        }
        if let Some(image) = &self.late {
            match late_joiner(ctx, hub, image, &self.slow).await {
                Ok(late) => self.figures.late_joiner = Some(late),
                Err(e) => samples.error(format!("late joiner: {e}")),
            }
        }
        if let Some(image) = &self.fan_out {
            match fan_out(ctx, hub, image).await {
                Ok(fan) => self.figures.fan_out = Some(fan),
                Err(e) => samples.error(format!("fan-out: {e}")),
            }
        }
        let placed = self.rounds.iter().flat_map(RoundImages::all);
        for image in placed.chain(&self.late).chain(&self.fan_out) {
            if let Err(e) = hub.remove(&image.repo).await {
                samples.error(format!("cleanup: {e}"));
            }
        }
        let f = &self.figures;
        let rate = match f.upstream_bytes_per_sec {
            0 => "unthrottled".to_string(),
            r => format!("{:.1} MiB/s per blob", r as f64 / (1 << 20) as f64),
        };
        let notes = vec![format!(
            "{} blobs (config and {} layers), {:.1} MiB per image; {} clients at once; {} \
             cold round(s), upstream CDN {rate}; every blob digest-checked at every client",
            f.blobs,
            f.blobs.saturating_sub(1),
            f.image_bytes as f64 / (1 << 20) as f64,
            f.clients,
            f.rounds.len()
        )];
        Ok(Measurement {
            elapsed: samples.total(),
            samples,
            figure: Figure::SecondsPerOp,
            concurrency: self.figures.clients,
            notes,
        })
    }

    fn report(&self, report: &mut Report) {
        report.mirror = Some(self.figures.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(direct_s: f64, one_s: f64, all_s: f64, all_gets: u64) -> ColdRound {
        ColdRound {
            direct_s,
            one_s,
            all_s,
            all_upstream: UpstreamCount {
                blob_gets: all_gets,
                cdn_gets: all_gets,
                most_gets_of_one_blob: all_gets.div_ceil(6),
                ..UpstreamCount::default()
            },
            ..ColdRound::default()
        }
    }

    #[test]
    fn ratios_of_medians() {
        let figures = MirrorFigures {
            blobs: 6,
            rounds: vec![
                round(1.0, 1.1, 1.2, 6),
                round(2.0, 1.0, 1.0, 6),
                round(1.0, 3.0, 9.0, 6),
            ],
            ..MirrorFigures::default()
        };
        assert_eq!(figures.one_s(), Some(1.1));
        assert_eq!(figures.all_s(), Some(1.2));
        assert_eq!(figures.direct_s(), Some(1.0));
        assert!((figures.all_vs_one().unwrap() - 1.2 / 1.1).abs() < 1e-12);
        assert!((figures.cold_vs_direct().unwrap() - 1.1).abs() < 1e-12);
        assert_eq!(figures.one_fetch_per_blob(), Some(true));
        assert_eq!(figures.unthrottled_one_s(), None);
        let mut with_unthrottled = figures.clone();
        with_unthrottled.rounds[0].unthrottled_direct_s = Some(0.1);
        with_unthrottled.rounds[2].unthrottled_direct_s = Some(0.3);
        with_unthrottled.rounds[2].unthrottled_one_s = Some(0.5);
        assert_eq!(with_unthrottled.unthrottled_direct_s(), Some(0.2));
        assert_eq!(with_unthrottled.unthrottled_one_s(), Some(0.5));

        let empty = MirrorFigures::default();
        assert_eq!(empty.all_vs_one(), None);
        assert_eq!(empty.worst_all_upstream(), None);
        assert_eq!(empty.one_fetch_per_blob(), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn the_worst_round_decides_one_fetch_per_blob() {
        let mut figures = MirrorFigures {
            blobs: 6,
            rounds: vec![round(1.0, 1.0, 1.0, 6), round(1.0, 1.0, 1.0, 49)],
            ..MirrorFigures::default()
        };
        assert_eq!(figures.worst_all_upstream().unwrap().blob_gets, 49);
        assert_eq!(figures.one_fetch_per_blob(), Some(false));
        // Six GETs but one blob twice and another never: not one per blob.
        figures.rounds = vec![round(1.0, 1.0, 1.0, 6)];
        figures.rounds[0].all_upstream.most_gets_of_one_blob = 2;
        assert_eq!(figures.one_fetch_per_blob(), Some(false));
    }

    #[test]
    fn figures_survive_json() {
        let figures = MirrorFigures {
            clients: 8,
            rounds: vec![round(1.0, 1.0, 1.0, 6)],
            fan_out: Some(FanOut {
                peak_rss_mib: Some(40.0),
                ..FanOut::default()
            }),
            ..MirrorFigures::default()
        };
        let line = serde_json::to_string(&figures).unwrap();
        assert_eq!(
            serde_json::from_str::<MirrorFigures>(&line).unwrap(),
            figures
        );
    }
}
