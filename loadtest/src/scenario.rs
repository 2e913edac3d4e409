//! The scenario registry and the driver that runs one scenario against one target.
//!
//! A scenario is a [`Scenario`]: `setup` seeds what it needs (not measured), `run`
//! measures and returns a [`Measurement`], `report` may add notes. [`SCENARIOS`] lists
//! them by name. A new scenario is one file under `scenarios/` and one [`Entry`] here; scenario-specific parameters arrive through
//! `--opt key=value` ([`Settings::opt`]) so the CLI need not change.
//!
//! Limits: every loop stops at the earlier of `--duration` and `--max-ops`; setup and
//! run are each cut off after `--max-time`; every request has `--timeout`.

use crate::client::{Api, Result, Target, UploadMode};
use crate::procmon::{self, Monitor};
use crate::report::Report;
use crate::scenarios::clients::{ClientCopy, Direction, Tool};
use crate::stats::Samples;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a scenario may be told, with defaults already applied.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    /// How long a measured loop runs.
    pub duration: Duration,
    /// Most operations a measured loop makes.
    pub max_ops: u64,
    /// Hard limit for setup, and separately for run.
    pub max_time: Duration,
    /// Connections (`None`: the scenario's own default).
    pub connections: Option<usize>,
    /// Concurrent requests per connection (h2 streams).
    pub streams: usize,
    /// Repetitions for one-at-a-time scenarios (`None`: the scenario's default).
    pub iterations: Option<u64>,
    pub blob_size: u64,
    pub large_size: u64,
    pub image_size: u64,
    pub layers: usize,
    pub upload: UploadMode,
    pub verify: bool,
    pub repo_prefix: String,
    pub seed: u64,
    pub skopeo: String,
    pub podman: String,
    /// Extra `key=value` parameters for scenarios (`--opt`).
    pub extra: BTreeMap<String, String>,
}

impl Settings {
    pub fn opt(&self, key: &str) -> Option<&str> {
        self.extra.get(key).map(String::as_str)
    }

    pub fn connections_or(&self, default: usize) -> usize {
        self.connections.unwrap_or(default).max(1)
    }

    pub fn iterations_or(&self, default: u64) -> u64 {
        self.iterations
            .unwrap_or(default)
            .clamp(1, self.max_ops.max(1))
    }
}

/// What a scenario runs against.
pub struct Ctx {
    pub target: Target,
    pub settings: Settings,
    /// The server processes `--server-pid` names, for scenarios that measure one phase.
    pub server_pids: Vec<u32>,
}

impl Ctx {
    /// A repository name under the run's prefix.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.settings.repo_prefix)
    }

    pub fn api(&self) -> Api {
        self.target.api(0)
    }
}

/// The headline figure a scenario produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// Operations per second (higher is better).
    RequestsPerSecond,
    /// Payload MiB per second (higher is better).
    MibPerSecond,
    /// Median seconds per operation (lower is better).
    SecondsPerOp,
}

impl Figure {
    pub fn unit(self) -> &'static str {
        match self {
            Figure::RequestsPerSecond => "req/s",
            Figure::MibPerSecond => "MiB/s",
            Figure::SecondsPerOp => "s",
        }
    }
}

/// What `run` observed.
pub struct Measurement {
    pub samples: Samples,
    pub elapsed: Duration,
    pub figure: Figure,
    /// Concurrent operations in flight.
    pub concurrency: usize,
    pub notes: Vec<String>,
}

#[async_trait]
pub trait Scenario: Send {
    /// Seeds the data `run` needs (pushes manifests and blobs). Not measured.
    async fn setup(&mut self, ctx: &Ctx) -> Result<()>;
    /// The measured phase.
    async fn run(&mut self, ctx: &Ctx) -> Result<Measurement>;
    /// Adds scenario-specific lines to the report.
    fn report(&self, _report: &mut Report) {}
}

pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    /// Connections when `--connections` is not given.
    pub connections: usize,
    pub make: fn() -> Box<dyn Scenario>,
}

