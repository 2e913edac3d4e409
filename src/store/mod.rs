//! Storage: content-addressed blobs ([`BlobStore`]) and metadata ([`MetaStore`]),
//! with the registry's rules on top ([`Registry`]).
//!
//! Layers, as in distribution: `api` speaks HTTP and never touches files; `Registry`
//! holds the rules (a blob is visible in a repository only if linked there, a manifest
//! may only reference what its repository holds); the two traits move bytes and
//! records. This layer never sees HTTP.

mod fs;
mod meta_redb;
mod registry;

pub use fs::FsBlobStore;
pub use meta_redb::{open_database, RedbMetaStore};
pub use registry::{LinkedBlob, ManifestContent, Registry};

/// Unix seconds now: the clock of every timestamp the store keeps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

use crate::oci::manifest::{Descriptor, ManifestError};
use crate::oci::{Digest, RepoName, Tag};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// An upload session id: a UUID, validated before it names a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn random() -> UploadId {
        UploadId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    pub fn parse(s: &str) -> Option<UploadId> {
        let uuid = uuid::Uuid::parse_str(s).ok()?;
        Some(UploadId(uuid.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Bytes arriving in chunks: request bodies into the store (the edge implements it over
/// the client connection) and blobs out of it, so neither is ever buffered whole.
#[async_trait]
pub trait ByteSource: Send {
    /// The next chunk, or `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {0} is unknown to this repository")]
    BlobUnknown(Digest),
    #[error("manifest {0} is unknown to this repository")]
    ManifestUnknown(String),
    #[error("repository {0} is unknown to this registry")]
    NameUnknown(RepoName),
    #[error("upload session unknown (finished, cancelled, expired or never started)")]
    UploadUnknown,
    #[error("content has digest {actual}, but {expected} was given")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(
        "chunk starts at byte {requested}, but the upload holds {size} bytes; resume at {size}"
    )]
    UploadOffset { size: u64, requested: u64 },
    #[error("{0}")]
    ManifestInvalid(ManifestError),
    #[error("manifest references {0}, which this repository does not hold; push it first")]
    ManifestBlobUnknown(Digest),
    #[error("request body exceeds limits.max_body_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Meta(String),
    /// Another process holds the metadata database (redb allows one opener).
    #[error("{0} is open in another process")]
    InUse(String),
    #[error(
        "the registry's storage is full ({available} bytes free, storage.min_free_bytes is {reserve}); \
         free space (delete images, then collect garbage) or grow the volume"
    )]
    StorageFull { available: u64, reserve: u64 },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The store could not take more bytes: the reserve is reached, or a write met a
    /// full disk or quota.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::StorageFull { .. } => true,
            StoreError::Io { source, .. } => is_disk_full(source),
            _ => false,
        }
    }
}

/// ENOSPC or EDQUOT.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded
}

/// How content came into a repository. The lifecycle (garbage collection, the byte
/// cap on cached content) treats the two differently: cached content can be fetched
/// again, pushed content cannot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Pushed,
    /// Fetched from an upstream by the pull-through cache.
    Cached,
}

impl Origin {
    /// The `origin` label of `portcullis_store_bytes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Pushed => "pushed",
            Origin::Cached => "cached",
        }
    }
}

/// What the registry knows about a stored manifest; its bytes live in the blob store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// The `subject` it refers to, so deleting it can drop its referrers entry.
    pub subject: Option<Digest>,
    /// Records written before origins were kept are pushed ones.
    #[serde(default)]
    pub origin: Origin,
    /// Unix seconds of the push or fetch; 0 for records older than this field, which
    /// then count as old enough for garbage collection's grace period.
    #[serde(default)]
    pub created_at: u64,
}

/// What a tag of a mirrored repository resolved to upstream for one media type, and
/// when the upstream last confirmed it. A tag can name an index for clients that
/// accept one and a single manifest for those that do not, so there is one record
/// per (tag, media type).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedTag {
    pub media_type: String,
    pub digest: Digest,
    /// Unix seconds of the last fetch or revalidation.
    pub checked_at: u64,
}

/// The tag list of a mirrored repository as the upstream last gave it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedTagList {
    pub tags: Vec<String>,
    /// Unix seconds of the fetch.
    pub fetched_at: u64,
}

/// Everything the metadata store holds, read in one transaction: the consistent view
/// that garbage collection marks from and that fsck and export walk. Sorted by key.
#[derive(Debug, Default)]
pub struct MetaSnapshot {
    pub repos: Vec<RepoName>,
    pub links: Vec<LinkEntry>,
    pub manifests: Vec<ManifestEntry>,
    pub tags: Vec<TagEntry>,
    pub referrers: Vec<ReferrerEntry>,
    pub cached_tags: Vec<CachedTagEntry>,
    /// Unix seconds each blob or manifest was last read, as last flushed (see
    /// [`MetaStore::record_access`]).
    pub accessed: Vec<(Digest, u64)>,
}

