//! `gc-bench`: garbage collection at scale (DESIGN.md §7: "GC of 100k blobs / 10k
//! manifests: online, < 60 s, < 128 MiB extra RSS").
//!
//! 1. `gc-store` writes a store into `DIR/store` (timed; with `--store` an existing
//!    one is copied there instead), and `cp -a` copies it to `DIR/online`;
//! 2. offline, as child processes on `DIR/store`: `portcullis gc --dry-run --grace 0s
//!    --delete-untagged`, then the same without `--dry-run`; wall time from `wait4` and
//!    the child's peak RSS (`ru_maxrss`);
//! 3. online: `portcullis serve --data DIR/online --listen 127.0.0.1:PORT`; workers
//!    pull tagged images (digests checked) and push fresh images (fresh layers) while
//!    `POST /admin/gc?grace=0s&delete_untagged=true` runs; the server's RSS just before
//!    and its peak during the collection (`procmon`); every request that overlapped
//!    the collection is counted, and every image pushed is pulled back afterwards.
//!
//! Each collection's report is checked against what the generator says must go
//! ([`crate::gcstore::Expected`]); a difference counts as an error, as a failed
//! request does. One [`Report`] line (scenario `gc`, figures in `gc`) goes to stdout
//! with `--json`, for `report` and `loadtest/RESULTS.md`.

use crate::client::{Api, ClientOptions, Target, UploadMode};
use crate::gcstore::{generate, Expected, StoreFigures, StoreShape};
use crate::image::synth_image;
use crate::procmon::{self, Monitor};
use crate::report::Report;
use crate::stats::Samples;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Load before the collection starts, and after it ends.
const WARM_UP: Duration = Duration::from_secs(2);
const COOL_DOWN: Duration = Duration::from_secs(1);
/// Repositories whose tags the pulls pick from.
const PULL_REPOS: usize = 8;

#[derive(clap::Args)]
pub struct GcBenchArgs {
    /// The portcullis binary to measure.
    #[arg(long)]
    pub portcullis: PathBuf,
    /// Work directory (created; the stores go under it, removed at the end unless --keep).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub shape: StoreShape,
    /// A store `gc-store` wrote (with its gc-store.json), used instead of writing one:
    /// it is copied, never changed, so it can be measured again.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Write the store here, then copy it under --dir: on a tmpfs (/dev/shm) writing skips
    /// the fsyncs of every blob (3 per blob: about 30 ms each on this machine's disk),
    /// while the collections still run on --dir's disk. Removed afterwards.
    #[arg(long, conflicts_with = "store")]
    pub scratch: Option<PathBuf>,
    /// Client workers during the online collection (each pulls 3 times, then pushes).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Name of the target in the report.
    #[arg(long, default_value = "portcullis")]
    pub label: String,
    /// Print one JSON line on stdout (human lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the stores.
    #[arg(long)]
    pub keep: bool,
}

/// What a collection's report said, in counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Collected {
    /// Blob files deleted (or, dry, to delete): unreferenced blobs and manifests' bytes.
    pub files: usize,
    pub bytes_freed: u64,
    pub manifests: usize,
    pub links_removed: usize,
    pub kept_in_use: usize,
    /// The collector's own time (`Report::seconds`).
    pub gc_seconds: f64,
}

/// `portcullis gc` as a child process.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct OfflineRun {
    pub dry_run: bool,
    /// Start to exit (the store opened, the collection, the output).
    pub seconds: f64,
    pub peak_rss_mib: f64,
    pub collected: Collected,
    pub summary: String,
}

/// `POST /admin/gc` on a server under load.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct OnlineRun {
    /// The POST, sent to answered.
    pub request_seconds: f64,
    pub collected: Collected,
    /// The server's resident memory just before the POST, and its peak until the answer.
    pub rss_before_mib: f64,
    pub peak_rss_mib: f64,
    pub server_cpu_s: f64,
    pub workers: usize,
    /// Client operations (a whole pull or push) that overlapped the collection.
    pub pulls_during: u64,
    pub pushes_during: u64,
    pub errors_during: u64,
    /// All operations, warm-up and cool-down included.
    pub ops: u64,
    pub errors: u64,
    /// Images pushed during the run, pulled back after it; how many failed.
    pub pushed_checked: u64,
    pub pushed_missing: u64,
}

