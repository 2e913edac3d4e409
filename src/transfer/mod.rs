//! Export and import without a network: repositories written to an OCI image layout
//! (a directory or a tar of one) and read back, and a CNCF distribution (registry:2)
//! filesystem tree brought over.
//!
//! The readers (`layout`, `distribution`) turn their input into a [`Plan`]: which
//! manifests go into which repository, which tags name them, and where each blob's
//! bytes are ([`BlobSource`]). One importer, [`apply`], carries a plan out through
//! the registry's own write paths, so every blob is verified, fsynced and renamed into
//! place as a push would do it, and every manifest is checked against what its
//! repository holds. Tags come last: an import that fails leaves nothing tagged.
//!
//! These run from the command line on a store no server has open; they read their
//! input with blocking calls on the thread that drives them.

pub mod distribution;
pub mod layout;

use crate::oci::manifest::ParsedManifest;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::progress::{human_bytes, Progress};
use crate::store::{unix_now, ByteSource, CachedTag, Origin, Registry, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::time::Instant;

/// Annotation naming the repository of every descriptor we write, so an importer
/// never has to guess it from a ref name.
pub const REPOSITORY_ANNOTATION: &str = "dev.portcullis.repository";
/// Annotation marking content the pull-through cache fetched (absent: pushed).
pub const ORIGIN_ANNOTATION: &str = "dev.portcullis.origin";
/// Bytes read from an input at a time.
const CHUNK: usize = 1 << 20;

/// What a command did, for its closing line.
#[derive(Debug, Default)]
pub struct Summary {
    pub verb: &'static str,
    pub repositories: usize,
    pub manifests: usize,
    pub tags: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Manifests, tags and blobs that were already there (import).
    pub unchanged: usize,
    /// Things that could not be carried; each was reported as it was met.
    pub skipped: usize,
    pub seconds: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} repositories, {} manifests, {} tags, {} blobs ({}) in {:.1} s",
            self.verb,
            self.repositories,
            self.manifests,
            self.tags,
            self.blobs,
            human_bytes(self.bytes),
            self.seconds
        )?;
        if self.unchanged > 0 {
            write!(f, "; {} already present", self.unchanged)?;
        }
        if self.skipped > 0 {
            write!(f, "; {} skipped (listed above)", self.skipped)?;
        }
        Ok(())
    }
}

/// Where an input keeps its blobs (manifests included).
pub trait BlobSource {
    /// The blob's bytes, or `None` when the input does not hold it.
    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send>>, String>;
    /// Where the blob is, for messages (`out/blobs/sha256/ab12...`).
    fn locate(&self, digest: &Digest) -> String;
}

/// A small blob (a manifest) read whole, checked against its digest; `None` when the
/// input does not hold it.
pub fn read_manifest(source: &dyn BlobSource, digest: &Digest) -> Result<Option<Bytes>, String> {
    let Some(reader) = source.open(digest)? else {
        return Ok(None);
    };
    let limit = crate::oci::manifest::MAX_MANIFEST_BYTES as u64;
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", source.locate(digest)))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{}: manifest {digest} is larger than {limit} bytes",
            source.locate(digest)
        ));
    }
    digest.verify(&bytes).map_err(|actual| {
        format!(
            "{}: content has digest {actual}, not {digest}; the input is damaged, copy it again",
            source.locate(digest)
        )
    })?;
    Ok(Some(Bytes::from(bytes)))
}

/// A reader's bytes as the store's upload path (or a response body) takes them.
pub(crate) struct ReadChunks(pub(crate) Box<dyn Read + Send>);

#[async_trait]
impl ByteSource for ReadChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        let mut buf = vec![0; CHUNK];
        let n = self
            .0
            .read(&mut buf)
            .map_err(|e| StoreError::io("reading the input", e))?;
        buf.truncate(n);
        Ok((n > 0).then(|| Bytes::from(buf)))
    }
}

/// What to do when a blob a manifest needs is not in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// The input claims to be complete (an OCI layout): fail.
    Abort,
    /// The input may have lost content (a registry:2 tree): skip that manifest.
    Skip,
}

pub struct PlannedManifest {
    pub repo: RepoName,
    pub digest: Digest,
    pub bytes: Bytes,
    pub parsed: ParsedManifest,
    pub origin: Origin,
}

pub struct PlannedTag {
    pub repo: RepoName,
    pub tag: Tag,
    pub digest: Digest,
}

