//! Results: one [`Report`] per scenario and target, printed as a human-readable line
//! and (with `--json`) as one JSON line; `portcullis-loadtest report` turns a file of
//! those lines into the markdown of `loadtest/RESULTS.md`.

use crate::gcbench::GcFigures;
use crate::hubclient::UpstreamCount;
use crate::procmon::Usage;
use crate::scenario::{Ctx, Figure, Measurement};
use crate::scenarios::mirror::{ratio as ratio_of, MirrorFigures};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Report {
    pub scenario: String,
    /// Which variant of the scenario (`--variant`), when several ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The target's label (`--label`).
    pub target: String,
    pub url: String,
    pub protocol: String,
    /// False when the scenario could not run; `error` says why.
    pub ran: bool,
    pub error: Option<String>,
    /// The headline figure and its unit: `req/s`, `MiB/s` or `s` (median seconds per op).
    pub value: f64,
    pub unit: String,
    pub ops: u64,
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub req_per_s: f64,
    pub mib_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub concurrency: usize,
    pub server_peak_rss_mib: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    pub error_samples: Vec<String>,
    pub notes: Vec<String>,
    /// What the `mirror` scenario measured, phase by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorFigures>,
    /// What `gc-bench` measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcFigures>,
}

impl Report {
    pub fn new(scenario: &str, label: &str, ctx: &Ctx) -> Report {
        Report {
            scenario: scenario.to_string(),
            target: label.to_string(),
            url: ctx.target.base.to_string(),
            protocol: ctx.target.protocol().to_string(),
            ..Report::default()
        }
    }

    pub fn failed(mut self, error: String) -> Report {
        self.ran = false;
        self.error = Some(error);
        self
    }

    pub fn fill(&mut self, mut m: Measurement, usage: Option<Usage>, client_cpu: f64) {
        let secs = m.elapsed.as_secs_f64().max(1e-9);
        let (p50, p99, max) = m.samples.latency_ms();
        self.ran = true;
        self.ops = m.samples.ops;
        self.errors = m.samples.errors;
        self.bytes = m.samples.bytes;
        self.seconds = m.elapsed.as_secs_f64();
        self.req_per_s = m.samples.ops as f64 / secs;
        self.mib_per_s = m.samples.bytes as f64 / MIB / secs;
        self.p50_ms = p50;
        self.p99_ms = p99;
        self.max_ms = max;
        self.concurrency = m.concurrency;
        self.unit = m.figure.unit().to_string();
        self.value = match m.figure {
            Figure::RequestsPerSecond => self.req_per_s,
            Figure::MibPerSecond => self.mib_per_s,
            Figure::SecondsPerOp => p50 / 1000.0,
        };
        self.server_peak_rss_mib = usage.map(|u| u.peak_rss_mib);
        self.server_cpu_s = usage.map(|u| u.cpu_seconds);
        self.client_cpu_s = client_cpu;
        self.error_samples = std::mem::take(&mut m.samples.error_messages);
        self.notes = m.notes;
        if self.ops == 0 && self.errors == 0 {
            self.error = Some("no operation completed".to_string());
            self.ran = false;
        }
    }

    /// The scenario name with its variant, e.g. `push (1GiB)`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{} ({v})", self.scenario),
            None => self.scenario.clone(),
        }
    }

    /// Whether this report should fail a harness run.
    pub fn is_failure(&self) -> bool {
        !self.ran || self.errors > 0
    }

    pub fn human(&self) -> String {
        let mut line = format!(
            "{:<16} {:<19} {:<8}",
            self.name(),
            self.target,
            self.protocol
        );
        if let Some(e) = &self.error {
            let _ = write!(line, " FAILED: {e}");
            return line;
        }
        let _ = write!(
            line,
            " {:>10} {:<5} | {:>9.1} req/s {:>8.1} MiB/s | p50 {:>8.2} ms  p99 {:>8.2} ms | ops {} errors {} | x{}",
            format_value(self.value),
            self.unit,
            self.req_per_s,
            self.mib_per_s,
            self.p50_ms,
            self.p99_ms,
            self.ops,
            self.errors,
            self.concurrency,
        );
        if let (Some(rss), Some(cpu)) = (self.server_peak_rss_mib, self.server_cpu_s) {
            let _ = write!(line, " | server RSS {rss:.1} MiB CPU {cpu:.2} s");
        }
        let _ = write!(line, " | client CPU {:.2} s", self.client_cpu_s);
        for n in &self.notes {
            let _ = write!(line, "\n    note: {n}");
        }
        for e in &self.error_samples {
            let _ = write!(line, "\n    error: {e}");
        }
        line
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Which labels play which part in the comparison.
pub struct Roles {
    /// distribution directly, plain HTTP, no auth.
    pub plain: String,
    /// nginx (TLS + bcrypt basic auth + proxy_cache) in front of distribution.
    pub reference: String,
    /// The same nginx over TLS without auth (small requests only).
    pub reference_anonymous: String,
    /// portcullis, plain HTTP.
    pub portcullis: String,
    /// portcullis with TLS + basic auth.
    pub portcullis_secure: String,
    /// portcullis with TLS, no auth (small requests only).
    pub portcullis_tls: String,
    /// nginx serving a small static file over TLS: the `ceiling` scenario's target.
    pub ceiling: String,
    /// Portcullis with `--mirror`, upstream a fake hub: the `mirror` scenario's target.
    pub mirror: String,
    /// distribution in proxy mode with the same upstream: what the mirror is compared with.
    pub mirror_reference: String,
}

/// The best run of `scenario` (HTTP/1.1, no variant) against `target`: a scenario that
/// ran in several rounds counts with its best figure (noise only ever slows a run down).
/// A failed run wins over successful ones, so failures are never hidden.
fn find<'a>(reports: &'a [Report], scenario: &str, target: &str) -> Option<&'a Report> {
    find_variant(reports, scenario, None, target)
}