/// One record for [`MetaStore::remove_records`] to remove: for repairs (fsck),
/// garbage collection and cache eviction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Removal {
    /// `repo`'s link to a blob (the bytes stay).
    Link { repo: RepoName, digest: Digest },
    /// A tag, only while it still names `digest`: a push may have moved it since the
    /// caller looked.
    Tag {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    /// The manifest record only; its tags and referrers entry are removals of their own.
    Manifest { repo: RepoName, digest: Digest },
    Referrer {
        repo: RepoName,
        subject: Digest,
        referrer: Digest,
    },
    /// A mirrored tag's record for one media type.
    CachedTag {
        repo: RepoName,
        tag: Tag,
        media_type: String,
    },
    /// The last-access time of a blob or manifest that is gone.
    Access { digest: Digest },
}

impl MetaSnapshot {
    /// Removing the manifest `digest` of `repo` with every record that names it: its
    /// tags, its referrers entry and the mirrored tag records that resolve to it.
    pub fn manifest_removals(&self, repo: &RepoName, digest: &Digest) -> Vec<Removal> {
        let mut removals = vec![Removal::Manifest {
            repo: repo.clone(),
            digest: digest.clone(),
        }];
        removals.extend(
            self.tags
                .iter()
                .filter(|t| &t.repo == repo && &t.digest == digest)
                .map(|t| Removal::Tag {
                    repo: repo.clone(),
                    tag: t.tag.clone(),
                    digest: digest.clone(),
                }),
        );
        removals.extend(
            self.referrers
                .iter()
                .filter(|r| &r.repo == repo && &r.referrer == digest)
                .map(|r| Removal::Referrer {
                    repo: repo.clone(),
                    subject: r.subject.clone(),
                    referrer: digest.clone(),
                }),
        );
        removals.extend(
            self.cached_tags
                .iter()
                .filter(|c| &c.repo == repo && &c.record.digest == digest)
                .map(|c| Removal::CachedTag {
                    repo: repo.clone(),
                    tag: c.tag.clone(),
                    media_type: c.record.media_type.clone(),
                }),
        );
        removals
    }
}

/// A blob a repository holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkEntry {
    pub repo: RepoName,
    pub digest: Digest,
    pub size: u64,
    pub origin: Origin,
    /// Unix seconds the link was made; 0 for links older than the record of it.
    pub linked_at: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    pub repo: RepoName,
    pub digest: Digest,
    pub record: ManifestRecord,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagEntry {
    pub repo: RepoName,
    pub tag: Tag,
    pub digest: Digest,
    /// Unix seconds the tag was last pointed at its manifest; 0 if unknown (older store).
    pub tagged_at: u64,
}

/// `referrer` has `subject` as its subject, in `repo`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferrerEntry {
    pub repo: RepoName,
    pub subject: Digest,
    pub referrer: Digest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachedTagEntry {
    pub repo: RepoName,
    pub tag: Tag,
    pub record: CachedTag,
}

/// A stored blob as the blob store lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    /// Unix seconds of the file's last change: when it was stored.
    pub modified: u64,
}

/// An upload session as the blob store lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadInfo {
    pub id: UploadId,
    /// `None` when the session's record is missing or unreadable (a crash while it
    /// was being created).
    pub repo: Option<RepoName>,
    pub size: u64,
    /// Unix seconds of the last write.
    pub modified: u64,
}

/// One page of a sorted listing (tags, repositories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// More items follow the last one returned.
    pub more: bool,
}

/// Random reads of an upload session's bytes while they are still being written: the
/// pull-through cache serves a blob to every waiting client from the file it is
/// filling. The reader keeps reading the same bytes after the session finishes.
#[async_trait]
pub trait SessionReader: Send + Sync {
    /// `len` bytes from `offset`; all of them must already be written.
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, StoreError>;
}

