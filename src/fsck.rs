//! `portcullis fsck`: checks a stopped store, and with `--repair` fixes what can be
//! fixed without guessing.
//!
//! Two halves. [`check`] is pure: given the metadata snapshot, every stored blob with
//! what its content hashed to, the manifests as parsed and the strays of the blob store
//! ([`Facts`]), it lists the [`Finding`]s: a [`Problem`] each, with the [`Action`]s that
//! repair it, or none when repairing would mean guessing (pushed content cannot be
//! fetched again). [`run`] does the I/O: it hashes (streaming, with progress), reads the
//! manifests, prints, and applies the repairs. It must not run beside a server: redb
//! refuses a second opener, which is how the command finds out.

use crate::oci::digest::Hasher;
use crate::oci::manifest::{self, ManifestError, ParsedManifest};
use crate::oci::{Digest, RepoName, Tag};
use crate::progress::{human_bytes, Progress};
use crate::store::{
    blob_relative_path, BlobStore, FsBlobStore, ManifestRecord, MetaSnapshot, MetaStore, Origin,
    Removal, StoreError, StoredBlob, Stray, StrayKind, LOST_FOUND,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;

/// A stored blob and what its content hashed to (or why it could not be read).
#[derive(Debug, Clone, PartialEq)]
pub struct BlobCheck {
    pub digest: Digest,
    pub size: u64,
    pub content: Result<Digest, String>,
}

/// A manifest's bytes as parsed with the media type of its record.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestCheck {
    pub digest: Digest,
    pub media_type: String,
    pub parsed: Result<ParsedManifest, ManifestError>,
}

/// Everything [`check`] looks at.
pub struct Facts<'a> {
    pub snapshot: &'a MetaSnapshot,
    pub blobs: &'a [BlobCheck],
    /// For the manifest records whose bytes are intact and of the recorded size.
    pub manifests: &'a [ManifestCheck],
    pub strays: &'a [Stray],
}

/// The state of the bytes a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Intact,
    Missing,
    Corrupt,
    /// Could not be read: neither known good nor known bad (reported on its own).
    Unreadable,
}

/// What is wrong with a manifest record's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BytesFault {
    Missing,
    Corrupt,
    Size { recorded: u64, stored: u64 },
}

impl fmt::Display for BytesFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BytesFault::Missing => write!(f, "missing"),
            BytesFault::Corrupt => write!(f, "corrupt"),
            BytesFault::Size { recorded, stored } => {
                write!(f, "{stored} bytes where the record says {recorded}")
            }
        }
    }
}

/// One inconsistency, named by its object. Displays as one line that says what is
/// wrong and what `--repair` does about it, or why it cannot.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    NotABlob {
        path: PathBuf,
    },
    TempFile {
        path: PathBuf,
    },
    MalformedUpload {
        path: PathBuf,
        why: &'static str,
    },
    CorruptBlob {
        digest: Digest,
        size: u64,
        actual: Digest,
    },
    /// An empty file named by the digest of something non-empty.
    EmptyBlob {
        digest: Digest,
    },
    UnreadableBlob {
        digest: Digest,
        error: String,
    },
    /// A link whose blob is missing or corrupt.
    DanglingLink {
        repo: RepoName,
        digest: Digest,
        bytes: BlobState,
    },
    LinkSize {
        repo: RepoName,
        digest: Digest,
        recorded: u64,
        stored: u64,
    },
    TagWithoutManifest {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    ManifestBytes {
        repo: RepoName,
        digest: Digest,
        origin: Origin,
        fault: BytesFault,
    },
    ManifestUnparsable {
        repo: RepoName,
        digest: Digest,
        error: ManifestError,
    },
    /// A pushed manifest references a blob its repository does not hold (`linked` is
    /// false), or holds a link to whose bytes are gone.
    ManifestMissingBlob {
        repo: RepoName,
        manifest: Digest,
        blob: Digest,
        linked: bool,
    },
    ManifestMissingChild {
        repo: RepoName,
        manifest: Digest,
        child: Digest,
    },
    ReferrerWithoutManifest {
        repo: RepoName,
        subject: Digest,
        referrer: Digest,
    },
    ReferrerSubject {
        repo: RepoName,
        subject: Digest,
        referrer: Digest,
        actual: Option<Digest>,
    },
    CachedTagWithoutManifest {
        repo: RepoName,
        tag: Tag,
        media_type: String,
        digest: Digest,
    },
}

/// The advice for pushed content that is broken for good.
struct PushAgain<'a>(&'a RepoName, &'a Digest);

