//! A CNCF distribution (registry:2) filesystem storage tree, read for migration:
//!
//! ```text
//! <root>/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data
//! <root>/docker/registry/v2/repositories/<name...>/_layers/sha256/<hex>/link
//!                                          /_manifests/revisions/sha256/<hex>/link
//!                                          /_manifests/tags/<tag>/current/link
//! ```
//!
//! Each `link` file holds a digest. A repository holds the blobs its `_layers` link,
//! the manifests its revisions link, and its tags' `current` links. What cannot be
//! carried (schema1 manifests, revisions or layers whose data is gone, tags whose
//! manifest is not a revision, unreadable links) is reported and skipped.

use super::{read_manifest, BlobSource, OnMissing, Plan, PlannedManifest, PlannedTag};
use crate::oci::manifest::{self, ManifestError};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::Origin;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A `link` file of a repository, by its path under `repositories/`.
#[derive(Debug, PartialEq, Eq)]
pub enum Link {
    Layer { repo: String, hex: String },
    Revision { repo: String, hex: String },
    Tag { repo: String, tag: String },
}

/// Classifies the path of a `link` file relative to `repositories/`
/// (`team/app/_manifests/tags/1.0/current/link`); `None` for the links distribution
/// keeps for itself (tag history, uploads).
pub fn classify(rel: &str) -> Option<Link> {
    let parts: Vec<&str> = rel.split('/').collect();
    let at = parts.iter().position(|p| p.starts_with('_'))?;
    let repo = parts[..at].join("/");
    if repo.is_empty() {
        return None;
    }
    match &parts[at..] {
        ["_layers", "sha256", hex, "link"] => Some(Link::Layer {
            repo,
            hex: hex.to_string(),
        }),
        ["_manifests", "revisions", "sha256", hex, "link"] => Some(Link::Revision {
            repo,
            hex: hex.to_string(),
        }),
        ["_manifests", "tags", tag, "current", "link"] => Some(Link::Tag {
            repo,
            tag: tag.to_string(),
        }),
        _ => None,
    }
}

/// The digest in a `link` file.
pub fn parse_link(contents: &str) -> Option<Digest> {
    contents.trim().parse().ok()
}