/// Content-addressed bytes. Contract for every implementation:
/// - a blob is visible only once complete and verified: readers never see partial
///   or wrong content, also after a crash at any point;
/// - writing an existing digest is a no-op (content addressing makes it idempotent);
/// - uploads are resumable sessions whose bytes are appended in order.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// The size of a stored blob, or `None` if absent.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Opens `len` bytes of a blob from `offset` (within its size), or `None` if absent.
    async fn open(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Option<Box<dyn ByteSource>>, StoreError>;

    /// Bytes free for new content, or `None` if the backend cannot tell.
    async fn available_bytes(&self) -> Result<Option<u64>, StoreError>;

    /// Proves that new content can be written now (readiness): writes, syncs and
    /// removes a small probe where uploads are staged.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// A whole small blob (a manifest) in memory, or `None` if absent.
    async fn read_all(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError>;

    /// Stores small content already in memory (manifests), verified against `digest`.
    async fn put_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), StoreError>;

    /// Starts an empty upload session for `repo`.
    async fn upload_start(&self, id: &UploadId, repo: &RepoName) -> Result<(), StoreError>;

    /// The repository and current size of a session, or `None` if unknown.
    async fn upload_status(&self, id: &UploadId) -> Result<Option<(RepoName, u64)>, StoreError>;

    /// Appends `body` at `offset` (which must equal the current size, if given);
    /// returns the new size. Bytes that arrived before a broken body stay stored,
    /// so the client can resume.
    async fn upload_append(
        &self,
        id: &UploadId,
        offset: Option<u64>,
        body: &mut dyn ByteSource,
    ) -> Result<u64, StoreError>;

    /// Verifies the session's content against `expected`, makes it durable and
    /// visible under that digest, and ends the session; returns the size.
    /// On mismatch nothing is stored and the session ends.
    async fn upload_finish(&self, id: &UploadId, expected: &Digest) -> Result<u64, StoreError>;

    /// Ends a session and drops its bytes; `false` if it did not exist.
    async fn upload_cancel(&self, id: &UploadId) -> Result<bool, StoreError>;

    /// A reader of a session's bytes, or `None` if the session is unknown.
    async fn upload_reader(
        &self,
        id: &UploadId,
    ) -> Result<Option<Arc<dyn SessionReader>>, StoreError>;

    /// Every stored blob, in no particular order.
    async fn list_blobs(&self) -> Result<Vec<StoredBlob>, StoreError>;

    /// Removes a stored blob; readers that opened it keep reading what they opened.
    /// `false` if it was not there.
    async fn delete_blob(&self, digest: &Digest) -> Result<bool, StoreError>;

    /// Every upload session, finished or not.
    async fn list_uploads(&self) -> Result<Vec<UploadInfo>, StoreError>;
}

/// Registry metadata. Every method is one transaction.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// Records that `repo` holds blob `digest` (pushed, mounted or cached). A pushed
    /// link replaces a cached one: the repository now depends on it.
    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        origin: Origin,
    ) -> Result<(), StoreError>;
    /// The size of `digest` if `repo` holds it.
    async fn linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, StoreError>;
    /// Removes the link; `false` if there was none.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StoreError>;

    /// Records a manifest in `repo`, optionally tagging it, and indexes its subject.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        referrer: Option<&Descriptor>,
    ) -> Result<(), StoreError>;
    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, StoreError>;
    /// Removes a manifest, every tag pointing at it and its referrers entry.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StoreError>;

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError>;
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, StoreError>;
    /// Tags after `last`, at most `limit`; `None` if the repository is unknown.
    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError>;

    async fn list_repos(&self, last: Option<&str>, limit: usize) -> Result<Page, StoreError>;
    async fn repo_exists(&self, repo: &RepoName) -> Result<bool, StoreError>;

    /// Descriptors of the manifests in `repo` whose `subject` is `subject`.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, StoreError>;

    /// What a mirrored tag resolved to, one record per media type.
    async fn cached_tags(&self, repo: &RepoName, tag: &Tag) -> Result<Vec<CachedTag>, StoreError>;
    /// Adds or replaces the record for `record.media_type`.
    async fn put_cached_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        record: &CachedTag,
    ) -> Result<(), StoreError>;
    /// Forgets a mirrored tag (all media types), e.g. when the upstream no longer has it.
    async fn remove_cached_tag(&self, repo: &RepoName, tag: &Tag) -> Result<(), StoreError>;
    /// The names of the mirrored tags `repo` holds records for, sorted.
    async fn cached_tag_names(&self, repo: &RepoName) -> Result<Vec<String>, StoreError>;
    async fn cached_tag_list(&self, repo: &RepoName) -> Result<Option<CachedTagList>, StoreError>;
    async fn put_cached_tag_list(
        &self,
        repo: &RepoName,
        list: &CachedTagList,
    ) -> Result<(), StoreError>;

    /// Everything, in one read transaction (see [`MetaSnapshot`]).
    async fn snapshot(&self) -> Result<MetaSnapshot, StoreError> {
        self.snapshot_begun(tokio::sync::oneshot::channel().0).await
    }

    /// [`MetaStore::snapshot`], telling `begun` as soon as its transaction is open:
    /// the state it reads is fixed from then on, however long the reading takes.
    async fn snapshot_begun(
        &self,
        begun: tokio::sync::oneshot::Sender<()>,
    ) -> Result<MetaSnapshot, StoreError>;

    /// Removes each record named, in one write transaction (all or none); returns how
    /// many were there. Each removal takes exactly its own record (and the times kept
    /// beside it), nothing that points at it: the caller names those too.
    async fn remove_records(&self, removals: Vec<Removal>) -> Result<usize, StoreError>;

    /// Stores last-access times (unix seconds) of blobs and manifests, a batch at a
    /// time: the cache's LRU order, kept without a write per request.
    async fn record_access(&self, accessed: Vec<(Digest, u64)>) -> Result<(), StoreError>;
}

pub use fs::{blob_relative_path, Stray, StrayKind, LOST_FOUND};