/// Everything an input holds, as the importer will store it.
pub struct Plan {
    /// Blobs repositories hold besides those their manifests reference.
    pub links: Vec<(RepoName, Digest)>,
    pub manifests: Vec<PlannedManifest>,
    pub tags: Vec<PlannedTag>,
    /// What the reader already left out (reported when it was met).
    pub skipped: usize,
    pub on_missing: OnMissing,
}

/// A manifest for [`store_order`]: its key, the manifests it lists, its subject.
pub struct Node<K> {
    pub key: K,
    pub children: Vec<K>,
    pub subject: Option<K>,
}

/// The order in which to store manifests: each after the children it lists (the
/// registry refuses an index whose children it lacks) and after its subject when the
/// subject is among them (so the referrers index has its subject to hang from).
#[derive(Debug, PartialEq, Eq)]
pub struct Ordered<K> {
    /// Indices into the nodes, children first.
    pub order: Vec<usize>,
    /// Nodes that cannot be stored, with the child that is missing (or cannot be
    /// stored itself).
    pub blocked: Vec<(usize, K)>,
}

pub fn store_order<K: Ord + Clone>(nodes: &[Node<K>]) -> Ordered<K> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Visiting,
        Stored,
        Blocked,
    }
    struct Walk<'a, K> {
        nodes: &'a [Node<K>],
        index: BTreeMap<&'a K, usize>,
        state: Vec<State>,
        out: Ordered<K>,
    }
    impl<K: Ord + Clone> Walk<'_, K> {
        /// Whether node `i` can be stored; places it (after what it needs) if so.
        fn visit(&mut self, i: usize) -> bool {
            match self.state[i] {
                State::Stored => return true,
                // A cycle cannot come from content addressing; treat it as missing.
                State::Visiting | State::Blocked => return false,
                State::New => {}
            }
            self.state[i] = State::Visiting;
            let node = &self.nodes[i];
            for child in &node.children {
                let ok = match self.index.get(child) {
                    Some(&c) => self.visit(c),
                    None => false,
                };
                if !ok {
                    self.state[i] = State::Blocked;
                    self.out.blocked.push((i, child.clone()));
                    return false;
                }
            }
            // A subject is wanted first but not needed.
            if let Some(&s) = node.subject.as_ref().and_then(|s| self.index.get(s)) {
                self.visit(s);
            }
            self.state[i] = State::Stored;
            self.out.order.push(i);
            true
        }
    }
    let mut walk = Walk {
        nodes,
        index: nodes.iter().enumerate().map(|(i, n)| (&n.key, i)).collect(),
        state: vec![State::New; nodes.len()],
        out: Ordered {
            order: Vec::new(),
            blocked: Vec::new(),
        },
    };
    for i in 0..nodes.len() {
        walk.visit(i);
    }
    walk.out
}

/// A manifest in a repository.
type Key = (RepoName, Digest);

