//! Results: one [`Report`] per scenario and target, printed as a human-readable line
//! and (with `--json`) as one JSON line; `portcullis-loadtest report` turns a file of
//! those lines into the markdown of `loadtest/RESULTS.md`.

use crate::procmon::Usage;
use crate::scenario::{Ctx, Figure, Measurement};
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
         the next table.\n"
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
    let _ = writeln!(
        md,
        "| cold mirror pull, 8 clients, upstream GETs | - | - | - | - | - | exactly one per blob | pending (`mirror` scenario) |"
    );
    let _ = writeln!(
        md,
        "| cold pull vs pulling straight from upstream | - | - | - | - | - | <= 1.1x direct | pending (`mirror` scenario) |"
    );
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

    #[test]
    fn json_round_trip() {
        let r = report("blob", "x", 1.0, "req/s");
        let line = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&line).unwrap();
        assert_eq!(back.scenario, "blob");
        assert!(!back.is_failure());
    }
}