impl fmt::Display for PushAgain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not repaired: pushed content cannot be fetched again, and guessing is no repair; \
             push the image again, or delete the manifest (DELETE /v2/{}/manifests/{})",
            self.0, self.1
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DROPS_LINKS: &str = "--repair moves it to lost+found/ and drops the links to it \
                                   (a push or a pull through the cache stores it again)";
        match self {
            Problem::NotABlob { path } => write!(
                f,
                "{}: under blobs/ but not at the path of a digest, so never served; \
                 --repair moves it to {LOST_FOUND}/",
                path.display()
            ),
            Problem::TempFile { path } => write!(
                f,
                "{}: left by a write that never finished; --repair deletes it \
                 (as starting the server would)",
                path.display()
            ),
            Problem::MalformedUpload { path, why } => write!(
                f,
                "{}: not an upload session ({why}), so no client can resume it; \
                 --repair deletes it",
                path.display()
            ),
            Problem::CorruptBlob {
                digest,
                size,
                actual,
            } => write!(
                f,
                "blob {digest} ({size} bytes): its content hashes to {actual}; {DROPS_LINKS}"
            ),
            Problem::EmptyBlob { digest } => write!(
                f,
                "blob {digest}: the file is empty, which is not the content of that digest \
                 (a crash before the data reached the disk?); {DROPS_LINKS}"
            ),
            Problem::UnreadableBlob { digest, error } => write!(
                f,
                "blob {digest}: cannot be read ({error}); not repaired: fix the file or its \
                 permissions, then run fsck again"
            ),
            Problem::DanglingLink {
                repo,
                digest,
                bytes,
            } => write!(
                f,
                "link {repo} -> {digest}: the blob is {}; --repair drops the link \
                 (pushing the blob again restores it)",
                if *bytes == BlobState::Corrupt {
                    "corrupt"
                } else {
                    "missing"
                }
            ),
            Problem::LinkSize {
                repo,
                digest,
                recorded,
                stored,
            } => write!(
                f,
                "link {repo} -> {digest}: records {recorded} bytes, the intact blob has \
                 {stored}; not repaired: the blob is right but clients trust the link, so \
                 delete it (DELETE /v2/{repo}/blobs/{digest}) and push the blob again"
            ),
            Problem::TagWithoutManifest { repo, tag, digest } => write!(
                f,
                "tag {repo}:{tag}: points at {digest}, which {repo} has no manifest of; \
                 --repair drops the tag"
            ),
            Problem::ManifestBytes {
                repo,
                digest,
                origin: Origin::Cached,
                fault,
            } => write!(
                f,
                "manifest {repo}@{digest} (cached): its bytes are {fault}; --repair drops the \
                 record with the tags and referrers entries naming it (the next pull fetches \
                 it again)"
            ),
            Problem::ManifestBytes {
                repo,
                digest,
                origin: Origin::Pushed,
                fault,
            } => write!(
                f,
                "manifest {repo}@{digest}: its bytes are {fault}; {}",
                PushAgain(repo, digest)
            ),
            Problem::ManifestUnparsable {
                repo,
                digest,
                error,
            } => write!(
                f,
                "manifest {repo}@{digest}: does not parse ({error}); {}",
                PushAgain(repo, digest)
            ),
            Problem::ManifestMissingBlob {
                repo,
                manifest,
                blob,
                linked,
            } => write!(
                f,
                "manifest {repo}@{manifest}: references blob {blob}, {}; {}",
                if *linked {
                    "whose bytes are missing or corrupt"
                } else {
                    "which the repository does not hold"
                },
                PushAgain(repo, manifest)
            ),
            Problem::ManifestMissingChild {
                repo,
                manifest,
                child,
            } => write!(
                f,
                "manifest {repo}@{manifest}: lists manifest {child}, which the repository \
                 does not hold; {}",
                PushAgain(repo, manifest)
            ),
            Problem::ReferrerWithoutManifest {
                repo,
                subject,
                referrer,
            } => write!(
                f,
                "referrers entry {repo}@{subject} <- {referrer}: the repository has no \
                 manifest {referrer}; --repair drops the entry"
            ),
            Problem::ReferrerSubject {
                repo,
                subject,
                referrer,
                actual,
            } => write!(
                f,
                "referrers entry {repo}@{subject} <- {referrer}: that manifest's subject is \
                 {}; --repair drops the entry",
                actual
                    .as_ref()
                    .map_or("none".to_string(), Digest::to_string)
            ),
            Problem::CachedTagWithoutManifest {
                repo,
                tag,
                media_type,
                digest,
            } => write!(
                f,
                "cached tag {repo}:{tag} ({media_type}): points at {digest}, which {repo} has \
                 no manifest of; --repair drops it (the next pull asks the upstream again)"
            ),
        }
    }
}

/// One step of a repair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Remove(Removal),
    /// Move this path (relative to the data directory) into `lost+found/`.
    MoveToLostFound(PathBuf),
    /// Delete this file or directory (relative to the data directory).
    Delete(PathBuf),
}

/// A problem and how `--repair` fixes it: no actions when it cannot.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub problem: Problem,
    pub repair: Vec<Action>,
}

fn finding(problem: Problem, repair: Vec<Action>) -> Finding {
    Finding { problem, repair }
}

/// Lookups over the facts, built once.
struct Index<'a> {
    facts: &'a Facts<'a>,
    blobs: HashMap<&'a Digest, &'a BlobCheck>,
    links: HashSet<(&'a RepoName, &'a Digest)>,
    records: HashMap<(&'a RepoName, &'a Digest), &'a ManifestRecord>,
    parsed: HashMap<(&'a Digest, &'a str), &'a Result<ParsedManifest, ManifestError>>,
    /// Cached manifest records that --repair drops (their bytes are bad).
    dropped: HashSet<(&'a RepoName, &'a Digest)>,
}