/// Carries out `plan`, reading blobs from `source`. Blobs and manifests go in first,
/// tags last, so an import that fails part way leaves nothing tagged; what is already
/// stored is left alone, so importing twice changes nothing.
pub async fn apply(
    registry: &Registry,
    plan: Plan,
    source: &dyn BlobSource,
) -> Result<Summary, String> {
    let started = Instant::now();
    let mut summary = Summary {
        verb: "imported",
        skipped: plan.skipped,
        ..Summary::default()
    };
    let repos: BTreeSet<&RepoName> = plan
        .manifests
        .iter()
        .map(|m| &m.repo)
        .chain(plan.links.iter().map(|(r, _)| r))
        .collect();
    summary.repositories = repos.len();
    let mut progress = Progress::new(
        "import",
        Some((plan.links.len() + plan.manifests.len()) as u64),
    );
    let skip = |summary: &mut Summary, what: String| -> Result<(), String> {
        match plan.on_missing {
            OnMissing::Abort => Err(what),
            OnMissing::Skip => {
                eprintln!("skipped: {what}");
                summary.skipped += 1;
                Ok(())
            }
        }
    };

    for (repo, digest) in &plan.links {
        let carried = carry_blob(registry, repo, digest, Origin::Pushed, source).await?;
        match carried {
            Some(bytes) => summary.count_blob(bytes),
            None => skip(
                &mut summary,
                format!("blob {digest} of {repo}: not in {}", source.locate(digest)),
            )?,
        }
        progress.advance(1, carried.unwrap_or(0));
    }

    let planned: BTreeSet<Key> = plan
        .manifests
        .iter()
        .map(|m| (m.repo.clone(), m.digest.clone()))
        .collect();
    let nodes: Vec<Node<Key>> = plan
        .manifests
        .iter()
        .map(|m| Node {
            key: (m.repo.clone(), m.digest.clone()),
            // A cached index is stored without the platforms nobody pulled.
            children: m
                .parsed
                .children
                .iter()
                .map(|c| (m.repo.clone(), c.digest.clone()))
                .filter(|k| m.origin == Origin::Pushed || planned.contains(k))
                .collect(),
            subject: m
                .parsed
                .subject
                .as_ref()
                .map(|s| (m.repo.clone(), s.digest.clone())),
        })
        .collect();
    let ordered = store_order(&nodes);
    let mut failed: BTreeSet<Key> = BTreeSet::new();
    for (i, (_, child)) in &ordered.blocked {
        let m = &plan.manifests[*i];
        failed.insert((m.repo.clone(), m.digest.clone()));
        skip(
            &mut summary,
            format!(
                "manifest {} of {}: lists {}, which cannot be imported",
                m.digest, m.repo, child
            ),
        )?;
    }
    for &i in &ordered.order {
        let m = &plan.manifests[i];
        progress.advance(1, 0);
        if m.parsed
            .children
            .iter()
            .any(|c| failed.contains(&(m.repo.clone(), c.digest.clone())))
        {
            failed.insert((m.repo.clone(), m.digest.clone()));
            skip(
                &mut summary,
                format!(
                    "manifest {} of {}: one of its manifests was skipped",
                    m.digest, m.repo
                ),
            )?;
            continue;
        }
        if registry
            .meta()
            .manifest(&m.repo, &m.digest)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            summary.unchanged += 1;
            continue;
        }
        let mut complete = true;
        for blob in m.parsed.blobs.iter().filter(|b| b.urls.is_empty()) {
            match carry_blob(registry, &m.repo, &blob.digest, m.origin, source).await? {
                // Linked already (shared, or one of the links above): not counted again.
                Some(0) => {}
                Some(bytes) => {
                    summary.count_blob(bytes);
                    progress.advance(0, bytes);
                }
                // The cache fetches what it lacks when it is online again.
                None if m.origin == Origin::Cached => {}
                None => {
                    complete = false;
                    skip(
                        &mut summary,
                        format!(
                            "manifest {} of {}: its blob {} is missing ({})",
                            m.digest,
                            m.repo,
                            blob.digest,
                            source.locate(&blob.digest)
                        ),
                    )?;
                    break;
                }
            }
        }
        if !complete {
            failed.insert((m.repo.clone(), m.digest.clone()));
            continue;
        }
        let stored = match m.origin {
            Origin::Pushed => registry
                .put_manifest(
                    &m.repo,
                    &Reference::Digest(m.digest.clone()),
                    Some(&m.parsed.media_type),
                    m.bytes.clone(),
                )
                .await
                .map(|_| ()),
            Origin::Cached => registry
                .put_cached_manifest(&m.repo, &m.digest, &m.parsed.media_type, m.bytes.clone())
                .await
                .map(|_| ()),
        };
        stored.map_err(|e| format!("manifest {} of {}: {e}", m.digest, m.repo))?;
        summary.manifests += 1;
    }

    let by_key: BTreeMap<Key, &PlannedManifest> = plan
        .manifests
        .iter()
        .map(|m| ((m.repo.clone(), m.digest.clone()), m))
        .collect();
    for t in &plan.tags {
        let key = (t.repo.clone(), t.digest.clone());
        let Some(m) = by_key.get(&key).filter(|_| !failed.contains(&key)) else {
            skip(
                &mut summary,
                format!(
                    "tag {}:{}: its manifest {} was not imported",
                    t.repo, t.tag, t.digest
                ),
            )?;
            continue;
        };
        if set_tag(registry, m, &t.tag)
            .await
            .map_err(|e| format!("tag {}:{}: {e}", t.repo, t.tag))?
        {
            summary.tags += 1;
        } else {
            summary.unchanged += 1;
        }
    }
    progress.finish();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

impl Summary {
    /// A blob carried: `bytes` copied, or 0 when the store already had it.
    fn count_blob(&mut self, bytes: u64) {
        if bytes > 0 {
            self.blobs += 1;
            self.bytes += bytes;
        } else {
            self.unchanged += 1;
        }
    }
}