/// [`find`] for one variant of a scenario (`None`: the plain scenario).
fn find_variant<'a>(
    reports: &'a [Report],
    scenario: &str,
    variant: Option<&str>,
    target: &str,
) -> Option<&'a Report> {
    let mut runs = reports.iter().filter(|r| {
        r.scenario == scenario
            && r.target == target
            && r.protocol == "http/1.1"
            && r.variant.as_deref() == variant
    });
    let first = runs.next()?;
    Some(runs.fold(first, |best, r| {
        let better = if !best.ran || !r.ran {
            !r.ran
        } else if r.unit == "s" {
            r.value < best.value
        } else {
            r.value > best.value
        };
        if better {
            r
        } else {
            best
        }
    }))
}

fn cell(r: Option<&Report>) -> String {
    match r {
        None => "not run".to_string(),
        Some(r) if !r.ran => "failed".to_string(),
        Some(r) => format!("{} {}", format_value(r.value), r.unit),
    }
}

/// `a / b` of two headline figures, if both ran.
fn ratio(a: Option<&Report>, b: Option<&Report>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a.ran && b.ran && b.value > 0.0 => Some(a.value / b.value),
        _ => None,
    }
}

enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

fn verdict(ratio: Option<f64>, goal: &Goal, provisional: bool) -> String {
    let Some(r) = ratio else {
        return "n/a".to_string();
    };
    let met = match goal {
        Goal::AtLeast(t) => r >= *t,
        Goal::AtMost(t) => r <= *t,
    };
    let word = if met { "yes" } else { "**no**" };
    if provisional {
        format!("{word} (plain)")
    } else {
        word.to_string()
    }
}

