//! The registry's storage rules, on top of a [`BlobStore`] and a [`MetaStore`].
//!
//! - A blob is served from a repository only if that repository holds a link to it
//!   (pushed, mounted or referenced), as distribution does.
//! - A manifest is accepted only if its repository holds everything it references;
//!   its bytes are stored exactly as received, before the metadata that points at them,
//!   so a tag never names a missing manifest.
//! - New content is refused while free space is below the reserve, so the metadata
//!   store never meets a full disk in the middle of a transaction.
//! - Garbage collection runs while the registry serves (see [`crate::gc`]). Every
//!   step that relies on a stored blob and then records a reference to it holds
//!   [`Registry::gc_guard_shared`]; the collector deletes only while holding it
//!   exclusively, a batch at a time, and never what was touched since its mark began.

use super::{
    unix_now, BlobStore, ByteSource, ManifestRecord, MetaStore, Origin, Page, SessionReader,
    StoreError, UploadId,
};
use crate::metrics;
use crate::oci::manifest::{self, Descriptor};
use crate::oci::{Digest, Reference, RepoName};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of recently served manifests kept in memory. Content addressing makes them
/// immutable, and access is checked in the metadata before the cache is consulted.
const MANIFEST_CACHE_BYTES: u64 = 16 << 20;

pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    manifest_cache: moka::sync::Cache<Digest, Bytes>,
    /// Free bytes to keep (storage.min_free_bytes).
    min_free_bytes: u64,
    gc: GcCoordination,
    access: AccessLog,
    /// Bytes of cached content stored since the cache's size was last measured:
    /// tells the collector when the cache may have outgrown its cap.
    cached_bytes_added: AtomicU64,
}

/// What lets garbage collection run beside pushes (see the module comment).
#[derive(Default)]
struct GcCoordination {
    /// Shared by every check-then-reference step; exclusive for a sweep batch.
    guard: tokio::sync::RwLock<()>,
    /// While a collection runs: every digest referenced, stored or read since its
    /// mark began. `None` when no collection runs.
    touched: Mutex<Option<HashSet<Digest>>>,
    /// Whether `touched` is `Some`: read without the lock on every request.
    collecting: std::sync::atomic::AtomicBool,
}

/// Last reads of blobs and manifests, kept in memory and flushed in batches, so the
/// request path never writes metadata for a read.
#[derive(Default)]
struct AccessLog(Mutex<HashMap<Digest, u64>>);

impl AccessLog {
    fn record(&self, digest: &Digest) {
        let now = unix_now();
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Most reads are of digests read a moment ago: no allocation then.
        match pending.get_mut(digest) {
            Some(at) => *at = now,
            None => {
                pending.insert(digest.clone(), now);
            }
        }
    }
}