/// Everything `gc-bench` measured; in the JSON line as `gc`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GcFigures {
    pub store: StoreFigures,
    pub copy_seconds: f64,
    pub offline: Vec<OfflineRun>,
    pub online: Option<OnlineRun>,
}

impl Collected {
    fn from_report(r: &portcullis::gc::Report) -> Collected {
        Collected {
            files: r.blobs.len(),
            bytes_freed: r.bytes_freed,
            manifests: r.manifests.len(),
            links_removed: r.links_removed,
            kept_in_use: r.kept_in_use,
            gc_seconds: r.seconds,
        }
    }

    /// Differences from what the generator expects, as sentences.
    fn check(&self, what: &str, expected: &Expected) -> Vec<String> {
        let mut out = Vec::new();
        if self.files != expected.files {
            out.push(format!(
                "{what}: {} blob files collected, the generator expects {}",
                self.files, expected.files
            ));
        }
        if self.manifests != expected.manifests {
            out.push(format!(
                "{what}: {} manifest records dropped, the generator expects {}",
                self.manifests, expected.manifests
            ));
        }
        out
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs `command` to its end; wall time and peak RSS from `wait4`.
fn run_measured(mut command: Command, log: &Path) -> Result<(f64, f64), String> {
    let out = std::fs::File::create(log).map_err(io("creating the child's log"))?;
    let err = out.try_clone().map_err(io("creating the child's log"))?;
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; the pointers outlive the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if rc != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        return Err(format!(
            "{command:?} failed (wait status {status}): {}",
            tail.join(" / ")
        ));
    }
    // Linux reports ru_maxrss in KiB.
    Ok((seconds, usage.ru_maxrss as f64 / 1024.0))
}

/// Reads the figures out of `portcullis gc`'s last line: "gc: freed 1.2 MiB in 3
/// blobs; 4 manifests, 0 tags (retention), 5 links, ...; 6.78 s" (dry: "would free").
fn parse_summary(line: &str) -> Result<Collected, String> {
    let bad = || format!("unexpected gc summary: {line:?}");
    let number_before = |word: &str| -> Result<f64, String> {
        let at = line.find(word).ok_or_else(bad)?;
        line[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.trim_start_matches(';').parse().ok())
            .ok_or_else(bad)
    };
    let seconds = line
        .rsplit(';')
        .next()
        .and_then(|s| s.trim().strip_suffix(" s"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Collected {
        files: number_before(" blobs;")? as usize,
        manifests: number_before(" manifests,")? as usize,
        links_removed: number_before(" links,")? as usize,
        kept_in_use: number_before(" kept as in use")? as usize,
        gc_seconds: seconds,
        // Only the human form is printed; the online run reports bytes exactly.
        bytes_freed: 0,
    })
}

fn offline(args: &GcBenchArgs, data: &Path, dry_run: bool) -> Result<OfflineRun, String> {
    let mut command = Command::new(&args.portcullis);
    command
        .arg("gc")
        .arg("--data")
        .arg(data)
        .args(["--grace", "0s", "--delete-untagged"]);
    if dry_run {
        command.arg("--dry-run");
    }
    let log = args
        .dir
        .join(if dry_run { "gc-dry-run.log" } else { "gc.log" });
    let (seconds, peak_rss_mib) = run_measured(command, &log)?;
    let text = std::fs::read_to_string(&log).map_err(io("reading the gc output"))?;
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("gc: "))
        .ok_or_else(|| format!("no summary line in {}", log.display()))?
        .to_string();
    Ok(OfflineRun {
        dry_run,
        seconds,
        peak_rss_mib,
        collected: parse_summary(&summary)?,
        summary,
    })
}

/// A running `portcullis serve`, stopped (SIGTERM, then SIGKILL) on drop.
struct Server {
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_loopback_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding a port"))?;
    Ok(listener.local_addr().map_err(io("binding a port"))?.port())
}

async fn start_server(args: &GcBenchArgs, data: &Path) -> Result<(Server, Target), String> {
    let port = free_loopback_port()?;
    let log = std::fs::File::create(args.dir.join("serve.log")).map_err(io("serve.log"))?;
    let err = log.try_clone().map_err(io("serve.log"))?;
    let child = Command::new(&args.portcullis)
        .arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {} serve: {e}", args.portcullis.display()))?;
    let mut server = Server { child };
    let base = crate::guard::parse_target(&format!("http://127.0.0.1:{port}"))?;
    let options = ClientOptions {
        ca: None,
        credentials: None,
        h2: false,
        timeout: Duration::from_secs(900),
    };
    let target = Target::new(base, options, args.workers.max(1))?;
    let api = target.api(0);
    for _ in 0..300 {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("portcullis serve exited during startup: {status}"));
        }
        if api.ping().await.is_ok() {
            return Ok((server, target));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("portcullis serve did not answer GET /v2/ within 30 s".to_string())
}

/// Tagged images (`v*`) of the first repositories, for the pulls.
async fn live_images(api: &Api) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for r in 0..PULL_REPOS {
        let repo = format!("gc/r{r:03}");
        let response = api
            .call(Method::GET, &format!("/v2/{repo}/tags/list?n=1000"), None)
            .await?;
        let list: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        for tag in list["tags"].as_array().into_iter().flatten() {
            if let Some(tag) = tag.as_str().filter(|t| t.starts_with('v')) {
                out.push((repo.clone(), tag.to_string()));
            }
        }
    }
    if out.is_empty() {
        return Err("no tagged image to pull in the store".to_string());
    }
    Ok(out)
}