/// The markdown report. `meta` is shown first, in order (machine, versions, date...).
pub fn markdown(
    reports: &[Report],
    roles: &Roles,
    meta: &[(String, String)],
    quick: bool,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Portcullis vs nginx + distribution: load test results\n"
    );
    let _ = writeln!(
        md,
        "Written by `loadtest/compare.sh{}`; every target ran the same scenarios, \
         alternating targets scenario by scenario, on this one machine (load generator \
         included, so client and server share the cores).\n",
        if quick { " --quick" } else { "" }
    );
    if quick {
        let _ = writeln!(
            md,
            "**Quick mode**: seconds-long runs and small sizes. A smoke test of the harness, \
             not the DESIGN.md §7 measurement.\n"
        );
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    for (k, v) in meta {
        let _ = writeln!(md, "| {k} | {} |", v.replace('|', "\\|"));
    }
    let _ = writeln!(
        md,
        "\nTargets: `{}` = distribution directly (plain HTTP, no auth); `{}` = nginx with TLS, \
         bcrypt basic auth and proxy_cache in front of that same distribution (the stack \
         Portcullis replaces); `{}` = Portcullis, plain HTTP; `{}` = Portcullis with TLS and \
         bcrypt basic auth (the same certificate and htpasswd file as nginx). `{}` and `{}` \
         are the two stacks over TLS without auth, run for the small-request figure only.\n",
        roles.plain,
        roles.reference,
        roles.portcullis,
        roles.portcullis_secure,
        roles.reference_anonymous,
        roles.portcullis_tls
    );

    targets_table(&mut md, reports, roles);
    clients_table(&mut md, reports, roles);
    mirror_section(&mut md, reports, roles);
    gc_section(&mut md, reports, roles);
    scenarios_table(&mut md, reports);

    let mut details = String::new();
    for r in reports {
        if let Some(e) = &r.error {
            let _ = writeln!(details, "- {} / {}: could not run: {e}", r.name(), r.target);
        }
        for e in &r.error_samples {
            let _ = writeln!(details, "- {} / {}: error: {e}", r.name(), r.target);
        }
    }
    if !details.is_empty() {
        let _ = writeln!(md, "\n## Failures\n\n{details}");
    }
    let mut notes: Vec<String> = Vec::new();
    for r in reports {
        for n in &r.notes {
            let line = format!("- {}: {n}", r.name());
            if !notes.contains(&line) {
                notes.push(line);
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Scenario notes\n\n{}", notes.join("\n"));
    }
    md
}

fn targets_table(md: &mut String, reports: &[Report], roles: &Roles) {
    let _ = writeln!(md, "## DESIGN.md §7 targets\n");
    let _ = writeln!(
        md,
        "Ratio = Portcullis / nginx + distribution (the §7 reference). Where Portcullis \
         TLS+auth did not run, its plain-HTTP figure stands in and the verdict says `(plain)`. \
         Where a scenario ran in several rounds (full mode: small, blob, large and push, \
         twice, in opposite target order), each target's best run counts; every run is in \
         the next table. The mirror rows put distribution in proxy mode in the distribution \
         column and Portcullis `--mirror` in the portcullis column, both with the same fake \
         Docker Hub as upstream (details in the pull-through cache section).\n"
    );
    let _ = writeln!(
        md,
        "| figure | distribution (plain) | nginx + distribution (TLS + auth) | portcullis (plain) | portcullis (TLS + auth) | ratio | target | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let rows: [(&str, &str, Goal, &str); 3] = [
        (
            "authenticated TLS HEAD/GET manifest, req/s (keep-alive)",
            "small",
            Goal::AtLeast(50.0),
            ">= 50x",
        ),
        ("1 MiB blob GET, req/s", "blob", Goal::AtLeast(3.0), ">= 3x"),
        (
            "push of a 3-layer image, s",
            "push",
            Goal::AtMost(0.3),
            "<= 0.3x",
        ),
    ];
    for (figure, scenario, goal, target) in rows {
        let plain = find(reports, scenario, &roles.plain);
        let reference = find(reports, scenario, &roles.reference);
        let ours = find(reports, scenario, &roles.portcullis);
        let secure = find(reports, scenario, &roles.portcullis_secure);
        let (measured, provisional) = match secure {
            Some(s) if s.ran => (Some(s), false),
            _ => (ours, true),
        };
        let r = ratio(measured, reference);
        let _ = writeln!(
            md,
            "| {figure} | {} | {} | {} | {} | {} | {target} | {} |",
            cell(plain),
            cell(reference),
            cell(ours),
            if secure.is_some() {
                cell(secure)
            } else {
                "pending".to_string()
            },
            r.map_or("n/a".to_string(), |r| format!("{r:.2}x")),
            verdict(r, &goal, provisional),
        );
    }
    // The large download is client-bound on this machine: compare server CPU per GiB,
    // the lowest over the rounds (noise only ever adds CPU time).
    let large = |label: &str| {
        reports
            .iter()
            .filter(|r| r.scenario == "large" && r.target == label && r.variant.is_none())
            .filter(|r| r.ran && r.bytes > 0)
            .filter_map(|r| {
                r.server_cpu_s
                    .map(|cpu| cpu / (r.bytes as f64 / (1u64 << 30) as f64))
            })
            .reduce(f64::min)
    };
    let (large_ours, large_provisional) = match large(&roles.portcullis_secure) {
        Some(v) => (Some(v), false),
        None => (large(&roles.portcullis), true),
    };
    let large_ratio = large_ours.zip(large(&roles.reference)).map(|(a, b)| a / b);
    let per_gib = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2} CPU s/GiB"));
    let _ = writeln!(
        md,
        "| single large blob download over TLS, server CPU per GiB | {} | {} | {} | {} | {} | <= 0.6x | {} |",
        per_gib(large(&roles.plain)),
        per_gib(large(&roles.reference)),
        per_gib(large(&roles.portcullis)),
        per_gib(large(&roles.portcullis_secure)),
        large_ratio.map_or("n/a".to_string(), |r| format!("{r:.2}x")),
        verdict(large_ratio, &Goal::AtMost(0.6), large_provisional),
    );
    // What this machine can answer at all: nginx serving a small static file over TLS.
    let ceiling = find(reports, "ceiling", &roles.ceiling);
    let of_ceiling = ratio(find(reports, "small", &roles.portcullis_secure), ceiling);
    let _ = writeln!(
        md,
        "| authenticated manifest rate vs nginx serving a small static file over TLS (`{}`: {}) | - | - | - | {} | {} | >= 0.5x | {} |",
        roles.ceiling,
        cell(ceiling),
        cell(find(reports, "small", &roles.portcullis_secure)),
        of_ceiling.map_or("n/a".to_string(), |r| format!("{r:.2}x")),
        verdict(of_ceiling, &Goal::AtLeast(0.5), false),
    );
    // Authenticated vs anonymous: the cost of auth on the small-request rate, both over TLS.
    let reference_cost = ratio(
        find(reports, "small", &roles.reference),
        find(reports, "small", &roles.reference_anonymous),
    );
    let ours_cost = ratio(
        find(reports, "small", &roles.portcullis_secure),
        find(reports, "small", &roles.portcullis_tls),
    );
    let of_anonymous =
        |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2} of anonymous"));
    let _ = writeln!(
        md,
        "| authenticated vs anonymous small-request rate (both over TLS) | - | {} | - | {} | - | >= 0.95 | {} |",
        of_anonymous(reference_cost),
        of_anonymous(ours_cost),
        verdict(ours_cost, &Goal::AtLeast(0.95), false),
    );
    mirror_target_rows(md, reports, roles);
    gc_target_row(md, reports, roles);
    // Memory: the largest peak over all scenarios, per target.
    let peak = |label: &str| {
        reports
            .iter()
            .filter(|r| r.target == label && r.ran)
            .filter_map(|r| r.server_peak_rss_mib)
            .reduce(f64::max)
    };
    let mib = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1} MiB"));
    let ours_peak = [
        &roles.portcullis,
        &roles.portcullis_secure,
        &roles.portcullis_tls,
    ]
    .into_iter()
    .filter_map(|label| peak(label))
    .reduce(f64::max);
    let _ = writeln!(
        md,
        "| resident memory under load (peak over all scenarios) | {} | {} | {} | {} | - | < 64 MiB | {} |\n",
        mib(peak(&roles.plain)),
        mib(peak(&roles.reference)),
        mib(peak(&roles.portcullis)),
        if peak(&roles.portcullis_secure).is_some() { mib(peak(&roles.portcullis_secure)) } else { "pending".to_string() },
        match ours_peak {
            Some(v) if v < 64.0 => "yes".to_string(),
            Some(_) => "**no**".to_string(),
            None => "n/a".to_string(),
        },
    );
}

/// The `mirror` figures of `target`'s run (`None` if it did not run or failed outright).
fn mirror_figures<'a>(reports: &'a [Report], target: &str) -> Option<&'a MirrorFigures> {
    find(reports, "mirror", target).and_then(|r| r.mirror.as_ref())
}

