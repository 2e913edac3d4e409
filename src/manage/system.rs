//! The system's state for admins: upstreams and whether they are up, bytes stored by
//! origin, the pull-through cache's outcomes, the last garbage collection; and a
//! collection run on request. Numbers come from the same places `/metrics` and
//! `/readyz` read, so the pages and the monitoring agree.

use super::{ManageError, Manager};
use crate::gc::{Report, RunOptions};
use crate::metrics;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamView {
    pub name: String,
    /// Not marked down after failures.
    pub up: bool,
    /// The last `ratelimit-remaining` it reported (Docker Hub's pull quota).
    pub rate_limit_remaining: Option<String>,
}

/// Blob bytes in the store, as garbage collection last measured them plus what was
/// stored since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct StoredBytes {
    pub pushed: u64,
    pub cached: u64,
}

/// Pull-through cache lookups of one kind (`manifest`, `blob`, `tag_list`) and outcome
/// (`hit`, `miss`, `revalidated`, `coalesced`, `stale`) since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheCount {
    pub kind: String,
    pub result: String,
    pub count: u64,
}

/// A garbage collection's report in numbers (the full report lists every digest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcSummary {
    pub dry_run: bool,
    pub untagged: usize,
    pub manifests: usize,
    pub links_removed: usize,
    pub blobs: usize,
    pub bytes_freed: u64,
    pub evicted_blobs: usize,
    pub evicted_bytes: u64,
    pub cached_bytes: u64,
    pub uploads_expired: usize,
    pub upload_bytes_freed: u64,
    pub kept_in_use: usize,
    pub seconds: f64,
    /// The line the log has.
    pub summary: String,
}

impl From<&Report> for GcSummary {
    fn from(r: &Report) -> GcSummary {
        GcSummary {
            dry_run: r.dry_run,
            untagged: r.untagged.len(),
            manifests: r.manifests.len(),
            links_removed: r.links_removed,
            blobs: r.blobs.len(),
            bytes_freed: r.bytes_freed,
            evicted_blobs: r.evicted_blobs,
            evicted_bytes: r.evicted_bytes,
            cached_bytes: r.cached_bytes,
            uploads_expired: r.uploads_expired,
            upload_bytes_freed: r.upload_bytes_freed,
            kept_in_use: r.kept_in_use,
            seconds: r.seconds,
            summary: r.summary(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemView {
    pub version: &'static str,
    /// Maintenance mode: pushes and deletes are refused.
    pub read_only: bool,
    pub accounts: bool,
    /// Docker token authentication (`auth.token`).
    pub token_auth: bool,
    pub upstreams: Vec<UpstreamView>,
    pub stored_bytes: StoredBytes,
    pub cache: Vec<CacheCount>,
    /// The last collection that was not a dry run, since the server started.
    pub last_gc: Option<GcSummary>,
}

/// Pure: bytes by origin from the `portcullis_store_bytes` series.
fn stored_bytes(series: &[metrics::Series]) -> StoredBytes {
    let mut bytes = StoredBytes::default();
    for s in series {
        let value = s.value.max(0.0) as u64;
        match s.label("origin") {
            "pushed" => bytes.pushed = value,
            "cached" => bytes.cached = value,
            _ => {}
        }
    }
    bytes
}

impl Manager<'_> {
    pub fn system(&self) -> Result<SystemView, ManageError> {
        self.require_admin("the system page")?;
        let m = metrics::get();
        let upstreams = self
            .api
            .mirror
            .upstreams()
            .iter()
            .map(|u| UpstreamView {
                name: u.name.clone(),
                up: u.is_up(),
                rate_limit_remaining: u.rate_limit_remaining(),
            })
            .collect();
        let cache = metrics::series(&m.cache)
            .iter()
            .map(|s| CacheCount {
                kind: s.label("kind").to_string(),
                result: s.label("result").to_string(),
                count: s.value as u64,
            })
            .collect();
        Ok(SystemView {
            version: env!("CARGO_PKG_VERSION"),
            read_only: self.api.read_only,
            accounts: self.api.accounts.is_some(),
            token_auth: self.api.tokens.is_some(),
            upstreams,
            stored_bytes: stored_bytes(&metrics::series(&m.store_bytes)),
            cache,
            last_gc: self
                .api
                .collector
                .last_report()
                .as_ref()
                .map(GcSummary::from),
        })
    }

    /// Runs a garbage collection now (waiting for one under way) and reports it.
    pub async fn run_gc(&self, options: RunOptions) -> Result<GcSummary, ManageError> {
        self.require_admin("garbage collection")?;
        let report = self.api.collector.run(&options).await?;
        tracing::info!(reason = "REST request", "{}", report.summary());
        Ok(GcSummary::from(&report))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, user};
    use super::*;

    #[test]
    fn bytes_by_origin() {
        let series = |origin: &str, value| metrics::Series {
            labels: vec![("origin".into(), origin.into())],
            value,
        };
        assert_eq!(
            stored_bytes(&[
                series("pushed", 10.0),
                series("cached", 5.0),
                series("x", 1.0)
            ]),
            StoredBytes {
                pushed: 10,
                cached: 5
            }
        );
        assert_eq!(
            stored_bytes(&[series("cached", -3.0)]),
            StoredBytes::default()
        );
    }

    #[tokio::test]
    async fn admins_see_the_system_and_collect() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir, true).await;
        let admin = Manager::new(&api, user("admin"), None);
        assert_eq!(
            Manager::new(&api, user("bob"), None)
                .system()
                .unwrap_err()
                .status(),
            403
        );
        let before = admin.system().unwrap();
        assert_eq!(before.upstreams[0].name, "docker.io");
        assert!(before.upstreams[0].up && before.accounts && before.last_gc.is_none());
        let report = admin.run_gc(RunOptions::default()).await.unwrap();
        assert!(!report.dry_run);
        assert_eq!(admin.system().unwrap().last_gc, Some(report));
    }
}