/// When the collection ran, from the workers' common start.
#[derive(Default)]
struct Window {
    start_us: AtomicU64,
    end_us: AtomicU64,
}

impl Window {
    fn overlaps(&self, from: Duration, to: Duration) -> bool {
        let start = self.start_us.load(Ordering::Relaxed);
        // Not ended yet: still running.
        let end = match self.end_us.load(Ordering::Relaxed) {
            0 => u64::MAX,
            end => end,
        };
        start > 0 && (from.as_micros() as u64) <= end && (to.as_micros() as u64) >= start
    }
}

#[derive(Default)]
struct WorkerTally {
    samples: Samples,
    pulls_during: u64,
    pushes_during: u64,
    errors_during: u64,
    /// (repo, tag, manifest digest) of every image pushed.
    pushed: Vec<(String, String, String)>,
}

async fn worker(
    w: usize,
    api: Api,
    images: Arc<Vec<(String, String)>>,
    stop: Arc<AtomicBool>,
    window: Arc<Window>,
    epoch: Instant,
) -> WorkerTally {
    let mut tally = WorkerTally::default();
    let repo = format!("gc/push-{w}");
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let from = epoch.elapsed();
        let push = n % 4 == 3;
        let result = if push {
            let seed = crate::scenarios::fresh_seed(0x6c, n ^ ((w as u64) << 48));
            let image = synth_image(seed, 3, 16 << 10);
            let tag = format!("p{n}");
            let sent = api
                .push_image(&repo, &tag, &image, UploadMode::Monolithic)
                .await;
            if sent.is_ok() {
                tally
                    .pushed
                    .push((repo.clone(), tag, image.manifest.digest.clone()));
            }
            sent
        } else {
            let (r, tag) = &images[(n as usize * 31 + w * 7) % images.len()];
            api.pull_image(r, tag, None).await
        };
        let to = epoch.elapsed();
        if window.overlaps(from, to) {
            match (&result, push) {
                (Err(_), _) => tally.errors_during += 1,
                (Ok(_), true) => tally.pushes_during += 1,
                (Ok(_), false) => tally.pulls_during += 1,
            }
        }
        tally.samples.record(to - from, result);
        n += 1;
    }
    tally
}