/// Sizes as the report shows them: `64.0 MiB`, `1.0 GiB`.
fn size_text(bytes: u64) -> String {
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

fn upstream_rate_text(bytes_per_sec: u64) -> String {
    match bytes_per_sec {
        0 => "unthrottled".to_string(),
        rate => format!("at {}/s per blob", size_text(rate)),
    }
}

fn seconds_vs(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b, ratio_of(a, b)) {
        (Some(a), Some(b), Some(r)) => format!("{a:.2} s vs {b:.2} s ({r:.2}x)"),
        _ => "n/a".to_string(),
    }
}

fn upstream_text(u: &UpstreamCount) -> String {
    format!(
        "blob GET {} (max {} per blob), CDN GET {}, blob HEAD {}, manifest {}, token {}; all {}",
        u.blob_gets,
        u.most_gets_of_one_blob,
        u.cdn_gets,
        u.blob_heads,
        u.manifest_requests,
        u.token_requests,
        u.all
    )
}

/// The DESIGN.md §7 rows of the pull-through cache: distribution's proxy in the
/// distribution column, Portcullis `--mirror` in the portcullis column.
fn mirror_target_rows(md: &mut String, reports: &[Report], roles: &Roles) {
    let theirs = mirror_figures(reports, &roles.mirror_reference);
    let ours = mirror_figures(reports, &roles.mirror);
    let either = ours.or(theirs);
    let clients = either.map_or(8, |f| f.clients);
    let blobs = either.map_or(6, |f| f.blobs);
    let row = |md: &mut String,
               figure: &str,
               cell: &dyn Fn(&MirrorFigures) -> String,
               ratio: Option<f64>,
               target: &str,
               met: String| {
        let cell = |f: Option<&MirrorFigures>| f.map_or("not run".to_string(), cell);
        let _ = writeln!(
            md,
            "| {figure} | {} | - | {} | - | {} | {target} | {met} |",
            cell(theirs),
            cell(ours),
            ratio.map_or("-".to_string(), |r| format!("{r:.2}x")),
        );
    };
    let yes_no = |met: Option<bool>| match met {
        Some(true) => "yes".to_string(),
        Some(false) => "**no**".to_string(),
        None => "n/a".to_string(),
    };
    row(
        md,
        &format!("cold mirror pull, {clients} clients at once, same image: upstream blob GETs for {blobs} blobs (registry / CDN, worst round)"),
        &|f| f.worst_all_upstream().map_or("n/a".to_string(), |u| format!("{} / {}", u.blob_gets, u.cdn_gets)),
        None,
        &format!("exactly {blobs}"),
        yes_no(ours.and_then(MirrorFigures::one_fetch_per_blob)),
    );
    let crowd = ours.and_then(MirrorFigures::all_vs_one);
    row(
        md,
        &format!(
            "cold mirror pull, {clients} clients at once: wall time vs one client's cold pull"
        ),
        &|f| seconds_vs(f.all_s(), f.one_s()),
        crowd,
        "<= 1.2x",
        verdict(crowd, &Goal::AtMost(1.2), false),
    );
    let direct = ours.and_then(MirrorFigures::cold_vs_direct);
    row(
        md,
        &format!(
            "cold pull through the mirror vs the same pull straight from upstream (CDN {})",
            upstream_rate_text(either.map_or(0, |f| f.upstream_bytes_per_sec))
        ),
        &|f| seconds_vs(f.one_s(), f.direct_s()),
        direct,
        "<= 1.1x",
        verdict(direct, &Goal::AtMost(1.1), false),
    );
    let late = either.and_then(|f| f.late_joiner.as_ref());
    row(
        md,
        &format!(
            "a client joining while a large blob is still arriving{}: its time to first byte",
            late.map_or(String::new(), |l| format!(
                " ({} at {}/s)",
                size_text(l.blob_bytes),
                size_text(l.bytes_per_sec)
            ))
        ),
        &|f| {
            f.late_joiner.as_ref().map_or("n/a".to_string(), |l| {
                format!(
                    "{:.1} ms (upstream blob GETs: {})",
                    l.joiner_first_byte_ms, l.upstream.blob_gets
                )
            })
        },
        None,
        "<= 100 ms",
        yes_no(
            ours.and_then(|f| f.late_joiner.as_ref())
                .map(|l| l.joiner_first_byte_ms <= 100.0),
        ),
    );
    let fan = either.and_then(|f| f.fan_out.as_ref());
    let peak = |f: &MirrorFigures| f.fan_out.as_ref().and_then(|o| o.peak_rss_mib);
    row(
        md,
        &format!(
            "resident memory, {} mirror clients of a {} layer at once (cold), peak",
            fan.map_or(clients, |o| o.clients),
            fan.map_or("large".to_string(), |o| size_text(o.layer_bytes))
        ),
        &|f| peak(f).map_or("n/a".to_string(), |v| format!("{v:.1} MiB")),
        None,
        "< 64 MiB",
        yes_no(ours.and_then(peak).map(|v| v < 64.0)),
    );
}