impl<'a> Index<'a> {
    fn new(facts: &'a Facts<'a>) -> Index<'a> {
        let snap = facts.snapshot;
        let mut index = Index {
            facts,
            blobs: facts.blobs.iter().map(|b| (&b.digest, b)).collect(),
            links: snap.links.iter().map(|l| (&l.repo, &l.digest)).collect(),
            records: snap
                .manifests
                .iter()
                .map(|m| ((&m.repo, &m.digest), &m.record))
                .collect(),
            parsed: facts
                .manifests
                .iter()
                .map(|m| ((&m.digest, m.media_type.as_str()), &m.parsed))
                .collect(),
            dropped: HashSet::new(),
        };
        index.dropped = snap
            .manifests
            .iter()
            .filter(|m| m.record.origin == Origin::Cached)
            .filter(|m| index.bytes_fault(&m.digest, &m.record).is_some())
            .map(|m| (&m.repo, &m.digest))
            .collect();
        index
    }

    fn bytes(&self, digest: &Digest) -> BlobState {
        match self.blobs.get(digest) {
            None => BlobState::Missing,
            Some(blob) => match &blob.content {
                Ok(actual) if actual == digest => BlobState::Intact,
                Ok(_) => BlobState::Corrupt,
                Err(_) => BlobState::Unreadable,
            },
        }
    }

    fn bytes_fault(&self, digest: &Digest, record: &ManifestRecord) -> Option<BytesFault> {
        match self.bytes(digest) {
            BlobState::Missing => Some(BytesFault::Missing),
            BlobState::Corrupt => Some(BytesFault::Corrupt),
            BlobState::Unreadable => None,
            BlobState::Intact => {
                let stored = self.blobs[digest].size;
                (stored != record.size).then_some(BytesFault::Size {
                    recorded: record.size,
                    stored,
                })
            }
        }
    }

    /// A manifest record that exists and stays after repair.
    fn holds_manifest(&self, repo: &RepoName, digest: &Digest) -> bool {
        self.records.contains_key(&(repo, digest)) && !self.dropped.contains(&(repo, digest))
    }
}

/// Every problem in the store, with its repair.
pub fn check(facts: &Facts) -> Vec<Finding> {
    let index = Index::new(facts);
    let mut found = check_strays(facts.strays);
    found.extend(check_blobs(facts.blobs));
    found.extend(check_links(&index));
    found.extend(check_manifests(&index));
    found.extend(check_tags(&index));
    found.extend(check_referrers(&index));
    found.extend(check_cached_tags(&index));
    found
}

/// The records of manifests whose bytes [`run`] reads and parses: intact, of the size
/// recorded, one per (digest, media type).
pub fn manifests_to_parse(snapshot: &MetaSnapshot, blobs: &[BlobCheck]) -> Vec<(Digest, String)> {
    let facts = Facts {
        snapshot,
        blobs,
        manifests: &[],
        strays: &[],
    };
    let index = Index::new(&facts);
    let wanted: BTreeSet<_> = snapshot
        .manifests
        .iter()
        .filter(|m| {
            index.bytes(&m.digest) == BlobState::Intact
                && index.bytes_fault(&m.digest, &m.record).is_none()
        })
        .map(|m| (m.digest.clone(), m.record.media_type.clone()))
        .collect();
    wanted.into_iter().collect()
}

fn check_strays(strays: &[Stray]) -> Vec<Finding> {
    strays
        .iter()
        .map(|stray| {
            let path = stray.path.clone();
            match stray.kind {
                StrayKind::NotABlob => finding(
                    Problem::NotABlob { path: path.clone() },
                    vec![Action::MoveToLostFound(path)],
                ),
                StrayKind::TempFile => finding(
                    Problem::TempFile { path: path.clone() },
                    vec![Action::Delete(path)],
                ),
                StrayKind::MalformedUpload(why) => finding(
                    Problem::MalformedUpload {
                        path: path.clone(),
                        why,
                    },
                    vec![Action::Delete(path)],
                ),
            }
        })
        .collect()
}

fn check_blobs(blobs: &[BlobCheck]) -> Vec<Finding> {
    blobs
        .iter()
        .filter_map(|blob| {
            let digest = blob.digest.clone();
            let quarantine = vec![Action::MoveToLostFound(blob_relative_path(&digest))];
            match &blob.content {
                Ok(actual) if *actual == digest => None,
                Ok(_) if blob.size == 0 => Some(finding(Problem::EmptyBlob { digest }, quarantine)),
                Ok(actual) => Some(finding(
                    Problem::CorruptBlob {
                        digest,
                        size: blob.size,
                        actual: actual.clone(),
                    },
                    quarantine,
                )),
                Err(error) => Some(finding(
                    Problem::UnreadableBlob {
                        digest,
                        error: error.clone(),
                    },
                    Vec::new(),
                )),
            }
        })
        .collect()
}

fn check_links(index: &Index) -> Vec<Finding> {
    let mut found = Vec::new();
    for link in &index.facts.snapshot.links {
        let (repo, digest) = (link.repo.clone(), link.digest.clone());
        match index.bytes(&link.digest) {
            bytes @ (BlobState::Missing | BlobState::Corrupt) => found.push(finding(
                Problem::DanglingLink {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    bytes,
                },
                vec![Action::Remove(Removal::Link { repo, digest })],
            )),
            BlobState::Intact if index.blobs[&link.digest].size != link.size => {
                found.push(finding(
                    Problem::LinkSize {
                        repo,
                        digest,
                        recorded: link.size,
                        stored: index.blobs[&link.digest].size,
                    },
                    Vec::new(),
                ))
            }
            BlobState::Intact | BlobState::Unreadable => {}
        }
    }
    found
}