async fn online(args: &GcBenchArgs, data: &Path) -> Result<(OnlineRun, Samples), String> {
    let (server, target) = start_server(args, data).await?;
    let pid = server.child.id();
    let images = Arc::new(live_images(&target.api(0)).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(Window::default());
    let epoch = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = args.workers.max(1);
    for w in 0..workers {
        tasks.spawn(worker(
            w,
            target.api(w),
            images.clone(),
            stop.clone(),
            window.clone(),
            epoch,
        ));
    }
    tokio::time::sleep(WARM_UP).await;
    let rss_before_mib = procmon::tree_rss_mib(&[pid]);
    let monitor = Monitor::start(&[pid])?;
    window
        .start_us
        .store(epoch.elapsed().as_micros().max(1) as u64, Ordering::Relaxed);
    let sent = Instant::now();
    let answer = target
        .api(workers)
        .call(
            Method::POST,
            "/admin/gc?grace=0s&delete_untagged=true",
            None,
        )
        .await;
    let request_seconds = sent.elapsed().as_secs_f64();
    window
        .end_us
        .store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    let usage = monitor.finish();
    tokio::time::sleep(COOL_DOWN).await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = WorkerTally::default();
    while let Some(joined) = tasks.join_next().await {
        let t = joined.map_err(|e| format!("a worker panicked: {e}"))?;
        tally.samples.merge(t.samples);
        tally.pulls_during += t.pulls_during;
        tally.pushes_during += t.pushes_during;
        tally.errors_during += t.errors_during;
        tally.pushed.extend(t.pushed);
    }
    let response = answer?;
    if !response.status().is_success() {
        return Err(format!(
            "POST /admin/gc: HTTP {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    let report: portcullis::gc::Report = response
        .json()
        .await
        .map_err(|e| format!("POST /admin/gc: not a report: {e}"))?;
    // Nothing pushed may have been collected.
    let api = target.api(0);
    let mut missing = 0;
    for (repo, tag, digest) in &tally.pushed {
        if let Err(e) = api.pull_image(repo, tag, Some(digest)).await {
            missing += 1;
            tally
                .samples
                .error(format!("pushed {repo}:{tag}, pulled back after gc: {e}"));
        }
    }
    drop(server);
    let run = OnlineRun {
        request_seconds,
        collected: Collected::from_report(&report),
        rss_before_mib,
        peak_rss_mib: usage.peak_rss_mib.max(rss_before_mib),
        server_cpu_s: usage.cpu_seconds,
        workers,
        pulls_during: tally.pulls_during,
        pushes_during: tally.pushes_during,
        errors_during: tally.errors_during,
        ops: tally.samples.ops,
        errors: tally.samples.errors,
        pushed_checked: tally.pushed.len() as u64,
        pushed_missing: missing,
    };
    Ok((run, tally.samples))
}

/// `cp -a`, then `sync`: the copy's dirty pages must not be written back during a
/// measurement.
fn copy_store(from: &Path, to: &Path) -> Result<f64, String> {
    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cp -a {} {}: {status}",
            from.display(),
            to.display()
        ));
    }
    let _ = Command::new("sync").status();
    Ok(started.elapsed().as_secs_f64())
}

/// All of it; the report says what failed.
fn measure(args: &GcBenchArgs, report: &Mutex<Report>) -> Result<GcFigures, String> {
    let mut figures = GcFigures::default();
    let store = args.dir.join("store");
    let copy = args.dir.join("online");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    match &args.store {
        Some(given) => {
            let json = std::fs::read(given.join("gc-store.json"))
                .map_err(|e| format!("{}: not a gc-store store: {e}", given.display()))?;
            figures.store = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
            copy_store(given, &store)?;
        }
        None => {
            let written = match &args.scratch {
                Some(dir) => dir.join(format!("gc-store-{}", std::process::id())),
                None => store.clone(),
            };
            eprintln!("gc-bench: writing the store into {}", written.display());
            let generated = runtime.block_on(generate(&written, &args.shape));
            if written != store {
                let copied = generated.is_ok().then(|| copy_store(&written, &store));
                let _ = std::fs::remove_dir_all(&written);
                copied.transpose()?;
            }
            figures.store = generated?;
        }
    }
    eprintln!("gc-bench: {}", figures.store.summary());
    figures.copy_seconds = copy_store(&store, &copy)?;
    let expected = figures.store.expected.clone();
    let mut problems = Vec::new();
    for dry_run in [true, false] {
        let run = offline(args, &store, dry_run)?;
        eprintln!(
            "gc-bench: offline{}: {:.2} s wall, peak RSS {:.1} MiB: {}",
            if dry_run { " dry run" } else { "" },
            run.seconds,
            run.peak_rss_mib,
            run.summary
        );
        problems.extend(run.collected.check(
            if dry_run {
                "offline dry run"
            } else {
                "offline"
            },
            &expected,
        ));
        figures.offline.push(run);
    }
    let (run, mut samples) = runtime.block_on(online(args, &copy))?;
    problems.extend(run.collected.check("online", &expected));
    if run.collected.bytes_freed != expected.bytes {
        problems.push(format!(
            "online: {} bytes freed, the generator expects {}",
            run.collected.bytes_freed, expected.bytes
        ));
    }
    eprintln!(
        "gc-bench: online: collection {:.2} s (POST answered in {:.2} s), server RSS {:.1} MiB before, \
         {:.1} MiB peak; {} pulls and {} pushes overlapped it, {} failed",
        run.collected.gc_seconds,
        run.request_seconds,
        run.rss_before_mib,
        run.peak_rss_mib,
        run.pulls_during,
        run.pushes_during,
        run.errors_during
    );
    for p in &problems {
        samples.error(p.clone());
    }
    let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
    let (p50, p99, max) = samples.latency_ms();
    r.ran = true;
    r.value = run.collected.gc_seconds;
    r.unit = "s".to_string();
    r.ops = samples.ops;
    r.errors = samples.errors;
    r.seconds = run.request_seconds;
    r.p50_ms = p50;
    r.p99_ms = p99;
    r.max_ms = max;
    r.concurrency = run.workers;
    r.server_peak_rss_mib = Some(run.peak_rss_mib);
    r.server_cpu_s = Some(run.server_cpu_s);
    r.error_samples = std::mem::take(&mut samples.error_messages);
    figures.online = Some(run);
    Ok(figures)
}

/// `portcullis-loadtest gc-bench`: returns whether it failed.
pub fn run(args: &GcBenchArgs) -> Result<bool, String> {
    std::fs::create_dir_all(&args.dir).map_err(io("creating --dir"))?;
    // reqwest is built without a default crypto provider: use ring, as the server does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let report = Mutex::new(Report {
        scenario: "gc".to_string(),
        target: args.label.clone(),
        url: "http://127.0.0.1".to_string(),
        protocol: "http/1.1".to_string(),
        ..Report::default()
    });
    let started = Instant::now();
    let outcome = measure(args, &report);
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.client_cpu_s = procmon::own_cpu_seconds();
    match outcome {
        Ok(figures) => {
            report.notes = notes(&figures);
            report.gc = Some(figures);
        }
        Err(e) => report = report.failed(e),
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(args.dir.join("store"));
        let _ = std::fs::remove_dir_all(args.dir.join("online"));
    }
    eprintln!("gc-bench: done in {:.1} s", started.elapsed().as_secs_f64());
    if args.json {
        eprintln!("{}", report.human());
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", report.human());
    }
    Ok(report.is_failure())
}