/// Every figure of the `mirror` scenario, one column per target that ran it.
fn mirror_section(md: &mut String, reports: &[Report], roles: &Roles) {
    let mut labels: Vec<&str> = Vec::new();
    for label in [roles.mirror_reference.as_str(), roles.mirror.as_str()]
        .into_iter()
        .chain(
            reports
                .iter()
                .filter(|r| r.scenario == "mirror")
                .map(|r| r.target.as_str()),
        )
    {
        if !labels.contains(&label) && find(reports, "mirror", label).is_some() {
            labels.push(label);
        }
    }
    if labels.is_empty() {
        return;
    }
    let columns: Vec<(&str, Option<&MirrorFigures>)> = labels
        .iter()
        .map(|label| (*label, mirror_figures(reports, label)))
        .collect();
    let _ = writeln!(md, "## Pull-through cache (`mirror`)\n");
    let _ = writeln!(
        md,
        "Each target mirrors the same fake Docker Hub (`portcullis-loadtest fake-hub`: token \
         realm, blobs by 307 to a CDN listener), started on loopback by compare.sh; upstream \
         requests are read from the hub's own request log, reset before each phase. Every \
         pull is of fresh images (cold) unless it says warm; every blob is digest-checked at \
         every client. Times are medians over the cold rounds. `{}` = Portcullis \
         `--mirror docker.io=<hub>`, `{}` = distribution with `proxy: remoteurl: <hub>`.\n",
        roles.mirror, roles.mirror_reference
    );
    let _ = writeln!(
        md,
        "| figure | {} |\n|---|{}",
        labels.join(" | "),
        "---|".repeat(labels.len())
    );
    let line = |md: &mut String, figure: &str, cell: &dyn Fn(&MirrorFigures) -> String| {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, f)| f.map_or("failed".to_string(), cell))
            .collect();
        let _ = writeln!(md, "| {figure} | {} |", cells.join(" | "));
    };
    let na = || "n/a".to_string();
    line(md, "image", &|f| {
        format!(
            "{} blobs, {} in all; {} cold round(s); CDN {}",
            f.blobs,
            size_text(f.image_bytes),
            f.rounds.len(),
            upstream_rate_text(f.upstream_bytes_per_sec)
        )
    });
    line(
        md,
        "cold pull straight from the hub (token dance, 307 to the CDN), one client",
        &|f| f.direct_s().map_or_else(na, |s| format!("{s:.3} s")),
    );
    line(md, "cold pull through the mirror, one client", &|f| {
        f.one_s().map_or_else(na, |s| format!("{s:.3} s"))
    });
    line(md, "  vs straight from the hub", &|f| {
        f.cold_vs_direct().map_or_else(na, |r| format!("{r:.2}x"))
    });
    line(md, "  upstream requests (worst round)", &|f| {
        f.worst_upstream(|r| r.one_upstream)
            .map_or_else(na, |u| upstream_text(&u))
    });
    line(
        md,
        "cold pull, one client, CDN unthrottled: through the mirror vs straight from the hub",
        &|f| seconds_vs(f.unthrottled_one_s(), f.unthrottled_direct_s()),
    );
    line(
        md,
        "cold pull through the mirror, all clients at once, wall time",
        &|f| {
            f.all_s()
                .map_or_else(na, |s| format!("{s:.3} s ({} clients)", f.clients))
        },
    );
    line(md, "  vs one client", &|f| {
        f.all_vs_one().map_or_else(na, |r| format!("{r:.2}x"))
    });
    line(md, "  upstream requests (worst round)", &|f| {
        f.worst_all_upstream()
            .map_or_else(na, |u| upstream_text(&u))
    });
    line(md, "warm pull (all cached), one client", &|f| {
        f.warm.as_ref().map_or_else(na, |w| {
            format!(
                "{:.3} s, {} upstream requests ({} pulls)",
                w.seconds, w.upstream_requests, w.pulls
            )
        })
    });
    line(md, "late joiner: blob, CDN rate", &|f| {
        f.late_joiner.as_ref().map_or_else(na, |l| {
            format!(
                "{} at {}/s",
                size_text(l.blob_bytes),
                size_text(l.bytes_per_sec)
            )
        })
    });
    line(md, "  A: first byte, done", &|f| {
        f.late_joiner.as_ref().map_or_else(na, |l| {
            format!("{:.1} ms, {:.2} s", l.first_byte_ms, l.first_total_s)
        })
    });
    line(md, "  B joined (after A's start), with A holding", &|f| {
        f.late_joiner.as_ref().map_or_else(na, |l| {
            format!(
                "{:.0} ms, {}",
                l.joined_at_ms,
                size_text(l.joined_after_bytes)
            )
        })
    });
    line(md, "  B: first byte, done (after its own start)", &|f| {
        f.late_joiner.as_ref().map_or_else(na, |l| {
            format!(
                "{:.1} ms, {:.2} s",
                l.joiner_first_byte_ms, l.joiner_total_s
            )
        })
    });
    line(md, "  upstream requests", &|f| {
        f.late_joiner
            .as_ref()
            .map_or_else(na, |l| upstream_text(&l.upstream))
    });
    line(
        md,
        "fan-out: clients of one large layer at once (cold), wall time",
        &|f| {
            f.fan_out.as_ref().map_or_else(na, |o| {
                format!(
                    "{} x {}: {:.2} s",
                    o.clients,
                    size_text(o.layer_bytes),
                    o.seconds
                )
            })
        },
    );
    line(md, "  server resident memory: before, peak", &|f| {
        f.fan_out
            .as_ref()
            .map_or_else(na, |o| match (o.rss_before_mib, o.peak_rss_mib) {
                (Some(before), Some(peak)) => format!("{before:.1} MiB, {peak:.1} MiB"),
                _ => "not measured (no --server-pid)".to_string(),
            })
    });
    line(md, "  server CPU", &|f| {
        f.fan_out
            .as_ref()
            .and_then(|o| o.server_cpu_s)
            .map_or_else(na, |c| format!("{c:.2} s"))
    });
    line(md, "  upstream requests", &|f| {
        f.fan_out
            .as_ref()
            .map_or_else(na, |o| upstream_text(&o.upstream))
    });
    let _ = writeln!(md);
}