/// A manifest as served: its digest, media type and exact bytes (or just its size for HEAD).
pub struct ManifestContent {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A blob a repository holds; only [`Registry::linked_blob`] makes one, so holding it
/// means the access rule was checked.
pub struct LinkedBlob {
    digest: Digest,
    pub size: u64,
}

pub struct PutManifestOutcome {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// The descriptor a manifest with a `subject` gets in its subject's referrers list.
fn referrer_entry(parsed: &manifest::ParsedManifest, digest: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: parsed.media_type.clone(),
        digest: digest.clone(),
        size,
        artifact_type: parsed.artifact_type.clone(),
        urls: Vec::new(),
        annotations: parsed.annotations.clone(),
        platform: None,
    }
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        min_free_bytes: u64,
    ) -> Registry {
        Registry {
            blobs,
            meta,
            min_free_bytes,
            gc: GcCoordination::default(),
            access: AccessLog::default(),
            cached_bytes_added: AtomicU64::new(0),
            manifest_cache: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_CACHE_BYTES)
                .weigher(|_, bytes: &Bytes| u32::try_from(bytes.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// A blob `repo` may serve: the access check, done once per request.
    pub async fn linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<LinkedBlob, StoreError> {
        match self.meta.linked_blob(repo, digest).await? {
            Some(size) => {
                self.accessed(digest);
                Ok(LinkedBlob {
                    digest: digest.clone(),
                    size,
                })
            }
            None => Err(StoreError::BlobUnknown(digest.clone())),
        }
    }

    /// A read of `digest`: its last-access time, and it survives a collection under way.
    fn accessed(&self, digest: &Digest) {
        self.access.record(digest);
        self.touch([digest]);
    }

    /// Keeps `digests` through a collection under way.
    fn touch<'d>(&self, digests: impl IntoIterator<Item = &'d Digest>) {
        // Set before the snapshot is taken, under the exclusive guard: a step that
        // sees it clear finished before the mark began, so the snapshot has it.
        if !self.gc.collecting.load(Ordering::Acquire) {
            return;
        }
        let mut touched = self.gc.touched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = touched.as_mut() {
            set.extend(digests.into_iter().cloned());
        }
    }

    /// Held shared while a step relies on stored content and records a reference to
    /// it; the collector holds it exclusively while it deletes.
    pub async fn gc_guard_shared(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc.guard.read().await
    }

    /// For the collector: no step that references content runs while this is held.
    pub async fn gc_guard_exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gc.guard.write().await
    }

    /// Starts recording touched digests and takes the snapshot a collection marks
    /// from: with the guard held, no step straddles the two.
    pub async fn begin_collection(&self) -> Result<super::MetaSnapshot, StoreError> {
        let mut exclusive = Some(self.gc_guard_exclusive().await);
        *self.gc.touched.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
        self.gc.collecting.store(true, Ordering::Release);
        // The guard is held only until the snapshot's transaction is open, not while
        // it is read (a second or so for a large store).
        let (begun, mut opened) = tokio::sync::oneshot::channel();
        let mut snapshot = std::pin::pin!(self.meta.snapshot_begun(begun));
        let snapshot = loop {
            tokio::select! {
                result = &mut snapshot => break result,
                _ = &mut opened, if exclusive.is_some() => exclusive = None,
            }
        };
        drop(exclusive);
        if snapshot.is_err() {
            self.end_collection();
        }
        snapshot
    }

    /// Whether `digest` was touched since [`Registry::begin_collection`]; call with
    /// the exclusive guard held.
    pub fn touched(&self, digest: &Digest) -> bool {
        let touched = self.gc.touched.lock().unwrap_or_else(|e| e.into_inner());
        touched.as_ref().is_some_and(|set| set.contains(digest))
    }

    pub fn end_collection(&self) {
        self.gc.collecting.store(false, Ordering::Release);
        *self.gc.touched.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Last reads not yet flushed, without taking them.
    pub fn pending_access(&self) -> HashMap<Digest, u64> {
        self.access
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes the last reads recorded since the previous flush.
    pub async fn flush_access(&self) -> Result<(), StoreError> {
        let batch: Vec<(Digest, u64)> = {
            let mut pending = self.access.0.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        self.meta.record_access(batch).await
    }

    /// Bytes of cached content stored since the last call (see `cached_bytes_added`).
    pub fn take_cached_bytes_added(&self) -> u64 {
        self.cached_bytes_added.swap(0, Ordering::Relaxed)
    }

    pub fn peek_cached_bytes_added(&self) -> u64 {
        self.cached_bytes_added.load(Ordering::Relaxed)
    }

    /// The blob store, for the collector's listing and deletes.
    pub fn blob_store(&self) -> &dyn BlobStore {
        &*self.blobs
    }

    /// Opens `len` bytes from `offset` of a blob found with [`Registry::linked_blob`].
    pub async fn open_blob(
        &self,
        blob: &LinkedBlob,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn ByteSource>, StoreError> {
        self.blobs
            .open(&blob.digest, offset, len)
            .await?
            .ok_or_else(|| StoreError::BlobUnknown(blob.digest.clone()))
    }

    /// Removes `repo`'s link to a blob; the bytes stay until garbage collection.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        if self.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(StoreError::BlobUnknown(digest.clone()))
        }
    }

    /// Links an existing blob into `repo`. With `from`, only if `from` holds it;
    /// without, if the store holds it at all (the spec's automatic mount).
    /// Returns the size, or `None` when there is nothing to mount.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>, StoreError> {
        let _gc = self.gc_guard_shared().await;
        self.touch([digest]);
        let size = match from {
            Some(from) => self.meta.linked_blob(from, digest).await?,
            None => self.blobs.stat(digest).await?,
        };
        let Some(size) = size else {
            return Ok(None);
        };
        // The bytes must really be there: a link alone is not content.
        if from.is_some() && self.blobs.stat(digest).await?.is_none() {
            return Ok(None);
        }
        self.meta
            .link_blob(repo, digest, size, Origin::Pushed)
            .await?;
        Ok(Some(size))
    }

    /// Refuses new content while free space is under the reserve.
    async fn ensure_space(&self) -> Result<(), StoreError> {
        match self.blobs.available_bytes().await? {
            Some(available) if available < self.min_free_bytes => Err(StoreError::StorageFull {
                available,
                reserve: self.min_free_bytes,
            }),
            _ => Ok(()),
        }
    }

    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadId, StoreError> {
        self.ensure_space().await?;
        let id = UploadId::random();
        self.blobs.upload_start(&id, repo).await?;
        Ok(id)
    }

    /// The number of bytes a session of `repo` holds.
    pub async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64, StoreError> {
        match self.blobs.upload_status(id).await? {
            Some((owner, size)) if &owner == repo => Ok(size),
            _ => Err(StoreError::UploadUnknown),
        }
    }

    pub async fn append_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: Option<u64>,
        body: &mut dyn ByteSource,
    ) -> Result<u64, StoreError> {
        self.upload_size(repo, id).await?;
        self.ensure_space().await?;
        self.blobs.upload_append(id, offset, body).await
    }

    /// Completes a session: verifies `digest`, stores the blob, links it into `repo`
    /// as content of `origin`.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        origin: Origin,
    ) -> Result<u64, StoreError> {
        self.upload_size(repo, id).await?;
        let _gc = self.gc_guard_shared().await;
        self.touch([digest]);
        let size = self.blobs.upload_finish(id, digest).await?;
        self.meta.link_blob(repo, digest, size, origin).await?;
        if origin == Origin::Cached {
            self.cached_bytes_added.fetch_add(size, Ordering::Relaxed);
        }
        // An estimate until gc measures again (a blob stored before counts twice).
        metrics::get()
            .store_bytes
            .with_label_values(&[origin.as_str()])
            .add(size as i64);
        Ok(size)
    }