fn notes(f: &GcFigures) -> Vec<String> {
    let mut out = vec![format!(
        "store: {}; copied for the online run in {:.1} s",
        f.store.summary(),
        f.copy_seconds
    )];
    for run in &f.offline {
        out.push(format!(
            "offline `portcullis gc{}`: {:.2} s wall, peak RSS {:.1} MiB ({})",
            if run.dry_run { " --dry-run" } else { "" },
            run.seconds,
            run.peak_rss_mib,
            run.summary
        ));
    }
    if let Some(o) = &f.online {
        out.push(format!(
            "online POST /admin/gc with {} client workers: collection {:.2} s, RSS {:.1} -> {:.1} MiB, \
             {} files / {} bytes freed, {} pulls and {} pushes overlapped it ({} failed); \
             {} pushed images pulled back afterwards, {} missing",
            o.workers,
            o.collected.gc_seconds,
            o.rss_before_mib,
            o.peak_rss_mib,
            o.collected.files,
            o.collected.bytes_freed,
            o.pulls_during,
            o.pushes_during,
            o.errors_during,
            o.pushed_checked,
            o.pushed_missing
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_parse() {
        let line = "gc: freed 1.2 MiB in 3050 blobs; 120 manifests, 0 tags (retention), 900 links, \
                    0 expired uploads (0 B); cache 0 B after evicting 0 blobs (0 B); 2 kept as in use; 6.78 s";
        let c = parse_summary(line).unwrap();
        assert_eq!(
            (c.files, c.manifests, c.links_removed, c.kept_in_use),
            (3050, 120, 900, 2)
        );
        assert!((c.gc_seconds - 6.78).abs() < 1e-9);
        assert!(parse_summary("gc: nonsense").is_err());
    }

    #[test]
    fn the_window_counts_overlapping_operations() {
        let w = Window::default();
        let ms = Duration::from_millis;
        assert!(!w.overlaps(ms(0), ms(10)));
        w.start_us.store(5_000, Ordering::Relaxed);
        assert!(w.overlaps(ms(9), ms(20)));
        w.end_us.store(8_000, Ordering::Relaxed);
        assert!(w.overlaps(ms(0), ms(6)));
        assert!(w.overlaps(ms(7), ms(20)));
        assert!(!w.overlaps(ms(0), ms(4)));
        assert!(!w.overlaps(ms(9), ms(20)));
    }
}