/// Every scenario, by name. Add a line here to add one.
pub const SCENARIOS: &[Entry] = &[
    Entry {
        name: "small",
        connections: 64,
        about: "GET /v2/, manifest HEAD and GET by tag over keep-alive connections (default 64)",
        make: || Box::new(crate::scenarios::small::Small::default()),
    },
    Entry {
        name: "ceiling",
        connections: 64,
        about: "GET /v2/ alone at concurrency (default 64), nothing seeded: against a static file server, the small-response ceiling",
        make: || Box::new(crate::scenarios::small::Small::ceiling()),
    },
    Entry {
        name: "blob",
        connections: 16,
        about: "GET of one blob (--blob-size, default 1MiB) at concurrency (default 16), digest-checked",
        make: || Box::new(crate::scenarios::blob::BlobGet::default()),
    },
    Entry {
        name: "large",
        connections: 1,
        about: "download of one large blob (--large-size, default 512MiB), digest-checked while streaming",
        make: || Box::new(crate::scenarios::large::Large::default()),
    },
    Entry {
        name: "push",
        connections: 1,
        about: "push of fresh synthetic images (--layers, --image-size) through the API",
        make: || Box::new(crate::scenarios::image::Push),
    },
    Entry {
        name: "pull",
        connections: 1,
        about: "pull of a synthetic image: manifest GET, blob GETs in parallel, digests checked",
        make: || Box::new(crate::scenarios::image::Pull::default()),
    },
    Entry {
        name: "skopeo-push",
        connections: 1,
        about: "skopeo copy of fresh synthetic images from an OCI layout to the registry (a real client, timed per command)",
        make: || Box::new(ClientCopy::new(Tool::Skopeo, Direction::Push)),
    },
    Entry {
        name: "skopeo-pull",
        connections: 1,
        about: "skopeo copy of a fresh image from the registry to an OCI layout",
        make: || Box::new(ClientCopy::new(Tool::Skopeo, Direction::Pull)),
    },
    Entry {
        name: "podman-pull",
        connections: 1,
        about: "podman pull of a fresh image into fresh private storage (vfs)",
        make: || Box::new(ClientCopy::new(Tool::Podman, Direction::Pull)),
    },
    Entry {
        name: "podman-push",
        connections: 1,
        about: "podman push of a fresh local image (podman gzips layers on the way)",
        make: || Box::new(ClientCopy::new(Tool::Podman, Direction::Push)),
    },
    Entry {
        name: "mirror",
        connections: 8,
        about: "pull-through cache whose upstream is a fake hub (--opt mirror-hub=URL, mirror-hub-content=DIR): cold pulls by one and by 8 clients vs straight from the hub, upstream GETs, warm pull, a late joiner's first byte, 8 clients of one --large-size layer",
        make: || Box::new(crate::scenarios::mirror::MirrorPull::default()),
    },
    Entry {
        name: "soak",
        connections: 4,
        about: "mixed pushes, pulls, tag and blob deletes for --duration, every byte verified",
        make: || Box::new(crate::scenarios::soak::Soak),
    },
];

pub fn find(name: &str) -> Result<&'static Entry> {
    SCENARIOS.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCENARIOS.iter().map(|e| e.name).collect();
        format!("unknown scenario {name:?}; known: {}", names.join(", "))
    })
}

/// Runs one scenario: setup, then run under the resource monitor, then the report.
/// A scenario that cannot run still yields a report (with `error` set).
pub async fn drive(entry: &Entry, ctx: &Ctx, label: &str, server_pids: &[u32]) -> Report {
    let mut report = Report::new(entry.name, label, ctx);
    let mut scenario = (entry.make)();
    let limit = ctx.settings.max_time;
    match tokio::time::timeout(limit, scenario.setup(ctx)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return report.failed(format!("setup: {e}")),
        Err(_) => return report.failed(format!("setup took longer than {limit:?}")),
    }
    let monitor = if server_pids.is_empty() {
        None
    } else {
        match Monitor::start(server_pids) {
            Ok(m) => Some(m),
            Err(e) => return report.failed(e),
        }
    };
    let own_cpu = procmon::own_cpu_seconds();
    let outcome = tokio::time::timeout(limit, scenario.run(ctx)).await;
    let client_cpu = procmon::own_cpu_seconds() - own_cpu;
    let usage = monitor.map(Monitor::finish);
    match outcome {
        Ok(Ok(measurement)) => {
            report.fill(measurement, usage, client_cpu);
            scenario.report(&mut report);
            report
        }
        Ok(Err(e)) => report.failed(format!("run: {e}")),
        Err(_) => report.failed(format!("run took longer than {limit:?}")),
    }
}

/// Runs `op` in a closed loop on `workers` tasks (worker `w` uses connection
/// `w % connections`) until the duration or the operation budget is spent.
/// `op` gets the worker index, a global operation number and the API.
pub async fn closed_loop<F, Fut>(ctx: &Ctx, workers: usize, op: F) -> Measurement
where
    F: Fn(usize, u64, Api) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let max_ops = ctx.settings.max_ops;
    let start = Instant::now();
    let deadline = start + ctx.settings.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (op, counter, api) = (op.clone(), counter.clone(), ctx.target.api(w));
        tasks.spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= max_ops {
                    break;
                }
                let t0 = Instant::now();
                let result = op(w, n, api.clone()).await;
                samples.record(t0.elapsed(), result);
            }
            samples
        });
    }
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(s) => samples.merge(s),
            Err(e) => samples.error(format!("worker panicked: {e}")),
        }
    }
    Measurement {
        samples,
        elapsed: start.elapsed(),
        figure: Figure::RequestsPerSecond,
        concurrency: workers,
        notes: Vec::new(),
    }
}

/// Runs `op` one at a time, `iterations` times, stopping early (after at least one)
/// once the duration is spent. `op` returns the bytes moved and the time to count
/// (so it can leave preparation out of the measurement).
pub async fn one_at_a_time<F, Fut>(ctx: &Ctx, iterations: u64, mut op: F) -> Samples
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(u64, Duration)>>,
{
    let deadline = Instant::now() + ctx.settings.duration;
    let mut samples = Samples::default();
    for i in 0..iterations {
        if i > 0 && Instant::now() >= deadline {
            break;
        }
        match op(i).await {
            Ok((bytes, took)) => samples.ok(took, bytes),
            Err(e) => samples.error(e),
        }
    }
    samples
}