    /// Reads a session of `repo` while it is written (see [`SessionReader`]).
    pub async fn upload_reader(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<Arc<dyn SessionReader>, StoreError> {
        self.upload_size(repo, id).await?;
        self.blobs
            .upload_reader(id)
            .await?
            .ok_or(StoreError::UploadUnknown)
    }

    /// Links a blob the store already holds into `repo` as cached content, for a
    /// repository whose upstream confirmed it has that blob. `None` if not stored.
    pub async fn link_cached_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<LinkedBlob>, StoreError> {
        let _gc = self.gc_guard_shared().await;
        self.touch([digest]);
        let Some(size) = self.blobs.stat(digest).await? else {
            return Ok(None);
        };
        self.meta
            .link_blob(repo, digest, size, Origin::Cached)
            .await?;
        Ok(Some(LinkedBlob {
            digest: digest.clone(),
            size,
        }))
    }

    /// The size of a blob if the store holds it, in any repository.
    pub async fn stored_blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.blobs.stat(digest).await
    }

    /// Stores a manifest fetched from an upstream, exactly as it came, after checking
    /// its bytes against `digest`. What it references is fetched when clients ask.
    pub async fn put_cached_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<ManifestContent, StoreError> {
        self.ensure_space().await?;
        // Only for the referrers index: an upstream format we cannot parse is still
        // served byte for byte.
        let parsed = manifest::parse(Some(media_type), &bytes).ok();
        let size = bytes.len() as u64;
        let _gc = self.gc_guard_shared().await;
        self.touch([digest]);
        // Verifies the bytes against `digest` before anything is stored.
        self.blobs.put_bytes(digest, bytes).await?;
        self.cached_bytes_added.fetch_add(size, Ordering::Relaxed);
        metrics::get()
            .store_bytes
            .with_label_values(&[Origin::Cached.as_str()])
            .add(size as i64);
        let subject = parsed
            .as_ref()
            .and_then(|p| p.subject.as_ref().map(|s| s.digest.clone()));
        let referrer = parsed
            .as_ref()
            .filter(|_| subject.is_some())
            .map(|p| referrer_entry(p, digest, size));
        let record = ManifestRecord {
            media_type: media_type.to_string(),
            size,
            subject,
            origin: Origin::Cached,
            created_at: unix_now(),
        };
        self.meta
            .put_manifest(repo, digest, &record, None, referrer.as_ref())
            .await?;
        Ok(ManifestContent {
            digest: digest.clone(),
            media_type: record.media_type,
            size,
        })
    }