/// `blobs/sha256/<2 hex>/<hex>/data` under the `v2` directory.
pub fn data_path(v2: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    v2.join("blobs")
        .join(digest.algorithm().name())
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The `v2` directory for `dir`, and what `dir` was: the storage root
/// (`rootdirectory`, holding `docker/`) or the `v2` directory itself.
pub fn locate(dir: &Path) -> Result<(PathBuf, &'static str), String> {
    let nested = dir.join("docker/registry/v2");
    let is_v2 = |d: &Path| d.join("repositories").is_dir() || d.join("blobs").is_dir();
    if is_v2(&nested) {
        Ok((nested, "the storage root"))
    } else if is_v2(dir) {
        Ok((dir.to_path_buf(), "the v2 directory"))
    } else {
        Err(format!(
            "--from-distribution {}: neither docker/registry/v2 nor repositories/ and blobs/ \
             are there; give registry:2's storage.filesystem.rootdirectory",
            dir.display()
        ))
    }
}

struct TreeSource {
    v2: PathBuf,
}

impl BlobSource for TreeSource {
    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send>>, String> {
        let path = data_path(&self.v2, digest);
        match File::open(&path) {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn locate(&self, digest: &Digest) -> String {
        data_path(&self.v2, digest).display().to_string()
    }
}

/// Every `link` file under `repositories/` (not under `_uploads`), relative to it.
fn link_files(repositories: &Path) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    let mut dirs = vec![repositories.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if kind.is_dir() && entry.file_name() != "_uploads" {
                dirs.push(path);
            } else if kind.is_file() && entry.file_name() == "link" {
                if let Ok(rel) = path.strip_prefix(repositories) {
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What one repository of the tree holds.
#[derive(Default)]
struct Repository {
    layers: BTreeSet<Digest>,
    revisions: BTreeSet<Digest>,
    tags: BTreeMap<String, Digest>,
}

/// Reads the tree at `dir` into a plan; also says what `dir` was found to be.
pub fn read(dir: &Path) -> Result<(Plan, Box<dyn BlobSource>, String), String> {
    let (v2, found) = locate(dir)?;
    let found = format!("{} ({found})", dir.display());
    let source = TreeSource { v2: v2.clone() };
    let mut plan = Plan {
        links: Vec::new(),
        manifests: Vec::new(),
        tags: Vec::new(),
        skipped: 0,
        on_missing: OnMissing::Skip,
    };
    let mut skipped = 0;
    let mut skip = |what: String| {
        eprintln!("skipped: {what}");
        skipped += 1;
    };
    let repositories = v2.join("repositories");
    let mut repos: BTreeMap<String, Repository> = BTreeMap::new();
    if repositories.is_dir() {
        for rel in link_files(&repositories)? {
            let Some(link) = classify(&rel) else {
                continue;
            };
            let path = repositories.join(&rel);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let Some(digest) = parse_link(&text) else {
                skip(format!("{}: not a digest", path.display()));
                continue;
            };
            match link {
                Link::Layer { repo, hex } | Link::Revision { repo, hex } if hex != digest.hex() => {
                    skip(format!(
                        "{}: names {digest}, not the digest of its directory ({repo})",
                        path.display()
                    ));
                }
                Link::Layer { repo, .. } => {
                    repos.entry(repo).or_default().layers.insert(digest);
                }
                Link::Revision { repo, .. } => {
                    repos.entry(repo).or_default().revisions.insert(digest);
                }
                Link::Tag { repo, tag } => {
                    repos.entry(repo).or_default().tags.insert(tag, digest);
                }
            }
        }
    }

    for (name, repository) in repos {
        let repo = match RepoName::parse(&name) {
            Ok(repo) => repo,
            Err(e) => {
                skip(format!("repository {name}: {e}"));
                continue;
            }
        };
        let mut carried = BTreeSet::new();
        for digest in &repository.revisions {
            let Some(bytes) = read_manifest(&source, digest)? else {
                skip(format!(
                    "manifest {digest} of {repo}: its blob is missing ({})",
                    source.locate(digest)
                ));
                continue;
            };
            match manifest::parse(None, &bytes) {
                Ok(parsed) => {
                    carried.insert(digest.clone());
                    plan.manifests.push(PlannedManifest {
                        repo: repo.clone(),
                        digest: digest.clone(),
                        bytes,
                        parsed,
                        origin: Origin::Pushed,
                    });
                }
                Err(ManifestError::Schema1) => {
                    skip(format!("manifest {digest} of {repo}: Docker schema1"))
                }
                Err(e) => skip(format!("manifest {digest} of {repo}: {e}")),
            }
        }
        // Manifests are blobs too; their links need not come over as layers.
        for digest in repository.layers.difference(&repository.revisions) {
            plan.links.push((repo.clone(), digest.clone()));
        }
        for (tag, digest) in repository.tags {
            let tag = match Tag::parse(&tag) {
                Ok(tag) => tag,
                Err(e) => {
                    skip(format!("tag {repo}:{tag}: {e}"));
                    continue;
                }
            };
            if carried.contains(&digest) {
                plan.tags.push(PlannedTag {
                    repo: repo.clone(),
                    tag,
                    digest,
                });
            } else if !repository.revisions.contains(&digest) {
                skip(format!(
                    "tag {repo}:{tag}: points at {digest}, which is no revision of the repository"
                ));
            }
            // A revision that was skipped has been reported already; so is its tag.
        }
    }
    plan.skipped = skipped;
    Ok((plan, Box::new(source), found))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn link_paths_name_repository_and_kind() {
        assert_eq!(
            classify(&format!("team/app/_layers/sha256/{HEX}/link")),
            Some(Link::Layer {
                repo: "team/app".into(),
                hex: HEX.into()
            })
        );
        assert_eq!(
            classify(&format!("a/b/c/_manifests/revisions/sha256/{HEX}/link")),
            Some(Link::Revision {
                repo: "a/b/c".into(),
                hex: HEX.into()
            })
        );
        assert_eq!(
            classify("app/_manifests/tags/v1.2/current/link"),
            Some(Link::Tag {
                repo: "app".into(),
                tag: "v1.2".into()
            })
        );
        // Tag history, uploads and stray files are not carried.
        assert_eq!(
            classify(&format!("app/_manifests/tags/v1/index/sha256/{HEX}/link")),
            None
        );
        assert_eq!(classify("app/_uploads/x/link"), None);
        assert_eq!(classify(&format!("_layers/sha256/{HEX}/link")), None);
        assert_eq!(classify("app/link"), None);
    }

    #[test]
    fn link_contents_are_digests() {
        assert_eq!(
            parse_link(&format!("sha256:{HEX}\n")).map(|d| d.to_string()),
            Some(format!("sha256:{HEX}"))
        );
        assert_eq!(parse_link(""), None);
        assert_eq!(parse_link("sha256:xyz"), None);
    }

    #[test]
    fn blob_data_sits_under_two_hex_digits() {
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(
            data_path(Path::new("/r/v2"), &digest),
            PathBuf::from(format!("/r/v2/blobs/sha256/01/{HEX}/data"))
        );
    }
}