fn check_manifests(index: &Index) -> Vec<Finding> {
    let mut found = Vec::new();
    for entry in &index.facts.snapshot.manifests {
        let (repo, digest, record) = (&entry.repo, &entry.digest, &entry.record);
        if let Some(fault) = index.bytes_fault(digest, record) {
            let repair = match record.origin {
                Origin::Cached => drop_cached_manifest(index, repo, digest),
                Origin::Pushed => Vec::new(),
            };
            let problem = Problem::ManifestBytes {
                repo: repo.clone(),
                digest: digest.clone(),
                origin: record.origin,
                fault,
            };
            found.push(finding(problem, repair));
            continue;
        }
        // What a cached manifest references is fetched when a client asks, and an
        // upstream format we cannot parse is still served byte for byte.
        if record.origin == Origin::Cached {
            continue;
        }
        match index.parsed.get(&(digest, record.media_type.as_str())) {
            Some(Ok(parsed)) => found.extend(check_references(index, repo, digest, parsed)),
            Some(Err(error)) => found.push(finding(
                Problem::ManifestUnparsable {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    error: error.clone(),
                },
                Vec::new(),
            )),
            // Unreadable bytes: reported with the blob.
            None => {}
        }
    }
    found
}

/// A pushed manifest's config, layers (foreign ones excepted) and child manifests.
fn check_references(
    index: &Index,
    repo: &RepoName,
    manifest: &Digest,
    parsed: &ParsedManifest,
) -> Vec<Finding> {
    let mut found = Vec::new();
    for blob in parsed.blobs.iter().filter(|b| b.urls.is_empty()) {
        let linked = index.links.contains(&(repo, &blob.digest));
        let stored = matches!(
            index.bytes(&blob.digest),
            BlobState::Intact | BlobState::Unreadable
        );
        if !(linked && stored) {
            let problem = Problem::ManifestMissingBlob {
                repo: repo.clone(),
                manifest: manifest.clone(),
                blob: blob.digest.clone(),
                linked,
            };
            found.push(finding(problem, Vec::new()));
        }
    }
    for child in &parsed.children {
        if !index.holds_manifest(repo, &child.digest) {
            let problem = Problem::ManifestMissingChild {
                repo: repo.clone(),
                manifest: manifest.clone(),
                child: child.digest.clone(),
            };
            found.push(finding(problem, Vec::new()));
        }
    }
    found
}

/// A cached manifest record goes with every record that names it.
fn drop_cached_manifest(index: &Index, repo: &RepoName, digest: &Digest) -> Vec<Action> {
    index
        .facts
        .snapshot
        .manifest_removals(repo, digest)
        .into_iter()
        .map(Action::Remove)
        .collect()
}

fn check_tags(index: &Index) -> Vec<Finding> {
    index
        .facts
        .snapshot
        .tags
        .iter()
        .filter(|t| !index.records.contains_key(&(&t.repo, &t.digest)))
        .map(|t| {
            let (repo, tag) = (t.repo.clone(), t.tag.clone());
            finding(
                Problem::TagWithoutManifest {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: t.digest.clone(),
                },
                vec![Action::Remove(Removal::Tag {
                    repo,
                    tag,
                    digest: t.digest.clone(),
                })],
            )
        })
        .collect()
}

fn check_referrers(index: &Index) -> Vec<Finding> {
    let mut found = Vec::new();
    for entry in &index.facts.snapshot.referrers {
        let (repo, subject, referrer) = (&entry.repo, &entry.subject, &entry.referrer);
        let problem = match index.records.get(&(repo, referrer)) {
            None => Problem::ReferrerWithoutManifest {
                repo: repo.clone(),
                subject: subject.clone(),
                referrer: referrer.clone(),
            },
            Some(record) if record.subject.as_ref() != Some(subject) => Problem::ReferrerSubject {
                repo: repo.clone(),
                subject: subject.clone(),
                referrer: referrer.clone(),
                actual: record.subject.clone(),
            },
            Some(_) => continue,
        };
        let removal = Removal::Referrer {
            repo: repo.clone(),
            subject: subject.clone(),
            referrer: referrer.clone(),
        };
        found.push(finding(problem, vec![Action::Remove(removal)]));
    }
    found
}

fn check_cached_tags(index: &Index) -> Vec<Finding> {
    index
        .facts
        .snapshot
        .cached_tags
        .iter()
        .filter(|c| !index.records.contains_key(&(&c.repo, &c.record.digest)))
        .map(|c| {
            let (repo, tag, media_type) = (c.repo.clone(), c.tag.clone(), &c.record.media_type);
            finding(
                Problem::CachedTagWithoutManifest {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    media_type: media_type.clone(),
                    digest: c.record.digest.clone(),
                },
                vec![Action::Remove(Removal::CachedTag {
                    repo,
                    tag,
                    media_type: media_type.clone(),
                })],
            )
        })
        .collect()
}

/// What a run checked and found.
#[derive(Debug, Default)]
pub struct Summary {
    pub blobs: usize,
    pub bytes: u64,
    pub manifests: usize,
    pub tags: usize,
    pub found: usize,
    pub repaired: usize,
    pub seconds: f64,
    pub open_sessions: usize,
    pub session_bytes: u64,
}

impl Summary {
    /// Nothing is wrong any more.
    pub fn consistent(&self) -> bool {
        self.found == self.repaired
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fsck: {} blobs ({}), {} manifests, {} tags checked in {:.1} s: ",
            self.blobs,
            human_bytes(self.bytes),
            self.manifests,
            self.tags,
            self.seconds
        )?;
        match (self.found, self.repaired) {
            (0, _) => write!(f, "no problems"),
            (found, 0) => write!(f, "{found} problems (run with --repair to fix what can be)"),
            (found, repaired) => write!(
                f,
                "{found} problems, {repaired} repaired, {} remain",
                found - repaired
            ),
        }
    }
}