    /// The metadata store, for the pull-through cache's own records (cached tags and
    /// tag lists); content itself goes through the methods above.
    pub fn meta(&self) -> &dyn MetaStore {
        &*self.meta
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<(), StoreError> {
        self.upload_size(repo, id).await?;
        self.blobs.upload_cancel(id).await?;
        Ok(())
    }

    /// Stores a manifest pushed to `repo` under `reference`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifestOutcome, StoreError> {
        let parsed = manifest::parse(content_type, &bytes).map_err(StoreError::ManifestInvalid)?;
        self.ensure_space().await?;
        let digest = match reference {
            Reference::Digest(expected) => {
                expected
                    .verify(&bytes)
                    .map_err(|actual| StoreError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    })?;
                expected.clone()
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let _gc = self.gc_guard_shared().await;
        self.touch(
            std::iter::once(&digest)
                .chain(parsed.blobs.iter().map(|b| &b.digest))
                .chain(parsed.children.iter().map(|c| &c.digest)),
        );
        for blob in &parsed.blobs {
            // Foreign layers (with `urls`) live elsewhere by design.
            let local = blob.urls.is_empty();
            if local && self.meta.linked_blob(repo, &blob.digest).await?.is_none() {
                return Err(StoreError::ManifestBlobUnknown(blob.digest.clone()));
            }
        }
        for child in &parsed.children {
            if self.meta.manifest(repo, &child.digest).await?.is_none() {
                return Err(StoreError::ManifestBlobUnknown(child.digest.clone()));
            }
        }
        let size = bytes.len() as u64;
        self.blobs.put_bytes(&digest, bytes).await?;
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let referrer = subject
            .as_ref()
            .map(|_| referrer_entry(&parsed, &digest, size));
        let record = ManifestRecord {
            media_type: parsed.media_type,
            size,
            subject: subject.clone(),
            origin: Origin::Pushed,
            created_at: unix_now(),
        };
        let tag = match reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        };
        self.meta
            .put_manifest(repo, &digest, &record, tag, referrer.as_ref())
            .await?;
        Ok(PutManifestOutcome { digest, subject })
    }

    /// Finds a manifest of `repo` by tag or digest.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestContent, StoreError> {
        let unknown = || async {
            if self.meta.repo_exists(repo).await? {
                Err(StoreError::ManifestUnknown(reference.to_string()))
            } else {
                Err(StoreError::NameUnknown(repo.clone()))
            }
        };
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => match self.meta.resolve_tag(repo, tag).await? {
                Some(d) => d,
                None => return unknown().await,
            },
        };
        match self.meta.manifest(repo, &digest).await? {
            Some(record) => {
                self.accessed(&digest);
                Ok(ManifestContent {
                    digest,
                    media_type: record.media_type,
                    size: record.size,
                })
            }
            None => unknown().await,
        }
    }

    /// The exact bytes of a manifest found with [`Registry::manifest`].
    pub async fn manifest_bytes(&self, content: &ManifestContent) -> Result<Bytes, StoreError> {
        if let Some(bytes) = self.manifest_cache.get(&content.digest) {
            return Ok(bytes);
        }
        let bytes = self
            .blobs
            .read_all(&content.digest)
            .await?
            .ok_or_else(|| StoreError::ManifestUnknown(content.digest.to_string()))?;
        self.manifest_cache
            .insert(content.digest.clone(), bytes.clone());
        Ok(bytes)
    }

    /// Deletes a tag, or by digest the manifest with its tags and referrers entry.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), StoreError> {
        let removed = match reference {
            Reference::Tag(tag) => self.meta.delete_tag(repo, tag).await?,
            Reference::Digest(digest) => self.meta.delete_manifest(repo, digest).await?,
        };
        if removed {
            Ok(())
        } else {
            Err(StoreError::ManifestUnknown(reference.to_string()))
        }
    }

    pub async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.meta
            .list_tags(repo, last, limit)
            .await?
            .ok_or_else(|| StoreError::NameUnknown(repo.clone()))
    }

    pub async fn catalog(&self, last: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        self.meta.list_repos(last, limit).await
    }

    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, StoreError> {
        self.meta.referrers(repo, subject).await
    }
}
