//! `portcullis-loadtest`: the load generator behind `loadtest/compare.sh`.
//!
//! It drives any OCI registry on this machine (loopback addresses only) through named
//! scenarios (`portcullis-loadtest list`), seeding the data each one needs, and reports
//! throughput, p50/p99 latency, errors and, given `--server-pid`, the server's peak
//! RSS and CPU time. `report` aggregates the JSON lines of several runs into markdown.
//!
//! Layout: `scenario` (registry of scenarios, driver, loops with count and time limits),
//! `scenarios/` (one file per scenario), `client` (HTTP and OCI calls), `image`
//! (synthetic content), `stats`, `procmon` (/proc sampling), `report`, `guard`
//! (the loopback check), `fakehub/` (`fake-hub`: a simulated Docker Hub to test against),
//! `hubclient` (the load generator's side of a fake hub, for the `mirror` scenario),
//! `gcstore` (`gc-store`: a large store written through the library) and `gcbench`
//! (`gc-bench`: garbage collection of such a store, offline and under load).

mod client;
mod fakehub;
mod gcbench;
mod gcstore;
mod guard;
mod hubclient;
mod image;
mod procmon;
mod report;
mod scenario;
mod scenarios;
mod stats;

use clap::{Args, Parser, Subcommand};
use client::{ClientOptions, Credentials, Target, UploadMode};
use scenario::{Ctx, Settings};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "portcullis-loadtest",
    version,
    about = "Load generator for OCI registries on this machine (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios against one registry.
    Run(Box<RunArgs>),
    /// List the scenarios.
    List,
    /// Aggregate JSON result lines (from `run --json`) into a markdown report.
    Report(Box<ReportArgs>),
    /// Serve a simulated Docker Hub (registry, token realm, CDN) from OCI layouts, with
    /// a control API for the request log and injected faults.
    FakeHub(Box<fakehub::FakeHubArgs>),
    /// Write a Portcullis data directory of --blobs / --manifests / --repos straight
    /// through the library, with garbage in it (deleted tags and manifests, loose blobs).
    GcStore(Box<gcstore::GcStoreArgs>),
    /// Garbage collection at scale: a generated store collected offline (`portcullis gc`,
    /// dry and real) and online (`POST /admin/gc` under pulls and pushes).
    GcBench(Box<gcbench::GcBenchArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Registry root, e.g. http://127.0.0.1:5000 (only localhost, 127.0.0.0/8 or ::1).
    #[arg(long)]
    url: String,
    /// Scenarios to run, comma-separated, in order (see `list`).
    #[arg(long, short, value_delimiter = ',', default_value = "small")]
    scenario: Vec<String>,
    /// Name of the target in reports (default: host:port).
    #[arg(long)]
    label: Option<String>,
    /// Tag for this run's reports, to tell variants of a scenario apart (e.g. 1GiB, chunked).
    #[arg(long)]
    variant: Option<String>,
    /// PEM CA bundle to trust for an https URL (replaces the system roots).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Basic-auth user sent with every request.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Basic-auth password.
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// A token (from the registry's token endpoint) sent as `Authorization: Bearer` with
    /// every request, instead of Basic credentials.
    #[arg(long, conflicts_with = "user")]
    bearer: Option<String>,
    /// Use h2 (prior knowledge on http, ALPN h2 on https) instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// Connections (default per scenario: small 64, blob 16, soak 4, others 1).
    #[arg(long)]
    connections: Option<usize>,
    /// Concurrent requests per connection (h2 streams) for small and blob.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Seconds each measured loop runs (default 10; 2 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Most operations one measured loop makes.
    #[arg(long, default_value_t = 10_000_000)]
    max_ops: u64,
    /// Hard limit in seconds for a scenario's setup, and again for its run.
    #[arg(long, default_value_t = 900.0)]
    max_time: f64,
    /// Limit in seconds for one request, body included.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Repetitions for large, push, pull and the client scenarios (default 3, 2 or 1 by scenario and mode).
    #[arg(long)]
    iterations: Option<u64>,
    /// Blob size for `blob` (default 1MiB).
    #[arg(long)]
    blob_size: Option<String>,
    /// Blob size for `large`, and the layer 8 clients pull at once in `mirror` (default 512MiB; 16MiB with --quick).
    #[arg(long)]
    large_size: Option<String>,
    /// Total layer bytes of push/pull/skopeo images (default 100MiB; 4MiB with --quick).
    #[arg(long)]
    image_size: Option<String>,
    /// Layers per synthetic image.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Upload blobs in PATCH chunks instead of one PUT.
    #[arg(long)]
    chunked: bool,
    /// Chunk size for --chunked.
    #[arg(long, default_value = "8MiB")]
    chunk_size: String,
    /// Do not hash blob bodies in `blob` (lengths are still checked).
    #[arg(long)]
    no_verify: bool,
    /// Repository namespace for everything this run pushes.
    #[arg(long, default_value = "loadtest")]
    repo_prefix: String,
    /// Seed of the synthetic content.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// skopeo binary for the `skopeo-*` scenarios.
    #[arg(long, default_value = "skopeo")]
    skopeo: String,
    /// podman binary for the `podman-*` scenarios.
    #[arg(long, default_value = "podman")]
    podman: String,
    /// Scenario parameter KEY=VALUE (repeatable), e.g. soak-max-blob=1MiB.
    #[arg(long = "opt", value_parser = parse_key_value)]
    opts: Vec<(String, String)>,
    /// Server process to measure (RSS, CPU), with its children; repeat for a stack.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Print one JSON line per scenario on stdout (human lines go to stderr).
    #[arg(long)]
    json: bool,
    /// Seconds-long runs and small sizes (explicit flags still win).
    #[arg(long)]
    quick: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// File of JSON lines from `run --json`.
    #[arg(long)]
    input: PathBuf,
    /// Markdown file to write.
    #[arg(long)]
    output: PathBuf,
    /// Label of distribution served directly (plain HTTP).
    #[arg(long, default_value = "distribution")]
    plain: String,
    /// Label of nginx (TLS + auth) in front of distribution: the §7 reference.
    #[arg(long, default_value = "nginx-tls-auth")]
    reference: String,
    /// Label of portcullis over plain HTTP.
    #[arg(long, default_value = "portcullis")]
    portcullis: String,
    /// Label of portcullis with TLS + basic auth.
    #[arg(long, default_value = "portcullis-tls-auth")]
    portcullis_secure: String,
    /// Label of the nginx stack over TLS without auth.
    #[arg(long, default_value = "nginx-tls")]
    reference_anonymous: String,
    /// Label of portcullis over TLS without auth.
    #[arg(long, default_value = "portcullis-tls")]
    portcullis_tls: String,
    /// Label of nginx serving a small static file over TLS (the `ceiling` scenario).
    #[arg(long, default_value = "nginx-static")]
    ceiling: String,
    /// Label of Portcullis with --mirror (the `mirror` scenario).
    #[arg(long, default_value = "portcullis-mirror")]
    mirror: String,
    /// Label of distribution in proxy mode (the `mirror` scenario's comparison).
    #[arg(long, default_value = "distribution-mirror")]
    mirror_reference: String,
    /// KEY=VALUE lines for the header (machine, versions, date), in order.
    #[arg(long = "meta", value_parser = parse_key_value)]
    meta: Vec<(String, String)>,
    /// Mark the report as a quick-mode smoke test.
    #[arg(long)]
    quick: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::List => {
            for e in scenario::SCENARIOS {
                println!("{:<8} {}", e.name, e.about);
            }
            0
        }
        Command::Report(args) => match write_report(&args) {
            Ok(failures) => i32::from(failures > 0),
            Err(e) => {
                eprintln!("portcullis-loadtest: {e}");
                2
            }
        },
        Command::FakeHub(args) => match fakehub::run(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("portcullis-loadtest fake-hub: {e}");
                2
            }
        },
        Command::GcStore(args) => match gcstore::run(&args) {
            Ok(figures) => {
                println!("{}", figures.summary());
                0
            }
            Err(e) => {
                eprintln!("portcullis-loadtest gc-store: {e}");
                2
            }
        },
        Command::GcBench(args) => match gcbench::run(&args) {
            Ok(failed) => i32::from(failed),
            Err(e) => {
                eprintln!("portcullis-loadtest gc-bench: {e}");
                2
            }
        },
        Command::Run(args) => match run(*args) {
            Ok(failures) => i32::from(failures > 0),
            Err(e) => {
                eprintln!("portcullis-loadtest: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}

fn size_arg(value: &Option<String>, default: u64) -> Result<u64, String> {
    value.as_deref().map_or(Ok(default), image::parse_size)
}

fn settings(args: &RunArgs) -> Result<Settings, String> {
    let quick = args.quick;
    let chunk = image::parse_size(&args.chunk_size)?;
    let seconds = |s: f64, what: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(format!("{what} must be a positive number of seconds"))
        }
    };
    Ok(Settings {
        quick,
        duration: seconds(
            args.duration.unwrap_or(if quick { 2.0 } else { 10.0 }),
            "--duration",
        )?,
        max_ops: args.max_ops.max(1),
        max_time: seconds(args.max_time, "--max-time")?,
        connections: args.connections,
        streams: args.streams.max(1),
        iterations: args.iterations,
        blob_size: size_arg(&args.blob_size, 1 << 20)?,
        large_size: size_arg(&args.large_size, if quick { 16 << 20 } else { 512 << 20 })?,
        image_size: size_arg(&args.image_size, if quick { 4 << 20 } else { 100 << 20 })?,
        layers: args.layers.max(1),
        upload: if args.chunked {
            UploadMode::Chunked(usize::try_from(chunk).map_err(|e| e.to_string())?.max(1))
        } else {
            UploadMode::Monolithic
        },
        verify: !args.no_verify,
        repo_prefix: args.repo_prefix.trim_matches('/').to_string(),
        seed: args.seed,
        skopeo: args.skopeo.clone(),
        podman: args.podman.clone(),
        extra: args.opts.iter().cloned().collect::<BTreeMap<_, _>>(),
    })
}

/// Runs the scenarios in order; returns how many failed (could not run, or had errors).
fn run(args: RunArgs) -> Result<usize, String> {
    let base = guard::parse_target(&args.url)?;
    let settings = settings(&args)?;
    let entries = args
        .scenario
        .iter()
        .map(|name| scenario::find(name.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            base.host_str().unwrap_or("?"),
            base.port_or_known_default().unwrap_or(0)
        )
    });
    let options = ClientOptions {
        ca: args.ca.clone(),
        credentials: match (&args.bearer, &args.user, &args.password) {
            (Some(token), _, _) => Some(Credentials::Bearer(token.clone())),
            (None, Some(user), Some(password)) => Some(Credentials::Basic {
                user: user.clone(),
                password: password.clone(),
            }),
            _ => None,
        },
        h2: args.h2,
        timeout: Duration::from_secs_f64(args.timeout.max(1.0)),
    };
    // reqwest is built without a default crypto provider: use ring, as the server does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let mut failures = 0;
    for entry in entries {
        let connections = settings.connections_or(entry.connections);
        let target = Target::new(base.clone(), options.clone(), connections)?;
        let ctx = Ctx {
            target,
            settings: settings.clone(),
            server_pids: args.server_pid.clone(),
        };
        let mut report = runtime.block_on(scenario::drive(entry, &ctx, &label, &args.server_pid));
        report.variant = args.variant.clone();
        if report.is_failure() {
            failures += 1;
        }
        if args.json {
            eprintln!("{}", report.human());
            let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())?;
        } else {
            println!("{}", report.human());
        }
    }
    Ok(failures)
}

/// Writes the markdown report; returns how many runs in it failed.
fn write_report(args: &ReportArgs) -> Result<usize, String> {
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let reports = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<report::Report>(l)
                .map_err(|e| format!("{}:{}: not a result line: {e}", args.input.display(), i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let roles = report::Roles {
        plain: args.plain.clone(),
        reference: args.reference.clone(),
        portcullis: args.portcullis.clone(),
        portcullis_secure: args.portcullis_secure.clone(),
        reference_anonymous: args.reference_anonymous.clone(),
        portcullis_tls: args.portcullis_tls.clone(),
        ceiling: args.ceiling.clone(),
        mirror: args.mirror.clone(),
        mirror_reference: args.mirror_reference.clone(),
    };
    let md = report::markdown(&reports, &roles, &args.meta, args.quick);
    std::fs::write(&args.output, md)
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    let failures = reports.iter().filter(|r| r.is_failure()).count();
    eprintln!(
        "portcullis-loadtest: wrote {} ({} results, {} failed)",
        args.output.display(),
        reports.len(),
        failures
    );
    Ok(failures)
}