/// Checks the store (and repairs it with `repair`), printing one line per problem and
/// the summary to `out`, progress to a terminal on stderr.
pub async fn run(
    blobs: &FsBlobStore,
    meta: &dyn MetaStore,
    repair: bool,
    out: &mut dyn Write,
) -> Result<Summary, StoreError> {
    let started = std::time::Instant::now();
    let snapshot = meta.snapshot().await?;
    let strays = blobs.strays().await?;
    let stored = blobs.list_blobs().await?;
    let checked = hash_blobs(blobs, &stored).await?;
    let manifests = parse_manifests(blobs, &snapshot, &checked).await?;
    let findings = check(&Facts {
        snapshot: &snapshot,
        blobs: &checked,
        manifests: &manifests,
        strays: &strays,
    });
    let repaired = if repair {
        apply(blobs, meta, &findings, out).await?
    } else {
        for f in &findings {
            writeln!(out, "{}", f.problem).map_err(output_err)?;
        }
        0
    };
    let malformed: HashSet<_> = strays.iter().map(|s| &s.path).collect();
    let sessions: Vec<_> = blobs
        .list_uploads()
        .await?
        .into_iter()
        .filter(|u| !malformed.contains(&PathBuf::from("uploads").join(u.id.as_str())))
        .collect();
    let summary = Summary {
        blobs: stored.len(),
        bytes: stored.iter().map(|b| b.size).sum(),
        manifests: snapshot.manifests.len(),
        tags: snapshot.tags.len() + snapshot.cached_tags.len(),
        found: findings.len(),
        repaired,
        seconds: started.elapsed().as_secs_f64(),
        open_sessions: sessions.len(),
        session_bytes: sessions.iter().map(|s| s.size).sum(),
    };
    if summary.open_sessions > 0 {
        writeln!(
            out,
            "info: {} upload sessions open ({}): clients may still finish them",
            summary.open_sessions,
            human_bytes(summary.session_bytes)
        )
        .map_err(output_err)?;
    }
    writeln!(out, "{summary}").map_err(output_err)?;
    Ok(summary)
}

fn output_err(e: std::io::Error) -> StoreError {
    StoreError::io("writing the report", e)
}

/// Hashes every blob, streaming (the blob store reads bounded chunks).
async fn hash_blobs(
    blobs: &FsBlobStore,
    stored: &[StoredBlob],
) -> Result<Vec<BlobCheck>, StoreError> {
    let mut progress = Progress::new("fsck: hashing blobs", Some(stored.len() as u64));
    let mut checked = Vec::with_capacity(stored.len());
    for blob in stored {
        let content = hash_blob(blobs, blob, &mut progress)
            .await
            .map_err(|e| e.to_string());
        progress.advance(1, 0);
        checked.push(BlobCheck {
            digest: blob.digest.clone(),
            size: blob.size,
            content,
        });
    }
    progress.finish();
    Ok(checked)
}

async fn hash_blob(
    blobs: &FsBlobStore,
    blob: &StoredBlob,
    progress: &mut Progress,
) -> Result<Digest, StoreError> {
    let mut source = blobs
        .open(&blob.digest, 0, blob.size)
        .await?
        .ok_or_else(|| StoreError::BlobUnknown(blob.digest.clone()))?;
    let mut hasher = Hasher::new(blob.digest.algorithm());
    while let Some(chunk) = source.next_chunk().await? {
        hasher.update(&chunk);
        progress.advance(0, chunk.len() as u64);
    }
    Ok(hasher.finish())
}

async fn parse_manifests(
    blobs: &FsBlobStore,
    snapshot: &MetaSnapshot,
    checked: &[BlobCheck],
) -> Result<Vec<ManifestCheck>, StoreError> {
    let mut parsed = Vec::new();
    for (digest, media_type) in manifests_to_parse(snapshot, checked) {
        // Gone since it was hashed: the next run reports it.
        let Some(bytes) = blobs.read_all(&digest).await? else {
            continue;
        };
        parsed.push(ManifestCheck {
            parsed: manifest::parse(Some(&media_type), &bytes),
            digest,
            media_type,
        });
    }
    Ok(parsed)
}

