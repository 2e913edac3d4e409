//! Garbage collection, retention, the cache's byte cap and upload expiry: one job
//! that runs while the registry serves.
//!
//! A run has three steps:
//! 1. **Mark** ([`Registry::begin_collection`]): one snapshot of the metadata, the
//!    list of stored blobs and each manifest's references; from then on the registry
//!    records every digest that is referenced, stored or read ("touched").
//! 2. **Plan** ([`plan::plan`], pure): what retention untags, which manifests, links
//!    and blob files nothing needs any more, what the byte cap evicts.
//! 3. **Sweep**: the plan is applied a batch at a time, each batch while holding the
//!    registry's collection guard exclusively (pushes wait a few milliseconds; pulls
//!    never wait), skipping everything touched since the mark and what a touched
//!    manifest references. A blob being streamed when it is deleted keeps streaming:
//!    the reader holds the open file.
//!
//! `portcullis gc` runs the same job against a stopped store; a running server runs
//! it on its schedule, when the cache outgrows its cap, and on `POST /admin/gc`.

pub mod plan;

use crate::config::{Config, GcConfig};
use crate::metrics;
use crate::oci::{manifest, Digest};
use crate::progress::{human_bytes, Progress};
use crate::store::{unix_now, Origin, Registry, Removal, StoreError};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use plan::{Inputs, Plan, Policy, References};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Removals applied per hold of the exclusive guard.
const SWEEP_BATCH: usize = 256;
/// How often the background task flushes access times and checks the cache size.
const TICK: Duration = Duration::from_secs(10);

/// Choices of one run; `None` takes the configured value.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    pub delete_untagged: Option<bool>,
    pub grace: Option<Duration>,
    /// Print progress lines on a terminal (the command line).
    pub show_progress: bool,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub dry_run: bool,
    /// `repo:tag` taken away by retention rules.
    pub untagged: Vec<String>,
    /// `repo@digest` of manifest records dropped.
    pub manifests: Vec<String>,
    pub links_removed: usize,
    /// Digests of blob files deleted.
    pub blobs: Vec<String>,
    pub bytes_freed: u64,
    pub evicted_blobs: usize,
    pub evicted_bytes: u64,
    pub cached_bytes: u64,
    pub uploads_expired: usize,
    pub upload_bytes_freed: u64,
    /// Removals left out because something touched them while the run swept.
    pub kept_in_use: usize,
    pub seconds: f64,
}

impl Report {
    /// One line for logs and the command line.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run { "would free" } else { "freed" };
        format!(
            "gc: {verb} {} in {} blobs; {} manifests, {} tags (retention), {} links, {} expired uploads ({}); \
             cache {} after evicting {} blobs ({}); {} kept as in use; {:.2} s",
            human_bytes(self.bytes_freed),
            self.blobs.len(),
            self.manifests.len(),
            self.untagged.len(),
            self.links_removed,
            self.uploads_expired,
            human_bytes(self.upload_bytes_freed),
            human_bytes(self.cached_bytes),
            self.evicted_blobs,
            human_bytes(self.evicted_bytes),
            self.kept_in_use,
            self.seconds,
        )
    }
}

pub struct Collector {
    registry: Arc<Registry>,
    gc: GcConfig,
    cache_max_bytes: Option<u64>,
    upload_expiry: Duration,
    /// One run at a time.
    running: tokio::sync::Mutex<()>,
    /// Cached bytes the last run measured (plus what was added since: the trigger).
    cached_bytes: AtomicU64,
    last: Mutex<Option<Report>>,
}