/// The `gc-bench` figures of Portcullis (plain), if it ran.
fn gc_figures<'a>(reports: &'a [Report], roles: &Roles) -> Option<(&'a Report, &'a GcFigures)> {
    let r = find(reports, "gc", &roles.portcullis)?;
    r.gc.as_ref().map(|f| (r, f))
}

/// The DESIGN.md §7 row: online, < 60 s, < 128 MiB extra RSS, no failed request.
fn gc_target_row(md: &mut String, reports: &[Report], roles: &Roles) {
    let failed = find(reports, "gc", &roles.portcullis).is_some_and(|r| !r.ran);
    let Some((r, f)) = gc_figures(reports, roles) else {
        let cell = if failed { "failed" } else { "not run" };
        let _ = writeln!(
            md,
            "| GC of 100k blobs / 10k manifests, online | offline only (read-only window) | - | {cell} | - | - | online, < 60 s, < 128 MiB extra RSS | n/a |"
        );
        return;
    };
    let Some(o) = &f.online else { return };
    let extra = o.peak_rss_mib - o.rss_before_mib;
    let met = o.collected.gc_seconds < 60.0 && extra < 128.0 && r.errors == 0;
    let _ = writeln!(
        md,
        "| GC of {} blobs / {} manifests, online | offline only (read-only window) | - | {:.2} s, +{:.1} MiB RSS ({:.1} -> {:.1}), {} of {} requests during it failed | - | - | online, < 60 s, < 128 MiB extra RSS | {} |",
        f.store.blobs,
        f.store.manifests,
        o.collected.gc_seconds,
        extra,
        o.rss_before_mib,
        o.peak_rss_mib,
        o.errors_during,
        o.pulls_during + o.pushes_during + o.errors_during,
        if met { "yes" } else { "**no**" },
    );
}

/// Every figure of `gc-bench`.
fn gc_section(md: &mut String, reports: &[Report], roles: &Roles) {
    let Some((r, f)) = gc_figures(reports, roles) else {
        return;
    };
    let s = &f.store;
    let _ = writeln!(md, "## Garbage collection at scale (`gc-bench`)\n");
    let _ = writeln!(
        md,
        "`portcullis-loadtest gc-bench` writes a store through the library (`gc-store`), \
         collects one copy offline with `portcullis gc --grace 0s --delete-untagged` (dry \
         run first; wall time and peak RSS of the child from `wait4`) and another online \
         with `POST /admin/gc?grace=0s&delete_untagged=true` while {} workers pull tagged \
         images (digests checked) and push fresh ones; every pushed image is pulled back \
         afterwards. Each collection is checked against what the generator says must go.\n",
        f.online.as_ref().map_or(0, |o| o.workers)
    );
    let _ = writeln!(md, "| figure | {} |\n|---|---|", r.target);
    let mib = |b: u64| size_text(b);
    let mut row = |k: &str, v: String| {
        let _ = writeln!(md, "| {k} | {v} |");
    };
    row(
        "store",
        format!(
            "{} blobs ({}), {} manifests ({} indexes, {} referrers), {} repositories, {} tags",
            s.blobs,
            mib(s.blob_bytes),
            s.manifests,
            s.indexes,
            s.referrers,
            s.repos,
            s.tags
        ),
    );
    row(
        "garbage made",
        format!(
            "{} tags deleted, {} manifests deleted by digest, {} loose blobs; must go: {} files ({}), {} manifest records",
            s.tags_deleted,
            s.manifests_deleted,
            s.loose_blobs,
            s.expected.files,
            mib(s.expected.bytes),
            s.expected.manifests
        ),
    );
    row(
        "written in",
        format!("{:.1} s (copied in {:.1} s)", s.seconds, f.copy_seconds),
    );
    for run in &f.offline {
        row(
            if run.dry_run {
                "offline `portcullis gc --dry-run`: wall, collector, peak RSS"
            } else {
                "offline `portcullis gc`: wall, collector, peak RSS"
            },
            format!(
                "{:.2} s, {:.2} s, {:.1} MiB; {} files, {} manifests, {} links",
                run.seconds,
                run.collected.gc_seconds,
                run.peak_rss_mib,
                run.collected.files,
                run.collected.manifests,
                run.collected.links_removed
            ),
        );
    }
    if let Some(o) = &f.online {
        row(
            "online `POST /admin/gc`: collector, request",
            format!(
                "{:.2} s, {:.2} s; {} files ({}), {} manifests, {} links; {} kept as in use",
                o.collected.gc_seconds,
                o.request_seconds,
                o.collected.files,
                mib(o.collected.bytes_freed),
                o.collected.manifests,
                o.collected.links_removed,
                o.collected.kept_in_use
            ),
        );
        row(
            "  server resident memory: before, peak (extra)",
            format!(
                "{:.1} MiB, {:.1} MiB (+{:.1} MiB); server CPU {:.2} s",
                o.rss_before_mib,
                o.peak_rss_mib,
                o.peak_rss_mib - o.rss_before_mib,
                o.server_cpu_s
            ),
        );
        row(
            "  client operations overlapping it: pulls, pushes, failed",
            format!(
                "{}, {}, {} (all run: {} ops, {} errors, p99 {:.0} ms)",
                o.pulls_during, o.pushes_during, o.errors_during, r.ops, r.errors, r.p99_ms
            ),
        );
        row(
            "  pushed images pulled back afterwards: checked, missing",
            format!("{}, {}", o.pushed_checked, o.pushed_missing),
        );
    }
    let _ = writeln!(md);
}

/// The real-client scenarios, by image size (their variants), against plain
/// distribution: a fixed cost per command shows in the smallest size.
const CLIENT_SCENARIOS: [&str; 4] = ["skopeo-pull", "skopeo-push", "podman-pull", "podman-push"];