/// Applies every repair, metadata first in one transaction, and prints each finding as
/// repaired or not; returns how many were repaired.
async fn apply(
    blobs: &FsBlobStore,
    meta: &dyn MetaStore,
    findings: &[Finding],
    out: &mut dyn Write,
) -> Result<usize, StoreError> {
    let removals: BTreeSet<Removal> = findings
        .iter()
        .flat_map(|f| &f.repair)
        .filter_map(|a| match a {
            Action::Remove(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let meta_failure = match meta.remove_records(removals.into_iter().collect()).await {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    let mut repaired = 0;
    for f in findings {
        let outcome = if f.repair.is_empty() {
            Err(None)
        } else {
            apply_files(blobs, &f.repair, meta_failure.as_deref()).await
        };
        match outcome {
            Ok(notes) => {
                repaired += 1;
                writeln!(out, "repaired: {}{notes}", f.problem)
            }
            Err(None) => writeln!(out, "{}", f.problem),
            Err(Some(e)) => writeln!(out, "repair failed ({e}): {}", f.problem),
        }
        .map_err(output_err)?;
    }
    Ok(repaired)
}

/// The file steps of one repair; `meta_failure` if its metadata removals failed.
/// Returns notes for the report (where a file went).
async fn apply_files(
    blobs: &FsBlobStore,
    repair: &[Action],
    meta_failure: Option<&str>,
) -> Result<String, Option<String>> {
    let mut notes = String::new();
    for action in repair {
        match action {
            Action::Remove(_) => {
                if let Some(e) = meta_failure {
                    return Err(Some(e.to_string()));
                }
            }
            Action::MoveToLostFound(path) => {
                let dest = blobs
                    .move_to_lost_found(path)
                    .await
                    .map_err(|e| Some(e.to_string()))?;
                notes.push_str(&format!(" (moved to {})", dest.display()));
            }
            Action::Delete(path) => blobs
                .remove_path(path)
                .await
                .map_err(|e| Some(e.to_string()))?,
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::{OCI_INDEX, OCI_MANIFEST};
    use crate::store::{
        CachedTag, CachedTagEntry, LinkEntry, ManifestEntry, ReferrerEntry, TagEntry,
    };
    use serde_json::json;

    fn repo() -> RepoName {
        RepoName::parse("team/app").unwrap()
    }

    fn tag() -> Tag {
        Tag::parse("1.0").unwrap()
    }

    /// A store in memory: what the facts are made of.
    #[derive(Default)]
    struct Store {
        snap: MetaSnapshot,
        blobs: Vec<BlobCheck>,
        manifests: Vec<ManifestCheck>,
        strays: Vec<Stray>,
    }

    impl Store {
        fn blob(&mut self, bytes: &[u8]) -> Digest {
            let digest = Digest::sha256_of(bytes);
            self.blobs.push(BlobCheck {
                digest: digest.clone(),
                size: bytes.len() as u64,
                content: Ok(digest.clone()),
            });
            digest
        }

        fn link(&mut self, digest: &Digest, origin: Origin) {
            let size = self
                .blobs
                .iter()
                .find(|b| &b.digest == digest)
                .unwrap()
                .size;
            self.snap.links.push(LinkEntry {
                repo: repo(),
                digest: digest.clone(),
                size,
                origin,
                linked_at: 1,
            });
        }

        /// An image manifest over `blobs` (stored and linked by the caller), recorded and
        /// tagged `1.0`.
        fn manifest(&mut self, blobs: &[Digest], origin: Origin) -> Digest {
            let layers: Vec<_> = blobs[1..]
                .iter()
                .map(|d| json!({"mediaType": "l", "digest": d.to_string(), "size": 1}))
                .collect();
            let body = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "c", "digest": blobs[0].to_string(), "size": 1},
                "layers": layers,
            });
            self.record(body, OCI_MANIFEST, origin, None)
        }

        fn record(
            &mut self,
            body: serde_json::Value,
            media_type: &str,
            origin: Origin,
            subject: Option<Digest>,
        ) -> Digest {
            let bytes = serde_json::to_vec(&body).unwrap();
            let digest = self.blob(&bytes);
            self.snap.manifests.push(ManifestEntry {
                repo: repo(),
                digest: digest.clone(),
                record: ManifestRecord {
                    media_type: media_type.into(),
                    size: bytes.len() as u64,
                    subject,
                    origin,
                    created_at: 1,
                },
            });
            self.manifests.push(ManifestCheck {
                digest: digest.clone(),
                media_type: media_type.into(),
                parsed: manifest::parse(Some(media_type), &bytes),
            });
            digest
        }

        fn tag(&mut self, digest: &Digest) {
            self.snap.tags.push(TagEntry {
                repo: repo(),
                tag: tag(),
                digest: digest.clone(),
                tagged_at: 1,
            });
        }

        fn cached_tag(&mut self, digest: &Digest) {
            self.snap.cached_tags.push(CachedTagEntry {
                repo: repo(),
                tag: tag(),
                record: CachedTag {
                    media_type: OCI_MANIFEST.into(),
                    digest: digest.clone(),
                    checked_at: 1,
                },
            });
        }

        /// A pushed image: config and one layer, linked, manifest tagged.
        fn image(&mut self, seed: &str, origin: Origin) -> (Digest, Digest, Digest) {
            let config = self.blob(format!("config {seed}").as_bytes());
            let layer = self.blob(format!("layer {seed}").as_bytes());
            self.link(&config, origin);
            self.link(&layer, origin);
            let manifest = self.manifest(&[config.clone(), layer.clone()], origin);
            match origin {
                Origin::Pushed => self.tag(&manifest),
                Origin::Cached => self.cached_tag(&manifest),
            }
            (config, layer, manifest)
        }

        fn corrupt(&mut self, digest: &Digest) {
            let blob = self.blobs.iter_mut().find(|b| &b.digest == digest).unwrap();
            blob.content = Ok(Digest::sha256_of(b"something else"));
        }

        fn delete(&mut self, digest: &Digest) {
            self.blobs.retain(|b| &b.digest != digest);
        }

        fn check(&self) -> Vec<Finding> {
            check(&Facts {
                snapshot: &self.snap,
                blobs: &self.blobs,
                manifests: &self.manifests,
                strays: &self.strays,
            })
        }

        fn problems(&self) -> Vec<Problem> {
            self.check().into_iter().map(|f| f.problem).collect()
        }
    }

    fn remove(removal: Removal) -> Action {
        Action::Remove(removal)
    }

    #[test]
    fn a_consistent_store_has_no_findings() {
        let mut store = Store::default();
        let (_, _, manifest) = store.image("a", Origin::Pushed);
        store.image("b", Origin::Cached);
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest.to_string(), "size": 1}],
        });
        store.record(body, OCI_INDEX, Origin::Pushed, None);
        // A referrer: an artifact whose subject is the image.
        let config = store.blob(b"{}");
        store.link(&config, Origin::Pushed);
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "c", "digest": config.to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": manifest.to_string(), "size": 1},
        });
        let sig = store.record(body, OCI_MANIFEST, Origin::Pushed, Some(manifest.clone()));
        store.snap.referrers.push(ReferrerEntry {
            repo: repo(),
            subject: manifest,
            referrer: sig,
        });
        assert_eq!(store.check(), Vec::new());
        assert_eq!(manifests_to_parse(&store.snap, &store.blobs).len(), 4);
    }

    #[test]
    fn a_corrupt_layer_goes_to_lost_and_found_its_links_go_and_the_manifest_is_reported() {
        let mut store = Store::default();
        let (_, layer, manifest) = store.image("a", Origin::Pushed);
        store.corrupt(&layer);
        let findings = store.check();
        assert_eq!(findings.len(), 3, "{findings:#?}");
        assert!(
            matches!(&findings[0].problem, Problem::CorruptBlob { digest, .. } if *digest == layer)
        );
        assert_eq!(
            findings[0].repair,
            vec![Action::MoveToLostFound(blob_relative_path(&layer))]
        );
        assert_eq!(
            findings[1].repair,
            vec![remove(Removal::Link {
                repo: repo(),
                digest: layer.clone()
            })]
        );
        assert_eq!(
            findings[2],
            finding(
                Problem::ManifestMissingBlob {
                    repo: repo(),
                    manifest: manifest.clone(),
                    blob: layer,
                    linked: true
                },
                Vec::new()
            )
        );
        assert!(findings[2].problem.to_string().contains("not repaired"));
    }

    #[test]
    fn an_empty_file_and_an_unreadable_one_are_told_apart() {
        let mut store = Store::default();
        let (config, layer, _) = store.image("a", Origin::Pushed);
        store.blobs[0].size = 0;
        store.corrupt(&config);
        let blob = store.blobs.iter_mut().find(|b| b.digest == layer).unwrap();
        blob.content = Err("permission denied".into());
        let findings = store.check();
        assert_eq!(findings.len(), 4, "{findings:#?}");
        assert_eq!(
            findings[0].problem,
            Problem::EmptyBlob {
                digest: config.clone()
            }
        );
        assert_eq!(
            findings[1],
            finding(
                Problem::UnreadableBlob {
                    digest: layer,
                    error: "permission denied".into()
                },
                Vec::new()
            )
        );
        // The link to the unreadable blob stays: it may be fine once readable.
        assert!(
            matches!(&findings[2].problem, Problem::DanglingLink { digest, .. } if *digest == config)
        );
        assert!(
            matches!(&findings[3].problem, Problem::ManifestMissingBlob { blob, .. } if *blob == config)
        );
    }

    #[test]
    fn a_cached_manifest_with_bad_bytes_goes_with_everything_naming_it() {
        let mut store = Store::default();
        let (_, _, manifest) = store.image("a", Origin::Cached);
        let subject = Digest::sha256_of(b"subject");
        store.snap.manifests[0].record.subject = Some(subject.clone());
        store.snap.referrers.push(ReferrerEntry {
            repo: repo(),
            subject: subject.clone(),
            referrer: manifest.clone(),
        });
        store.tag(&manifest);
        store.delete(&manifest);
        let findings = store.check();
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(
            findings[0].repair,
            vec![
                remove(Removal::Manifest {
                    repo: repo(),
                    digest: manifest.clone()
                }),
                remove(Removal::Tag {
                    repo: repo(),
                    tag: tag(),
                    digest: manifest.clone()
                }),
                remove(Removal::Referrer {
                    repo: repo(),
                    subject,
                    referrer: manifest.clone()
                }),
                remove(Removal::CachedTag {
                    repo: repo(),
                    tag: tag(),
                    media_type: OCI_MANIFEST.into()
                }),
            ]
        );
        assert!(findings[0].problem.to_string().contains("(cached)"));
    }

    #[test]
    fn a_cached_manifest_may_lack_its_layers() {
        let mut store = Store::default();
        let (config, layer, _) = store.image("a", Origin::Cached);
        store.snap.links.clear();
        store.delete(&config);
        store.delete(&layer);
        assert_eq!(store.check(), Vec::new());
    }

    #[test]
    fn a_pushed_manifest_with_missing_bytes_a_size_or_a_parse_error_is_reported_not_repaired() {
        let mut store = Store::default();
        let (_, _, missing) = store.image("a", Origin::Pushed);
        let (_, _, resized) = store.image("b", Origin::Pushed);
        let (_, _, garbled) = store.image("c", Origin::Pushed);
        store.delete(&missing);
        store.snap.manifests[1].record.size += 1;
        store.manifests[2].parsed = Err(ManifestError::MissingConfig);
        let problems = store.problems();
        assert_eq!(
            problems,
            vec![
                Problem::ManifestBytes {
                    repo: repo(),
                    digest: missing,
                    origin: Origin::Pushed,
                    fault: BytesFault::Missing
                },
                Problem::ManifestBytes {
                    repo: repo(),
                    digest: resized,
                    origin: Origin::Pushed,
                    fault: BytesFault::Size {
                        recorded: store.snap.manifests[1].record.size,
                        stored: store.snap.manifests[1].record.size - 1
                    }
                },
                Problem::ManifestUnparsable {
                    repo: repo(),
                    digest: garbled,
                    error: ManifestError::MissingConfig
                },
            ]
        );
        assert!(store.check().iter().all(|f| f.repair.is_empty()));
        // Only intact bytes of the recorded size are read.
        assert_eq!(manifests_to_parse(&store.snap, &store.blobs).len(), 1);
    }

    #[test]
    fn a_manifest_must_find_its_blobs_linked_and_its_children_recorded() {
        let mut store = Store::default();
        let (_, layer, manifest) = store.image("a", Origin::Pushed);
        store.snap.links.retain(|l| l.digest != layer);
        let child = Digest::sha256_of(b"child");
        let foreign = Digest::sha256_of(b"foreign");
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": manifest.to_string(), "size": 1},
                {"mediaType": OCI_MANIFEST, "digest": child.to_string(), "size": 1},
            ],
        });
        let index = store.record(body, OCI_INDEX, Origin::Pushed, None);
        let config = store.blob(b"cfg");
        store.link(&config, Origin::Pushed);
        let body = json!({
            "schemaVersion": 2,
            "config": {"mediaType": "c", "digest": config.to_string(), "size": 3},
            "layers": [{"mediaType": "l", "digest": foreign.to_string(), "size": 1,
                        "urls": ["https://example.com/layer"]}],
        });
        store.record(body, OCI_MANIFEST, Origin::Pushed, None);
        assert_eq!(
            store.problems(),
            vec![
                Problem::ManifestMissingBlob {
                    repo: repo(),
                    manifest,
                    blob: layer,
                    linked: false
                },
                Problem::ManifestMissingChild {
                    repo: repo(),
                    manifest: index,
                    child
                },
            ]
        );
    }

    #[test]
    fn records_naming_missing_manifests_are_dropped() {
        let mut store = Store::default();
        let gone = Digest::sha256_of(b"gone");
        let (_, _, manifest) = store.image("a", Origin::Pushed);
        store.tag(&gone);
        store.cached_tag(&gone);
        store.snap.referrers.push(ReferrerEntry {
            repo: repo(),
            subject: manifest.clone(),
            referrer: gone.clone(),
        });
        // An entry whose referrer exists but has another subject.
        store.snap.referrers.push(ReferrerEntry {
            repo: repo(),
            subject: gone.clone(),
            referrer: manifest.clone(),
        });
        let findings = store.check();
        let repairs: Vec<_> = findings.iter().flat_map(|f| f.repair.clone()).collect();
        assert_eq!(
            repairs,
            vec![
                remove(Removal::Tag {
                    repo: repo(),
                    tag: tag(),
                    digest: gone.clone()
                }),
                remove(Removal::Referrer {
                    repo: repo(),
                    subject: manifest.clone(),
                    referrer: gone.clone()
                }),
                remove(Removal::Referrer {
                    repo: repo(),
                    subject: gone.clone(),
                    referrer: manifest.clone()
                }),
                remove(Removal::CachedTag {
                    repo: repo(),
                    tag: tag(),
                    media_type: OCI_MANIFEST.into()
                }),
            ]
        );
        assert!(matches!(
            findings[2].problem,
            Problem::ReferrerSubject { actual: None, .. }
        ));
    }

    #[test]
    fn links_name_their_blob_and_its_size() {
        let mut store = Store::default();
        let blob = store.blob(b"blob");
        store.link(&blob, Origin::Pushed);
        store.snap.links[0].size = 99;
        let missing = Digest::sha256_of(b"missing");
        store.snap.links.push(LinkEntry {
            repo: repo(),
            digest: missing.clone(),
            size: 1,
            origin: Origin::Cached,
            linked_at: 1,
        });
        let findings = store.check();
        assert_eq!(
            findings,
            vec![
                finding(
                    Problem::LinkSize {
                        repo: repo(),
                        digest: blob,
                        recorded: 99,
                        stored: 4
                    },
                    Vec::new()
                ),
                finding(
                    Problem::DanglingLink {
                        repo: repo(),
                        digest: missing.clone(),
                        bytes: BlobState::Missing
                    },
                    vec![remove(Removal::Link {
                        repo: repo(),
                        digest: missing
                    })]
                ),
            ]
        );
    }

    #[test]
    fn strays_are_moved_or_deleted() {
        let mut store = Store::default();
        let stray = |path: &str, kind| Stray {
            path: path.into(),
            kind,
        };
        store.strays = vec![
            stray("blobs/sha256/x", StrayKind::NotABlob),
            stray("tmp/abc", StrayKind::TempFile),
            stray("uploads/zzz", StrayKind::MalformedUpload("why")),
        ];
        let repairs: Vec<_> = store.check().into_iter().flat_map(|f| f.repair).collect();
        assert_eq!(
            repairs,
            vec![
                Action::MoveToLostFound("blobs/sha256/x".into()),
                Action::Delete("tmp/abc".into()),
                Action::Delete("uploads/zzz".into()),
            ]
        );
    }

    #[test]
    fn the_summary_says_what_remains() {
        let mut summary = Summary {
            blobs: 3,
            bytes: 2048,
            manifests: 1,
            tags: 1,
            found: 2,
            seconds: 0.25,
            ..Summary::default()
        };
        assert!(!summary.consistent());
        assert!(summary
            .to_string()
            .ends_with("2 problems (run with --repair to fix what can be)"));
        summary.repaired = 1;
        assert_eq!(
            summary.to_string(),
            "fsck: 3 blobs (2.0 KiB), 1 manifests, 1 tags checked in 0.2 s: \
             2 problems, 1 repaired, 1 remain"
        );
        summary.repaired = 2;
        assert!(summary.consistent());
    }
}