impl Collector {
    pub fn new(registry: Arc<Registry>, config: &Config) -> Arc<Collector> {
        Arc::new(Collector {
            registry,
            gc: config.gc.clone(),
            cache_max_bytes: config.cache_max_bytes,
            upload_expiry: config.upload_expiry,
            running: tokio::sync::Mutex::new(()),
            cached_bytes: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    /// The report of the last finished run.
    pub fn last_report(&self) -> Option<Report> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs a collection: mark, plan, sweep (unless dry), then expires uploads.
    pub async fn run(&self, options: &RunOptions) -> Result<Report, StoreError> {
        let _one = self.running.lock().await;
        let started = Instant::now();
        let policy = Policy {
            delete_untagged: options.delete_untagged.unwrap_or(self.gc.delete_untagged),
            grace_secs: options.grace.unwrap_or(self.gc.grace).as_secs(),
            retention: self.gc.retention.clone(),
            cache_max_bytes: self.cache_max_bytes,
        };
        // What was read since the last flush counts as read.
        if !options.dry_run {
            self.registry.flush_access().await?;
        }
        let snapshot = self.registry.begin_collection().await?;
        let result = self.collect(&snapshot, &policy, options).await;
        self.registry.end_collection();
        let report = match result {
            Ok(mut report) => self
                .expire_uploads(&mut report, options.dry_run)
                .await
                .map(|()| report),
            Err(e) => Err(e),
        };
        let m = metrics::get();
        let mut report = match report {
            Ok(report) => report,
            Err(e) => {
                m.gc_runs.with_label_values(&["failed"]).inc();
                return Err(e);
            }
        };
        report.seconds = started.elapsed().as_secs_f64();
        if !options.dry_run {
            m.gc_runs.with_label_values(&["ok"]).inc();
            m.gc_seconds.observe(report.seconds);
            m.gc_freed_bytes.inc_by(report.bytes_freed);
            m.gc_deleted_blobs.inc_by(report.blobs.len() as u64);
            m.cache_evicted_bytes.inc_by(report.evicted_bytes);
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        }
        Ok(report)
    }

    async fn collect(
        &self,
        snapshot: &crate::store::MetaSnapshot,
        policy: &Policy,
        options: &RunOptions,
    ) -> Result<Report, StoreError> {
        let blobs = self.registry.blob_store();
        let stored = blobs.list_blobs().await?;
        let graph = self.references(snapshot, options.show_progress).await?;
        let mut accessed: HashMap<Digest, u64> = snapshot.accessed.iter().cloned().collect();
        for (digest, at) in self.registry.pending_access() {
            let entry = accessed.entry(digest).or_default();
            *entry = (*entry).max(at);
        }
        // Measured now: what arrives from here on is added to the next measure.
        if !options.dry_run {
            self.registry.take_cached_bytes_added();
        }
        let plan = plan::plan(
            &Inputs {
                snapshot,
                graph: &graph,
                stored: &stored,
                accessed: &accessed,
                now: unix_now(),
            },
            policy,
        );
        let mut report = Report {
            dry_run: options.dry_run,
            untagged: plan
                .untag
                .iter()
                .map(|t| format!("{}:{}", t.repo, t.tag))
                .collect(),
            manifests: plan
                .manifests
                .iter()
                .map(|(repo, digest)| format!("{repo}@{digest}"))
                .collect(),
            links_removed: plan.links.len(),
            blobs: plan.files.iter().map(|(d, _)| d.to_string()).collect(),
            bytes_freed: plan.bytes_freed(),
            evicted_blobs: plan.evicted.len(),
            evicted_bytes: plan.evicted.iter().map(|(_, size)| size).sum(),
            cached_bytes: plan.cached_bytes_after,
            ..Report::default()
        };
        let stored_bytes: u64 = stored.iter().map(|b| b.size).sum();
        let (stored_bytes, cached_bytes) = if options.dry_run {
            (stored_bytes, plan.cached_bytes_before)
        } else {
            self.sweep(snapshot, &plan, &graph, &mut report, options.show_progress)
                .await?;
            self.cached_bytes
                .store(plan.cached_bytes_after, Ordering::Relaxed);
            (
                stored_bytes.saturating_sub(report.bytes_freed),
                plan.cached_bytes_after,
            )
        };
        let gauge = |origin: Origin, bytes: u64| {
            metrics::get()
                .store_bytes
                .with_label_values(&[origin.as_str()])
                .set(bytes as i64);
        };
        gauge(Origin::Cached, cached_bytes);
        gauge(Origin::Pushed, stored_bytes.saturating_sub(cached_bytes));
        Ok(report)
    }

    /// What every stored manifest references, from its bytes.
    async fn references(
        &self,
        snapshot: &crate::store::MetaSnapshot,
        show_progress: bool,
    ) -> Result<HashMap<Digest, References>, StoreError> {
        let mut graph = HashMap::new();
        let mut progress = show_progress.then(|| {
            Progress::new(
                "gc: reading manifests",
                Some(snapshot.manifests.len() as u64),
            )
        });
        for entry in &snapshot.manifests {
            if let Some(p) = progress.as_mut() {
                p.advance(1, entry.record.size);
            }
            if graph.contains_key(&entry.digest) {
                continue;
            }
            // Missing or unparsable bytes reference nothing (fsck reports them).
            let Some(bytes) = self.registry.blob_store().read_all(&entry.digest).await? else {
                continue;
            };
            let Ok(parsed) = manifest::parse(Some(&entry.record.media_type), &bytes) else {
                continue;
            };
            graph.insert(
                entry.digest.clone(),
                References {
                    blobs: parsed
                        .blobs
                        .iter()
                        .filter(|b| b.urls.is_empty())
                        .map(|b| b.digest.clone())
                        .collect(),
                    children: parsed.children.iter().map(|c| c.digest.clone()).collect(),
                },
            );
        }
        Ok(graph)
    }

    /// Applies the plan a batch at a time under the exclusive guard, in the plan's
    /// order: tags, manifests (parents first), links, then files.
    async fn sweep(
        &self,
        snapshot: &crate::store::MetaSnapshot,
        plan: &Plan,
        graph: &HashMap<Digest, References>,
        report: &mut Report,
        show_progress: bool,
    ) -> Result<(), StoreError> {
        // Made a batch at a time: a plan can name hundreds of thousands of records.
        let untag = plan.untag.iter().map(|t| {
            Step::Records(
                t.digest.clone(),
                vec![Removal::Tag {
                    repo: t.repo.clone(),
                    tag: t.tag.clone(),
                    digest: t.digest.clone(),
                }],
            )
        });
        let manifests = plan.manifests.iter().map(|(repo, digest)| {
            Step::Records(digest.clone(), snapshot.manifest_removals(repo, digest))
        });
        let links = plan.links.iter().map(|(repo, digest)| {
            Step::Records(
                digest.clone(),
                vec![Removal::Link {
                    repo: repo.clone(),
                    digest: digest.clone(),
                }],
            )
        });
        let files = plan
            .files
            .iter()
            .map(|(d, size)| Step::File(d.clone(), *size));
        let total = plan.untag.len() + plan.manifests.len() + plan.links.len() + plan.files.len();
        let mut steps = untag.chain(manifests).chain(links).chain(files);

        let mut progress = show_progress.then(|| Progress::new("gc: sweeping", Some(total as u64)));
        // Touched content, and everything a touched manifest references: kept.
        let mut kept: HashSet<Digest> = HashSet::new();
        let (mut deleted, mut freed) = (HashSet::new(), 0u64);
        loop {
            let batch: Vec<Step> = steps.by_ref().take(SWEEP_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            let _exclusive = self.registry.gc_guard_exclusive().await;
            let mut removals = Vec::new();
            let mut files = Vec::new();
            for step in &batch {
                let digest = step.digest();
                if !kept.contains(digest) && self.registry.touched(digest) {
                    keep_with_references(digest, graph, &mut kept);
                }
                if kept.contains(digest) {
                    report.kept_in_use += 1;
                    continue;
                }
                match step {
                    Step::Records(_, records) => removals.extend(records.iter().cloned()),
                    Step::File(digest, size) => {
                        removals.push(Removal::Access {
                            digest: digest.clone(),
                        });
                        files.push((digest.clone(), *size));
                    }
                }
            }
            // Records first: a crash between the two leaves only unreferenced files,
            // which the next run deletes.
            self.registry.meta().remove_records(removals).await?;
            for (digest, size) in files {
                if self.registry.blob_store().delete_blob(&digest).await? {
                    deleted.insert(digest.to_string());
                    freed += size;
                }
            }
            if let Some(p) = progress.as_mut() {
                p.advance(batch.len() as u64, 0);
            }
        }
        // The report tells what really went.
        report.blobs.retain(|d| deleted.contains(d));
        report.bytes_freed = freed;
        Ok(())
    }

    /// Expires idle uploads on their own, between collections.
    pub async fn expire_idle_uploads(&self) -> Result<Report, StoreError> {
        let mut report = Report::default();
        self.expire_uploads(&mut report, false).await?;
        Ok(report)
    }

    /// Removes upload sessions idle longer than `storage.upload_expiry_secs`.
    async fn expire_uploads(&self, report: &mut Report, dry_run: bool) -> Result<(), StoreError> {
        let blobs = self.registry.blob_store();
        let oldest = unix_now().saturating_sub(self.upload_expiry.as_secs());
        for upload in blobs.list_uploads().await? {
            if upload.modified >= oldest {
                continue;
            }
            if !(dry_run || blobs.upload_cancel(&upload.id).await?) {
                continue;
            }
            report.uploads_expired += 1;
            report.upload_bytes_freed += upload.size;
            if !dry_run {
                let m = metrics::get();
                m.upload_sessions.with_label_values(&["expired"]).inc();
                m.gc_freed_bytes.inc_by(upload.size);
            }
        }
        Ok(())
    }

    /// The cache may have outgrown its cap since the last measure.
    fn cache_over_cap(&self) -> bool {
        self.cache_max_bytes.is_some_and(|cap| {
            self.cached_bytes.load(Ordering::Relaxed) + self.registry.peek_cached_bytes_added()
                > cap
        })
    }
}

/// One removal of a sweep, with the digest that keeps it when touched.
enum Step {
    Records(Digest, Vec<Removal>),
    File(Digest, u64),
}

impl Step {
    fn digest(&self) -> &Digest {
        match self {
            Step::Records(digest, _) | Step::File(digest, _) => digest,
        }
    }
}

/// Marks `digest` and, if it is a manifest, everything it references as kept.
fn keep_with_references(
    digest: &Digest,
    graph: &HashMap<Digest, References>,
    kept: &mut HashSet<Digest>,
) {
    let mut stack = vec![digest.clone()];
    while let Some(d) = stack.pop() {
        if let Some(refs) = graph.get(&d) {
            stack.extend(refs.blobs.iter().cloned());
            stack.extend(refs.children.iter().cloned());
        }
        kept.insert(d);
    }
}

/// The server's maintenance: access times flushed every few seconds, a collection
/// on the configured schedule and whenever the cache outgrows its cap.
pub struct Maintenance(pub Arc<Collector>);

impl Maintenance {
    async fn collect(&self, why: &str) {
        match self.0.run(&RunOptions::default()).await {
            Ok(report) => tracing::info!(reason = why, "{}", report.summary()),
            Err(e) => tracing::error!(reason = why, "garbage collection failed: {e}"),
        }
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let collector = &self.0;
        let mut next_run = collector.gc.interval.map(|i| Instant::now() + i);
        // Uploads are checked a few times per expiry period (at most hourly).
        let expiry_check = (collector.upload_expiry / 4).min(Duration::from_secs(3600));
        let mut next_expiry = Instant::now();
        // The first measure of the cache, so the cap holds from the start; without a
        // cap a dry run measures the store for `portcullis_store_bytes`.
        if collector.cache_max_bytes.is_some() {
            self.collect("measuring the cache").await;
        } else {
            let measure = RunOptions {
                dry_run: true,
                ..RunOptions::default()
            };
            if let Err(e) = collector.run(&measure).await {
                tracing::warn!("measuring the store failed: {e}");
            }
        }
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // The server's drain saves the access times once requests are done.
                _ = shutdown.changed() => return,
            }
            if let Err(e) = collector.registry.flush_access().await {
                tracing::warn!("access times not saved: {e}");
            }
            if collector.cache_over_cap() {
                self.collect("the cache is over cache.max_bytes").await;
            }
            if Instant::now() >= next_expiry {
                next_expiry = Instant::now() + expiry_check;
                match collector.expire_idle_uploads().await {
                    Ok(r) if r.uploads_expired > 0 => tracing::info!(
                        sessions = r.uploads_expired,
                        bytes = r.upload_bytes_freed,
                        "expired idle upload sessions"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("upload expiry failed: {e}"),
                }
            }
            if next_run.is_some_and(|at| Instant::now() >= at) {
                self.collect("schedule").await;
                next_run = collector.gc.interval.map(|i| Instant::now() + i);
            }
        }
    }
}
