//! `portcullis fetch IMAGE...`: fills the cache before a machine goes offline, through
//! the same code path as a client's pull (the same [`Mirror`] calls a handler makes).

use super::policy::Accept;
use super::{Blob, Mirror, Target};
use crate::oci::manifest::{self, Descriptor};
use crate::oci::{Digest, Reference, RepoName, Tag};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An image as users write it: `[registry/]name[:tag][@digest]`, tag `latest` if none.
pub fn parse_image(image: &str) -> Result<(RepoName, Reference), String> {
    let fail = |why: String| format!("{image:?}: {why}; write e.g. docker.io/library/alpine:3.20");
    let (name, reference) = match image.rsplit_once('@') {
        Some((name, digest)) => (
            name,
            Reference::Digest(digest.parse::<Digest>().map_err(|e| fail(e.to_string()))?),
        ),
        None => match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
            Some((name, tag)) => (
                name,
                Reference::Tag(Tag::parse(tag).map_err(|e| fail(e.to_string()))?),
            ),
            None => (
                image,
                Reference::Tag(Tag::parse("latest").expect("valid tag")),
            ),
        },
    };
    let name = RepoName::parse(name).map_err(|e| fail(e.to_string()))?;
    Ok((name, reference))
}

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => Err(format!(
                "--platform {s:?}: write os/architecture[/variant], e.g. linux/amd64 or linux/arm64/v8"
            )),
        }
    }

    /// This machine's platform, the default (as docker pull does).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Whether an index entry's `platform` object is this one (a variant is only
    /// compared when asked for).
    pub fn matches(&self, platform: Option<&serde_json::Value>) -> bool {
        let Some(p) = platform else { return false };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str());
        field("os") == Some(&self.os)
            && field("architecture") == Some(&self.architecture)
            && self
                .variant
                .as_deref()
                .is_none_or(|v| field("variant") == Some(v))
    }
}

/// Which children of an index to fetch.
pub enum Platforms {
    All,
    Only(Vec<Platform>),
}

impl Platforms {
    fn wants(&self, child: &Descriptor) -> bool {
        match self {
            Platforms::All => true,
            Platforms::Only(list) => list.iter().any(|p| p.matches(child.platform.as_ref())),
        }
    }
}

#[derive(Default)]
pub struct Summary {
    pub manifests: usize,
    pub blobs: usize,
    pub already_cached: usize,
    pub bytes_fetched: u64,
}

fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// Pulls one image (an index with the chosen platforms, or one manifest) and every
/// blob it references into the cache, printing progress to `out`.
pub async fn fetch_image(
    mirror: &Arc<Mirror>,
    image: &str,
    platforms: &Platforms,
    out: &mut (dyn Write + Send),
) -> Result<Summary, String> {
    let (name, reference) = parse_image(image)?;
    let target = mirror.target(&name, None);
    if matches!(target, Target::Local(_)) {
        return Err(format!(
            "{image}: no upstream serves {name}; name the registry (docker.io/..., ghcr.io/...) \
             or add one with --mirror or [[upstream]]"
        ));
    }
    let accept = Accept::parse(Vec::<&str>::new());
    let mut summary = Summary::default();
    let mut pending = vec![reference];
    while let Some(reference) = pending.pop() {
        let content = mirror
            .manifest(&target, &reference, &accept)
            .await
            .map_err(|e| format!("{image}: {e}"))?;
        summary.manifests += 1;
        let bytes = mirror
            .registry()
            .manifest_bytes(&content)
            .await
            .map_err(|e| e.to_string())?;
        let parsed = manifest::parse(Some(&content.media_type), &bytes)
            .map_err(|e| format!("{image}: manifest {}: {e}", content.digest))?;
        let wanted: Vec<&Descriptor> = parsed
            .children
            .iter()
            .filter(|c| platforms.wants(c))
            .collect();
        if !parsed.children.is_empty() && wanted.is_empty() {
            return Err(format!(
                "{image}: no platform in its index matches; pick one with --platform or use --all-platforms"
            ));
        }
        pending.extend(wanted.iter().map(|c| Reference::Digest(c.digest.clone())));
        for blob in parsed.blobs.iter().filter(|b| b.urls.is_empty()) {
            fetch_blob(mirror, &target, &blob.digest, &mut summary, out).await?;
        }
    }
    Ok(summary)
}

async fn fetch_blob(
    mirror: &Arc<Mirror>,
    target: &Target,
    digest: &Digest,
    summary: &mut Summary,
    out: &mut (dyn Write + Send),
) -> Result<(), String> {
    summary.blobs += 1;
    let short = &digest.to_string()[..19];
    let blob = mirror
        .blob(target, digest, false)
        .await
        .map_err(|e| format!("blob {digest}: {e}"))?;
    let Blob::Arriving { fetch, size } = blob else {
        summary.already_cached += 1;
        let _ = writeln!(out, "  {short}  {:>10}  cached", mib(blob.size()));
        return Ok(());
    };
    let started = Instant::now();
    let done = fetch.finished();
    tokio::pin!(done);
    loop {
        tokio::select! {
            result = &mut done => {
                result.map_err(|e| format!("blob {digest}: {e}"))?;
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let landed = fetch.progress().landed;
                let _ = writeln!(out, "  {short}  {:>10} of {}", mib(landed), mib(size));
            }
        }
    }
    summary.bytes_fetched += size;
    let _ = writeln!(
        out,
        "  {short}  {:>10}  fetched in {:.1} s",
        mib(size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let (name, reference) = parse_image("docker.io/library/alpine:3.20").unwrap();
        assert_eq!(name.as_str(), "docker.io/library/alpine");
        assert_eq!(reference.to_string(), "3.20");
        let (name, reference) = parse_image("alpine").unwrap();
        assert_eq!(
            (name.as_str(), reference.to_string().as_str()),
            ("alpine", "latest")
        );
        let digest = Digest::sha256_of(b"x");
        let (name, reference) = parse_image(&format!("ghcr.io/acme/app@{digest}")).unwrap();
        assert_eq!(name.as_str(), "ghcr.io/acme/app");
        assert_eq!(reference, Reference::Digest(digest));
        // A registry port is not a tag (and not a repository name either).
        assert!(parse_image("mirror.lan:5000/team/app").is_err());
        assert!(parse_image("Alpine:3")
            .unwrap_err()
            .contains("docker.io/library/alpine"));
        assert!(parse_image("alpine@sha256:zz").is_err());
    }

    #[test]
    fn platforms() {
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let arm_v8 = Platform::parse("linux/arm64/v8").unwrap();
        let entry = |v: serde_json::Value| Some(v);
        assert!(amd64
            .matches(entry(serde_json::json!({"os": "linux", "architecture": "amd64"})).as_ref()));
        assert!(!amd64
            .matches(entry(serde_json::json!({"os": "linux", "architecture": "arm64"})).as_ref()));
        assert!(arm_v8.matches(
            entry(serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}))
                .as_ref()
        ));
        assert!(!arm_v8
            .matches(entry(serde_json::json!({"os": "linux", "architecture": "arm64"})).as_ref()));
        assert!(!amd64.matches(None));
        assert!(Platform::parse("amd64").is_err());
        assert!(Platform::parse("linux/").is_err());
        assert_eq!(Platform::host().os, std::env::consts::OS);
    }
}