/// Points `tag` at `m`; `false` when it already pointed there.
async fn set_tag(registry: &Registry, m: &PlannedManifest, tag: &Tag) -> Result<bool, StoreError> {
    let meta = registry.meta();
    match m.origin {
        Origin::Pushed => {
            if meta.resolve_tag(&m.repo, tag).await?.as_ref() == Some(&m.digest) {
                return Ok(false);
            }
            registry
                .put_manifest(
                    &m.repo,
                    &Reference::Tag(tag.clone()),
                    Some(&m.parsed.media_type),
                    m.bytes.clone(),
                )
                .await?;
        }
        Origin::Cached => {
            let records = meta.cached_tags(&m.repo, tag).await?;
            let media_type = &m.parsed.media_type;
            if records
                .iter()
                .any(|r| &r.media_type == media_type && r.digest == m.digest)
            {
                return Ok(false);
            }
            let record = CachedTag {
                media_type: media_type.clone(),
                digest: m.digest.clone(),
                checked_at: unix_now(),
            };
            meta.put_cached_tag(&m.repo, tag, &record).await?;
        }
    }
    Ok(true)
}

/// Makes `repo` hold blob `digest`: linked if the store has it, else copied from
/// `source` through the upload path (verified, fsynced, renamed). Returns the bytes
/// copied (0 when none were needed), or `None` when the input lacks the blob.
async fn carry_blob(
    registry: &Registry,
    repo: &RepoName,
    digest: &Digest,
    origin: Origin,
    source: &dyn BlobSource,
) -> Result<Option<u64>, String> {
    let failed = |e: StoreError| format!("blob {digest} for {repo}: {e}");
    if registry
        .meta()
        .linked_blob(repo, digest)
        .await
        .map_err(failed)?
        .is_some()
    {
        return Ok(Some(0));
    }
    if registry
        .stored_blob_size(digest)
        .await
        .map_err(failed)?
        .is_some()
    {
        match origin {
            Origin::Pushed => registry.mount_blob(repo, digest, None).await.map(|_| ()),
            Origin::Cached => registry.link_cached_blob(repo, digest).await.map(|_| ()),
        }
        .map_err(failed)?;
        return Ok(Some(0));
    }
    let Some(reader) = source.open(digest)? else {
        return Ok(None);
    };
    let id = registry.start_upload(repo).await.map_err(failed)?;
    let copied = async {
        registry
            .append_upload(repo, &id, Some(0), &mut ReadChunks(reader))
            .await?;
        registry.finish_upload(repo, &id, digest, origin).await
    }
    .await;
    match copied {
        Ok(size) => Ok(Some(size)),
        Err(e) => {
            // A failed finish already ended the session; a failed append did not.
            let _ = registry.cancel_upload(repo, &id).await;
            Err(match e {
                StoreError::DigestMismatch { actual, .. } => format!(
                    "{}: content has digest {actual}, not {digest}; the input is damaged, copy it again",
                    source.locate(digest)
                ),
                other => format!("{}: {other}", source.locate(digest)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: u8, children: &[u8], subject: Option<u8>) -> Node<u8> {
        Node {
            key,
            children: children.to_vec(),
            subject,
        }
    }

    #[test]
    fn children_and_subjects_come_first() {
        // 1: index of 2 and 3; 4: a signature of 1; 5: an SBOM of 4.
        let nodes = [
            node(5, &[], Some(4)),
            node(1, &[2, 3], None),
            node(4, &[], Some(1)),
            node(2, &[], None),
            node(3, &[], None),
        ];
        let ordered = store_order(&nodes);
        let keys: Vec<u8> = ordered.order.iter().map(|&i| nodes[i].key).collect();
        assert_eq!(keys, [2, 3, 1, 4, 5]);
        assert!(ordered.blocked.is_empty());
    }

    #[test]
    fn a_missing_child_blocks_its_parents_but_not_a_missing_subject() {
        let nodes = [
            node(1, &[2, 9], None),
            node(2, &[], None),
            node(3, &[1], None),
            node(4, &[], Some(8)),
        ];
        let ordered = store_order(&nodes);
        let keys: Vec<u8> = ordered.order.iter().map(|&i| nodes[i].key).collect();
        assert_eq!(keys, [2, 4]);
        assert_eq!(ordered.blocked, [(0, 9), (2, 1)]);
    }

    #[test]
    fn a_cycle_is_blocked_not_looped() {
        let nodes = [node(1, &[2], None), node(2, &[1], None)];
        let ordered = store_order(&nodes);
        assert!(ordered.order.is_empty());
        assert_eq!(ordered.blocked.len(), 2);
    }

    #[test]
    fn summary_names_every_figure() {
        let s = Summary {
            verb: "exported",
            repositories: 2,
            manifests: 5,
            tags: 3,
            blobs: 7,
            bytes: 3 << 20,
            seconds: 1.25,
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "exported 2 repositories, 5 manifests, 3 tags, 7 blobs (3.0 MiB) in 1.2 s"
        );
    }
}