fn clients_table(md: &mut String, reports: &[Report], roles: &Roles) {
    let mut variants: Vec<&str> = Vec::new();
    for r in reports
        .iter()
        .filter(|r| CLIENT_SCENARIOS.contains(&r.scenario.as_str()))
    {
        if let Some(v) = r.variant.as_deref() {
            if !variants.contains(&v) {
                variants.push(v);
            }
        }
    }
    if variants.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Real clients against plain distribution
"
    );
    let _ = writeln!(
        md,
        "Seconds per command (median), start to exit, plain HTTP on both sides; the image \
         size is the variant. Ratio = Portcullis / distribution; DESIGN.md §7 wants <= 0.9x \
         at every size.\n"
    );
    let _ = writeln!(
        md,
        "| client | image | distribution (plain) | portcullis (plain) | ratio | target | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for scenario in CLIENT_SCENARIOS {
        for variant in &variants {
            let theirs = find_variant(reports, scenario, Some(variant), &roles.plain);
            let ours = find_variant(reports, scenario, Some(variant), &roles.portcullis);
            if theirs.is_none() && ours.is_none() {
                continue;
            }
            let r = ratio(ours, theirs);
            let _ = writeln!(
                md,
                "| {scenario} | {variant} | {} | {} | {} | <= 0.9x | {} |",
                cell(theirs),
                cell(ours),
                r.map_or("n/a".to_string(), |r| format!("{r:.2}x")),
                verdict(r, &Goal::AtMost(0.9), false),
            );
        }
    }
    let _ = writeln!(md);
}

fn scenarios_table(md: &mut String, reports: &[Report]) {
    let _ = writeln!(md, "## Every scenario\n");
    let _ = writeln!(
        md,
        "| scenario | target | protocol | figure | req/s | MiB/s | p50 ms | p99 ms | ops | errors | conc. | server peak RSS | server CPU s | client CPU s |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        if !r.ran {
            let _ = writeln!(
                md,
                "| {} | {} | {} | failed | | | | | | {} | | | | |",
                r.name(),
                r.target,
                r.protocol,
                r.errors
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} {} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {:.2} |",
            r.name(),
            r.target,
            r.protocol,
            format_value(r.value),
            r.unit,
            r.req_per_s,
            r.mib_per_s,
            r.p50_ms,
            r.p99_ms,
            r.ops,
            r.errors,
            r.concurrency,
            r.server_peak_rss_mib.map_or("n/a".to_string(), |v| format!("{v:.1} MiB")),
            r.server_cpu_s.map_or("n/a".to_string(), |v| format!("{v:.2}")),
            r.client_cpu_s,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str, target: &str, value: f64, unit: &str) -> Report {
        Report {
            scenario: scenario.into(),
            target: target.into(),
            protocol: "http/1.1".into(),
            ran: true,
            value,
            unit: unit.into(),
            server_peak_rss_mib: Some(20.0),
            ..Report::default()
        }
    }

    fn roles() -> Roles {
        Roles {
            plain: "distribution".into(),
            reference: "nginx".into(),
            portcullis: "portcullis".into(),
            portcullis_secure: "portcullis-tls-auth".into(),
            reference_anonymous: "nginx-tls".into(),
            portcullis_tls: "portcullis-tls".into(),
            ceiling: "nginx-static".into(),
            mirror: "portcullis-mirror".into(),
            mirror_reference: "distribution-mirror".into(),
        }
    }

    #[test]
    fn targets_table_ratios_and_verdicts() {
        let reports = vec![
            report("small", "distribution", 3000.0, "req/s"),
            report("small", "nginx", 600.0, "req/s"),
            report("small", "portcullis", 9000.0, "req/s"),
            report("push", "nginx", 0.6, "s"),
            report("push", "portcullis", 0.2, "s"),
            report("small", "nginx-tls", 3000.0, "req/s"),
            report("push", "portcullis", 0.3, "s"),
            report("small", "portcullis", 8000.0, "req/s"),
        ];
        let roles = roles();
        let md = markdown(&reports, &roles, &[("date".into(), "today".into())], true);
        assert!(md.contains("| 15.00x | >= 50x | **no** (plain) |"), "{md}");
        assert!(md.contains("| 0.33x | <= 0.3x | **no** (plain) |"), "{md}");
        assert!(md.contains("| 0.20 of anonymous | - | n/a |"), "{md}");
        assert!(md.contains("| date | today |"));
        assert!(md.contains("Quick mode"));
    }

    #[test]
    fn client_figures_by_size_and_the_ceiling() {
        let variant = |scenario: &str, v: &str, target: &str, value: f64| Report {
            variant: Some(v.into()),
            ..report(scenario, target, value, "s")
        };
        let reports = vec![
            variant("skopeo-pull", "1MiB", "distribution", 0.04),
            variant("skopeo-pull", "1MiB", "portcullis", 0.03),
            variant("skopeo-pull", "50MiB", "distribution", 0.2),
            variant("skopeo-pull", "50MiB", "portcullis", 0.2),
            report("small", "portcullis-tls-auth", 30000.0, "req/s"),
            report("ceiling", "nginx-static", 40000.0, "req/s"),
        ];
        let roles = roles();
        let md = markdown(&reports, &roles, &[], false);
        assert!(
            md.contains("| skopeo-pull | 1MiB | 0.040 s | 0.030 s | 0.75x | <= 0.9x | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| skopeo-pull | 50MiB | 0.200 s | 0.200 s | 1.00x | <= 0.9x | **no** |"),
            "{md}"
        );
        assert!(md.contains("| 0.75x | >= 0.5x | yes |"), "{md}");
    }

    fn mirror_report(target: &str, all_gets: u64, all_s: f64, joiner_ms: f64, peak: f64) -> Report {
        use crate::scenarios::mirror::{ColdRound, FanOut, LateJoiner};
        let upstream = UpstreamCount {
            blob_gets: all_gets,
            cdn_gets: all_gets,
            most_gets_of_one_blob: all_gets.div_ceil(6),
            ..UpstreamCount::default()
        };
        Report {
            mirror: Some(MirrorFigures {
                clients: 8,
                blobs: 6,
                image_bytes: 100 << 20,
                upstream_bytes_per_sec: 16 << 20,
                rounds: vec![ColdRound {
                    direct_s: 1.0,
                    one_s: 1.05,
                    all_s,
                    all_upstream: upstream,
                    ..ColdRound::default()
                }],
                late_joiner: Some(LateJoiner {
                    blob_bytes: 64 << 20,
                    bytes_per_sec: 16 << 20,
                    joiner_first_byte_ms: joiner_ms,
                    ..LateJoiner::default()
                }),
                fan_out: Some(FanOut {
                    clients: 8,
                    layer_bytes: 1 << 30,
                    peak_rss_mib: Some(peak),
                    rss_before_mib: Some(20.0),
                    ..FanOut::default()
                }),
                ..MirrorFigures::default()
            }),
            ..report("mirror", target, all_s, "s")
        }
    }

    #[test]
    fn mirror_rows_and_section() {
        let reports = vec![
            mirror_report("distribution-mirror", 50, 3.0, 30.0, 90.0),
            mirror_report("portcullis-mirror", 6, 1.155, 4.0, 40.0),
        ];
        let md = markdown(&reports, &roles(), &[], false);
        assert!(
            md.contains("upstream blob GETs for 6 blobs (registry / CDN, worst round) | 50 / 50 | - | 6 / 6 | - | - | exactly 6 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| 3.00 s vs 1.05 s (2.86x) | - | 1.16 s vs 1.05 s (1.10x) | - | 1.10x | <= 1.2x | yes |"),
            "{md}"
        );
        assert!(
            md.contains("straight from upstream (CDN at 16.0 MiB/s per blob) | 1.05 s vs 1.00 s (1.05x) | - | 1.05 s vs 1.00 s (1.05x) | - | 1.05x | <= 1.1x | yes |"),
            "{md}"
        );
        assert!(
            md.contains("(64.0 MiB at 16.0 MiB/s): its time to first byte | 30.0 ms"),
            "{md}"
        );
        assert!(
            md.contains("| 4.0 ms (upstream blob GETs: 0) | - | - | <= 100 ms | yes |"),
            "{md}"
        );
        assert!(
            md.contains("8 mirror clients of a 1.0 GiB layer at once (cold), peak | 90.0 MiB | - | 40.0 MiB | - | - | < 64 MiB | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| figure | distribution-mirror | portcullis-mirror |"),
            "{md}"
        );
        assert!(
            md.contains("| 20.0 MiB, 90.0 MiB | 20.0 MiB, 40.0 MiB |"),
            "{md}"
        );

        // Only the reference ran: its figures show, the verdicts are not Portcullis's.
        let md = markdown(&reports[..1], &roles(), &[], false);
        assert!(
            md.contains("| 50 / 50 | - | not run | - | - | exactly 6 | n/a |"),
            "{md}"
        );
        assert!(!md.contains("| portcullis-mirror |"), "{md}");
        // No mirror run at all: the rows say so and there is no section.
        let md = markdown(&[], &roles(), &[], false);
        assert!(
            md.contains("| not run | - | not run | - | - | exactly 6 | n/a |"),
            "{md}"
        );
        assert!(!md.contains("## Pull-through cache"), "{md}");
    }

    #[test]
    fn gc_row_and_section() {
        use crate::gcbench::{Collected, OnlineRun};
        let figures = GcFigures {
            store: crate::gcstore::StoreFigures {
                blobs: 100_000,
                manifests: 10_000,
                ..Default::default()
            },
            online: Some(OnlineRun {
                collected: Collected {
                    gc_seconds: 12.5,
                    files: 3,
                    ..Collected::default()
                },
                rss_before_mib: 40.0,
                peak_rss_mib: 100.0,
                pulls_during: 9,
                pushes_during: 3,
                workers: 4,
                ..OnlineRun::default()
            }),
            ..GcFigures::default()
        };
        let reports = vec![Report {
            gc: Some(figures),
            ..report("gc", "portcullis", 12.5, "s")
        }];
        let md = markdown(&reports, &roles(), &[], false);
        assert!(
            md.contains("| GC of 100000 blobs / 10000 manifests, online | offline only (read-only window) | - | 12.50 s, +60.0 MiB RSS (40.0 -> 100.0), 0 of 12 requests during it failed | - | - | online, < 60 s, < 128 MiB extra RSS | yes |"),
            "{md}"
        );
        assert!(md.contains("## Garbage collection at scale"), "{md}");
        assert!(md.contains("| 40.0 MiB, 100.0 MiB (+60.0 MiB)"), "{md}");
        let md = markdown(&[], &roles(), &[], false);
        assert!(
            md.contains("| GC of 100k blobs / 10k manifests, online |"),
            "{md}"
        );
        assert!(!md.contains("## Garbage collection at scale"), "{md}");
    }

    #[test]
    fn json_round_trip() {
        let r = report("blob", "x", 1.0, "req/s");
        let line = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&line).unwrap();
        assert_eq!(back.scenario, "blob");
        assert!(!back.is_failure());
    }
}
