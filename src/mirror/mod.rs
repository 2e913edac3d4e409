//! The pull-through cache: handlers ask [`Mirror`] for manifests, blobs and tag lists;
//! for a local repository it answers from the store, for a mirrored one it answers
//! from the cache and fills misses from the upstream through the same commit path as
//! a push (verify, fsync, rename, link), recording the content as cached.
//!
//! - `policy`: pure decisions (which upstream, which cached record, freshness, health);
//! - `upstream`: the HTTP client of one upstream (tokens, redirects, timeouts);
//! - `inflight`: one upstream fetch per blob, streamed to every waiter as it grows.

pub mod inflight;
pub mod policy;
pub mod prefill;
pub mod upstream;

use crate::config::MirrorConfig;
use crate::metrics::{self, CacheResult};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::{
    unix_now, ByteSource, CachedTag, CachedTagList, LinkedBlob, ManifestContent, Origin, Page,
    Registry, StoreError, UploadId,
};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use inflight::{BlobFetches, Fetch};
use policy::{Accept, Selection};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use upstream::{Upstream, UpstreamError, UpstreamRequest};

/// A broken blob download is resumed with a Range request at most this many times,
/// and at most this many times in a row without receiving a byte.
const MAX_RESUMES: u32 = 50;
const MAX_STALLED_RESUMES: u32 = 5;
/// The pause before the n-th resume in a row without progress is n times this.
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Blob downloads running at once, over all upstreams; more wait for a slot.
const MAX_CONCURRENT_FETCHES: usize = 64;
/// Upstream bytes gathered into one write while more are already waiting.
const WRITE_BATCH: usize = 1 << 20;
/// Pages of an upstream tag list followed (of up to 1000 tags each).
const MAX_TAG_PAGES: usize = 100;
const TAG_PAGE_SIZE: usize = 1000;
const MAX_TAG_PAGE_BYTES: usize = 4 << 20;

/// Where a request's repository is served from.
pub enum Target {
    Local(RepoName),
    Mirrored(Mirrored),
}

pub struct Mirrored {
    upstream: Arc<Upstream>,
    /// The repository's name upstream.
    pub remote: RepoName,
    /// The repository the cache keeps it in (`docker.io/library/nginx`).
    pub cached_as: RepoName,
}

impl Target {
    /// The repository in the store that holds this target's content.
    pub fn stored_as(&self) -> &RepoName {
        match self {
            Target::Local(name) => name,
            Target::Mirrored(m) => &m.cached_as,
        }
    }

    pub fn upstream_name(&self) -> Option<&str> {
        match self {
            Target::Local(_) => None,
            Target::Mirrored(m) => Some(&m.upstream.name),
        }
    }
}

/// What is missing, for 404s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Manifest,
    Blob,
    Repository,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("{detail}")]
    NotFound { missing: Missing, detail: String },
    /// The failure of a blob fetch, shared by every client waiting for it.
    #[error("{0}")]
    Shared(Arc<MirrorError>),
}

/// A blob as a handler serves it.
pub enum Blob {
    Stored(LinkedBlob),
    /// Being fetched; streams as it arrives.
    Arriving {
        fetch: Arc<Fetch>,
        size: u64,
    },
    /// Known upstream, not cached (the answer to a HEAD).
    Remote {
        digest: Digest,
        size: u64,
    },
}

impl Blob {
    pub fn size(&self) -> u64 {
        match self {
            Blob::Stored(b) => b.size,
            Blob::Arriving { size, .. } | Blob::Remote { size, .. } => *size,
        }
    }
}

/// A manifest served from the cache, counted as a hit.
fn hit(content: ManifestContent) -> ManifestContent {
    metrics::cache_outcome("manifest", CacheResult::Hit);
    content
}

fn hit_blob(blob: LinkedBlob) -> Blob {
    metrics::cache_outcome("blob", CacheResult::Hit);
    Blob::Stored(blob)
}

/// One lock per key, so concurrent misses for the same manifest or tag list cause a
/// single upstream request: the others wait, then find it cached.
#[derive(Default)]
struct KeyLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = {
            let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if table.len() > 4096 {
                table.retain(|_, weak| weak.strong_count() > 0);
            }
            match table.get(&key).and_then(Weak::upgrade) {
                Some(mutex) => mutex,
                None => {
                    let mutex = Arc::new(tokio::sync::Mutex::new(()));
                    table.insert(key, Arc::downgrade(&mutex));
                    mutex
                }
            }
        };
        mutex.lock_owned().await
    }
}

pub struct Mirror {
    registry: Arc<Registry>,
    config: MirrorConfig,
    upstreams: Vec<Arc<Upstream>>,
    blob_fetches: BlobFetches,
    fetch_slots: tokio::sync::Semaphore,
    locks: KeyLocks,
    max_manifest_bytes: usize,
}

/// `application/x; charset=utf-8` -> `application/x`.
fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Several chunks handed to the store as one append.
struct Chunks(VecDeque<Bytes>);

#[async_trait]
impl ByteSource for Chunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.pop_front())
    }
}

impl Mirror {
    pub fn new(
        registry: Arc<Registry>,
        config: &MirrorConfig,
        max_manifest_bytes: usize,
    ) -> Result<Arc<Mirror>, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(Upstream::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Mirror {
            registry,
            config: config.clone(),
            upstreams,
            blob_fetches: BlobFetches::default(),
            fetch_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
            locks: KeyLocks::default(),
            max_manifest_bytes,
        }))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// Where `repo` (as the request names it, with its `ns` parameter) is served from.
    pub fn target(&self, repo: &RepoName, ns: Option<&str>) -> Target {
        match policy::select(&self.config, repo, ns) {
            Selection::Local => Target::Local(repo.clone()),
            Selection::Upstream {
                upstream,
                remote,
                cached_as,
            } => Target::Mirrored(Mirrored {
                upstream: self.upstreams[upstream].clone(),
                remote,
                cached_as,
            }),
        }
    }

    /// Fails at once in offline mode, before any request is built.
    fn online(&self, m: &Mirrored) -> Result<(), UpstreamError> {
        if self.config.offline {
            Err(UpstreamError::Offline {
                upstream: m.upstream.name.clone(),
            })
        } else {
            Ok(())
        }
    }

    fn not_found(m: &Mirrored, missing: Missing, what: impl std::fmt::Display) -> MirrorError {
        MirrorError::NotFound {
            missing,
            detail: format!(
                "{what} is unknown to upstream {} ({})",
                m.upstream.name, m.remote
            ),
        }
    }

    /// Statuses other than success: 404 is an answer about the content; 401/403 after
    /// the token dance mean the repository is missing or private.
    fn refusal(m: &Mirrored, missing: Missing, what: &str, status: StatusCode) -> MirrorError {
        match status {
            StatusCode::NOT_FOUND => Self::not_found(m, missing, what),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => MirrorError::NotFound {
                missing: Missing::Repository,
                detail: format!(
                    "upstream {} refused access to {} ({status}): the repository does not exist or is private; \
                     for a private one set username and a password in its [[upstream]] section",
                    m.upstream.name, m.remote
                ),
            },
            other => m.upstream.invalid(format!("{other} for {what}")).into(),
        }
    }

    /// The response if it is a success, else what its status means (see `refusal`).
    fn successful(
        m: &Mirrored,
        response: reqwest::Response,
        missing: Missing,
        what: &str,
    ) -> Result<reqwest::Response, MirrorError> {
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(Self::refusal(m, missing, what, response.status()))
        }
    }

    // ---- manifests -------------------------------------------------------------

    /// A manifest by tag or digest. Mirrored: by digest from the cache forever, by
    /// tag from the cache while fresh, then revalidated with a HEAD (stale-if-error).
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<ManifestContent, MirrorError> {
        let m = match target {
            Target::Local(name) => return Ok(self.registry.manifest(name, reference).await?),
            Target::Mirrored(m) => m,
        };
        match reference {
            Reference::Digest(digest) => self.manifest_by_digest(m, digest, accept).await,
            Reference::Tag(tag) => self.manifest_by_tag(m, tag, accept).await,
        }
    }

    async fn cached_manifest(
        &self,
        m: &Mirrored,
        digest: &Digest,
    ) -> Result<Option<ManifestContent>, StoreError> {
        match self
            .registry
            .manifest(&m.cached_as, &Reference::Digest(digest.clone()))
            .await
        {
            Ok(content) => Ok(Some(content)),
            Err(StoreError::ManifestUnknown(_) | StoreError::NameUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn manifest_by_digest(
        &self,
        m: &Mirrored,
        digest: &Digest,
        accept: &Accept,
    ) -> Result<ManifestContent, MirrorError> {
        if let Some(content) = self.cached_manifest(m, digest).await? {
            return Ok(hit(content));
        }
        self.online(m)?;
        let _one_fetch = self
            .locks
            .lock(format!("manifest {} {digest}", m.cached_as))
            .await;
        if let Some(content) = self.cached_manifest(m, digest).await? {
            return Ok(hit(content));
        }
        self.fetch_manifest(m, &digest.to_string(), Some(digest), accept)
            .await
    }

    /// GETs a manifest (counts against Docker Hub's pull limit) and caches it.
    async fn fetch_manifest(
        &self,
        m: &Mirrored,
        reference: &str,
        expected: Option<&Digest>,
        accept: &Accept,
    ) -> Result<ManifestContent, MirrorError> {
        let mut request =
            UpstreamRequest::new(Method::GET, &m.remote, &format!("manifests/{reference}"));
        request.accept = accept.upstream_values();
        let response = Self::successful(
            m,
            m.upstream.send(request).await?,
            Missing::Manifest,
            &format!("manifest {reference}"),
        )?;
        let invalid = |reason: String| MirrorError::from(m.upstream.invalid(reason));
        let content_type = header(&response, "content-type").map(str::to_string);
        let announced = header(&response, "docker-content-digest")
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|e| invalid(format!("Docker-Content-Digest: {e}")))?;
        let bytes = m
            .upstream
            .read_small(
                response,
                self.max_manifest_bytes,
                &format!("manifest {reference}"),
            )
            .await?;
        let media_type = match content_type {
            Some(t) if !t.is_empty() && t != "application/json" => t,
            // Old registries label manifests application/json: the document says.
            _ => crate::oci::manifest::parse(None, &bytes)
                .map(|p| p.media_type)
                .map_err(|e| invalid(format!("manifest {reference} without a media type: {e}")))?,
        };
        let digest = expected
            .cloned()
            .or(announced)
            .unwrap_or_else(|| Digest::sha256_of(&bytes));
        let stored = self
            .registry
            .put_cached_manifest(&m.cached_as, &digest, &media_type, bytes)
            .await;
        if let Ok(content) = &stored {
            metrics::cache_outcome("manifest", CacheResult::Miss);
            tracing::info!(upstream = %m.upstream.name, repository = %m.remote, reference, digest = %content.digest, "manifest cached");
        }
        match stored {
            Err(StoreError::DigestMismatch { expected, actual }) => Err(invalid(format!(
                "manifest {reference} should have digest {expected} but has {actual}; nothing was cached"
            ))),
            other => Ok(other?),
        }
    }

    async fn manifest_by_tag(
        &self,
        m: &Mirrored,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<ManifestContent, MirrorError> {
        let meta = self.registry.meta();
        let now = unix_now();
        let records = meta.cached_tags(&m.cached_as, tag).await?;
        if let Some(record) = policy::pick(&records, accept) {
            if self.config.offline || policy::is_fresh(record.checked_at, now, m.upstream.tag_ttl) {
                if let Some(content) = self.cached_manifest(m, &record.digest).await? {
                    return Ok(hit(content));
                }
            }
        }
        self.online(m)?;
        let _one_check = self.locks.lock(format!("tag {} {tag}", m.cached_as)).await;
        // Someone may have revalidated while this request waited.
        let records = meta.cached_tags(&m.cached_as, tag).await?;
        let record = policy::pick(&records, accept).cloned();
        if let Some(record) = &record {
            if policy::is_fresh(record.checked_at, unix_now(), m.upstream.tag_ttl) {
                if let Some(content) = self.cached_manifest(m, &record.digest).await? {
                    return Ok(hit(content));
                }
            }
        }
        let refreshed = match &record {
            Some(_) => self.revalidate(m, tag, accept).await,
            None => self.fetch_tag(m, tag, accept).await,
        };
        match (refreshed, record) {
            (Ok(content), _) => Ok(content),
            // Stale-if-error: the upstream failed, the cache still knows the tag.
            (Err(MirrorError::Upstream(e)), Some(record)) => {
                match self.cached_manifest(m, &record.digest).await? {
                    Some(content) => {
                        metrics::cache_outcome("manifest", CacheResult::Stale);
                        tracing::warn!(repository = %m.cached_as, %tag, error = %e, "serving a stale tag");
                        Ok(content)
                    }
                    None => Err(MirrorError::Upstream(e)),
                }
            }
            (Err(e), _) => Err(e),
        }
    }

    /// First fetch of a tag: GET it and remember what it resolved to.
    async fn fetch_tag(
        &self,
        m: &Mirrored,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<ManifestContent, MirrorError> {
        let content = self
            .fetch_manifest(m, &tag.to_string(), None, accept)
            .await?;
        self.remember_tag(m, tag, &content).await?;
        Ok(content)
    }

    async fn remember_tag(
        &self,
        m: &Mirrored,
        tag: &Tag,
        content: &ManifestContent,
    ) -> Result<(), StoreError> {
        let record = CachedTag {
            // The key for `Accept` matching: the bare type, without parameters.
            media_type: bare_media_type(&content.media_type).to_string(),
            digest: content.digest.clone(),
            checked_at: unix_now(),
        };
        self.registry
            .meta()
            .put_cached_tag(&m.cached_as, tag, &record)
            .await
    }

    /// A stale tag: HEAD upstream (free under Docker Hub's pull limit); fetch the
    /// manifest only if the tag now names one the cache lacks.
    async fn revalidate(
        &self,
        m: &Mirrored,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<ManifestContent, MirrorError> {
        let mut request =
            UpstreamRequest::new(Method::HEAD, &m.remote, &format!("manifests/{tag}"));
        request.accept = accept.upstream_values();
        let response = m.upstream.send(request).await?;
        if response.status() == StatusCode::NOT_FOUND {
            // The tag is gone upstream: so it is here.
            self.registry
                .meta()
                .remove_cached_tag(&m.cached_as, tag)
                .await?;
            return Err(Self::not_found(
                m,
                Missing::Manifest,
                format_args!("tag {tag}"),
            ));
        }
        let response = Self::successful(m, response, Missing::Manifest, &format!("tag {tag}"))?;
        // Unchanged (the usual case) or moved to a manifest cached already: no GET.
        let digest: Option<Digest> =
            header(&response, "docker-content-digest").and_then(|d| d.parse().ok());
        let cached = match &digest {
            Some(d) => self.cached_manifest(m, d).await?,
            None => None,
        };
        let content = match cached {
            Some(content) => {
                metrics::cache_outcome("manifest", CacheResult::Revalidated);
                content
            }
            None => match digest {
                Some(d) => {
                    self.fetch_manifest(m, &d.to_string(), Some(&d), accept)
                        .await?
                }
                // No digest in the HEAD answer: only a GET can tell.
                None => {
                    self.fetch_manifest(m, &tag.to_string(), None, accept)
                        .await?
                }
            },
        };
        self.remember_tag(m, tag, &content).await?;
        Ok(content)
    }

    // ---- tag lists -------------------------------------------------------------

    /// Tags after `last`, at most `limit`. Mirrored: the upstream's list, cached for
    /// the tag TTL and served stale when the upstream fails.
    pub async fn tags(
        &self,
        target: &Target,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Page, MirrorError> {
        let m = match target {
            Target::Local(name) => return Ok(self.registry.tags(name, last, limit).await?),
            Target::Mirrored(m) => m,
        };
        let tags = self.tag_list(m).await?;
        let after = tags.iter().filter(|t| last.is_none_or(|l| t.as_str() > l));
        let items: Vec<String> = after.clone().take(limit).cloned().collect();
        let more = after.count() > items.len();
        Ok(Page { items, more })
    }

    async fn tag_list(&self, m: &Mirrored) -> Result<Vec<String>, MirrorError> {
        let meta = self.registry.meta();
        let cached = meta.cached_tag_list(&m.cached_as).await?;
        let fresh = |list: &CachedTagList| {
            policy::is_fresh(list.fetched_at, unix_now(), m.upstream.tag_ttl)
        };
        if let Some(list) = cached.as_ref().filter(|l| fresh(l) || self.config.offline) {
            metrics::cache_outcome("tag_list", CacheResult::Hit);
            return Ok(list.tags.clone());
        }
        let fetched = match self.online(m) {
            Ok(()) => {
                let _one_fetch = self.locks.lock(format!("tags {}", m.cached_as)).await;
                match meta.cached_tag_list(&m.cached_as).await? {
                    Some(list) if fresh(&list) => {
                        metrics::cache_outcome("tag_list", CacheResult::Hit);
                        Ok(list.tags)
                    }
                    _ => self.fetch_tag_list(m).await.inspect(|_| {
                        metrics::cache_outcome("tag_list", CacheResult::Miss);
                    }),
                }
            }
            Err(offline) => Err(MirrorError::Upstream(offline)),
        };
        match fetched {
            Ok(tags) => Ok(tags),
            Err(MirrorError::Upstream(e)) => {
                // Stale-if-error: the last list, else the tags this cache holds.
                let tags = match cached {
                    Some(list) => list.tags,
                    None => match meta.cached_tag_names(&m.cached_as).await? {
                        known if known.is_empty() => return Err(MirrorError::Upstream(e)),
                        known => known,
                    },
                };
                metrics::cache_outcome("tag_list", CacheResult::Stale);
                tracing::warn!(repository = %m.cached_as, error = %e, "serving a stale tag list");
                Ok(tags)
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_tag_list(&self, m: &Mirrored) -> Result<Vec<String>, MirrorError> {
        let invalid = |reason: String| MirrorError::from(m.upstream.invalid(reason));
        let mut tags = Vec::new();
        let mut path = format!("/v2/{}/tags/list?n={TAG_PAGE_SIZE}", m.remote);
        for _ in 0..MAX_TAG_PAGES {
            let request = UpstreamRequest {
                path,
                ..UpstreamRequest::new(Method::GET, &m.remote, "")
            };
            let response = Self::successful(
                m,
                m.upstream.send(request).await?,
                Missing::Repository,
                "tag list",
            )?;
            let next = header(&response, "link")
                .and_then(policy::next_link)
                .map(str::to_string);
            let body = m
                .upstream
                .read_small(response, MAX_TAG_PAGE_BYTES, "tag list")
                .await?;
            #[derive(serde::Deserialize)]
            struct TagPage {
                tags: Option<Vec<String>>,
            }
            let page: TagPage =
                serde_json::from_slice(&body).map_err(|e| invalid(format!("tag list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                // Only paths on the same upstream are followed.
                Some(next) if next.starts_with("/v2/") => path = next,
                _ => break,
            }
        }
        tags.sort();
        tags.dedup();
        let list = CachedTagList {
            tags,
            fetched_at: unix_now(),
        };
        self.registry
            .meta()
            .put_cached_tag_list(&m.cached_as, &list)
            .await?;
        Ok(list.tags)
    }

    // ---- blobs -----------------------------------------------------------------

    /// A blob the target may serve. Mirrored and not cached: a HEAD asks the upstream
    /// with a HEAD; a GET joins (or starts) the one upstream fetch of that digest.
    pub async fn blob(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        head: bool,
    ) -> Result<Blob, MirrorError> {
        let m = match target {
            Target::Local(name) => {
                return Ok(Blob::Stored(self.registry.linked_blob(name, digest).await?))
            }
            Target::Mirrored(m) => m,
        };
        match self.registry.linked_blob(&m.cached_as, digest).await {
            Ok(blob) => return Ok(hit_blob(blob)),
            Err(StoreError::BlobUnknown(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.online(m)?;
        if head {
            // From the fetch under way for this repository, else a HEAD upstream.
            let size = match self
                .blob_fetches
                .get(digest)
                .filter(|f| f.started_for() == &m.cached_as)
            {
                Some(fetch) => fetch.size().await.map_err(MirrorError::Shared)?,
                None => self.head_blob(m, digest).await?,
            };
            return Ok(Blob::Remote {
                digest: digest.clone(),
                size,
            });
        }
        if self.registry.stored_blob_size(digest).await?.is_some() {
            // Stored for another repository: linked once this one's upstream has it.
            let size = self.head_blob(m, digest).await?;
            if let Some(blob) = self.registry.link_cached_blob(&m.cached_as, digest).await? {
                return Ok(hit_blob(blob));
            }
            return Ok(Blob::Remote {
                digest: digest.clone(),
                size,
            });
        }
        let started = std::sync::atomic::AtomicBool::new(false);
        let start = |fetch: Arc<Fetch>| {
            started.store(true, std::sync::atomic::Ordering::Relaxed);
            let mirror = self.clone();
            let upstream = m.upstream.clone();
            let remote = m.remote.clone();
            let cached_as = m.cached_as.clone();
            tokio::spawn(async move { mirror.fill(upstream, remote, cached_as, fetch).await });
        };
        let fetch = match self
            .blob_fetches
            .join_or_start(digest, &m.cached_as, false, start)
        {
            Some(fetch) => fetch,
            // Another repository's fetch of the same digest: join once confirmed.
            None => {
                self.head_blob(m, digest).await?;
                self.blob_fetches
                    .join_or_start(digest, &m.cached_as, true, start)
                    .ok_or_else(|| StoreError::BlobUnknown(digest.clone()))?
            }
        };
        let size = fetch.size().await.map_err(MirrorError::Shared)?;
        let outcome = match started.into_inner() {
            true => CacheResult::Miss,
            false => CacheResult::Coalesced,
        };
        metrics::cache_outcome("blob", outcome);
        Ok(Blob::Arriving { fetch, size })
    }

    async fn head_blob(&self, m: &Mirrored, digest: &Digest) -> Result<u64, MirrorError> {
        let request = UpstreamRequest::new(Method::HEAD, &m.remote, &format!("blobs/{digest}"));
        let response = Self::successful(
            m,
            m.upstream.send(request).await?,
            Missing::Blob,
            &format!("blob {digest}"),
        )?;
        // Not `content_length()`: for a HEAD that is the (empty) body's length.
        header(&response, "content-length")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| {
                MirrorError::from(
                    m.upstream
                        .invalid(format!("HEAD of blob {digest} without Content-Length")),
                )
            })
    }

    /// Opens `len` bytes from `offset` of a blob found with [`Mirror::blob`].
    pub async fn open_blob(
        &self,
        blob: &Blob,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn ByteSource>, StoreError> {
        match blob {
            Blob::Stored(b) => self.registry.open_blob(b, offset, len).await,
            Blob::Arriving { fetch, .. } => Ok(Box::new(fetch.stream(offset, len))),
            Blob::Remote { digest, .. } => Err(StoreError::BlobUnknown(digest.clone())),
        }
    }

    /// The fetch task: downloads, verifies and commits one blob, then links every
    /// repository that asked for it meanwhile. Runs detached, so a client that goes
    /// away does not cancel it for the others.
    async fn fill(
        self: Arc<Self>,
        upstream: Arc<Upstream>,
        remote: RepoName,
        cached_as: RepoName,
        fetch: Arc<Fetch>,
    ) {
        let mut completion = Completion {
            fetches: &self.blob_fetches,
            fetch: &fetch,
            finished: false,
        };
        let started = std::time::Instant::now();
        let slot = tokio::time::timeout(upstream.response_timeout(), self.fetch_slots.acquire());
        let result = match slot.await {
            Ok(Ok(_slot)) => self.download(&upstream, &remote, &cached_as, &fetch).await,
            _ => Err(MirrorError::Upstream(UpstreamError::Busy {
                upstream: upstream.name.clone(),
            })),
        };
        let repos = completion.complete();
        let outcome = match result {
            Ok(()) => {
                tracing::info!(
                    upstream = %upstream.name,
                    repository = %remote,
                    digest = %fetch.digest,
                    bytes = fetch.progress().landed,
                    secs = started.elapsed().as_secs_f64(),
                    "blob cached"
                );
                for repo in repos.iter().filter(|r| **r != cached_as) {
                    // The blob is verified and stored; a missing link only costs that
                    // repository a HEAD upstream on its next request.
                    if let Err(e) = self.registry.link_cached_blob(repo, &fetch.digest).await {
                        tracing::warn!(repository = %repo, digest = %fetch.digest, error = %e, "linking a cached blob failed");
                    }
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream.name, repository = %remote, digest = %fetch.digest, error = %e, "blob fetch failed; nothing cached");
                Err(e)
            }
        };
        fetch.finish(outcome);
    }

    async fn download(
        &self,
        upstream: &Arc<Upstream>,
        remote: &RepoName,
        cached_as: &RepoName,
        fetch: &Fetch,
    ) -> Result<(), MirrorError> {
        let id = self.registry.start_upload(cached_as).await?;
        let result = self
            .download_into(upstream, remote, cached_as, fetch, &id)
            .await;
        if result.is_err() {
            let _ = self.registry.cancel_upload(cached_as, &id).await;
        }
        result
    }

    async fn download_into(
        &self,
        upstream: &Arc<Upstream>,
        remote: &RepoName,
        cached_as: &RepoName,
        fetch: &Fetch,
        id: &UploadId,
    ) -> Result<(), MirrorError> {
        let invalid = |reason: String| MirrorError::from(upstream.invalid(reason));
        let digest = &fetch.digest;
        fetch.set_reader(self.registry.upload_reader(cached_as, id).await?);
        let mut received = 0u64;
        let mut size: Option<u64> = None;
        let (mut resumes, mut stalls) = (0, 0);
        loop {
            let mut request = UpstreamRequest::new(Method::GET, remote, &format!("blobs/{digest}"));
            request.from_byte = (received > 0).then_some(received);
            let received_before = received;
            let attempt = self
                .download_attempt(
                    upstream,
                    request,
                    &mut received,
                    &mut size,
                    fetch,
                    cached_as,
                    id,
                )
                .await;
            match attempt {
                Ok(()) => break,
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Broken(reason))
                    if resumes < MAX_RESUMES && stalls < MAX_STALLED_RESUMES =>
                {
                    resumes += 1;
                    if received == received_before {
                        stalls += 1;
                        tokio::time::sleep(RESUME_PAUSE * stalls).await;
                    } else {
                        stalls = 0;
                    }
                    tracing::info!(upstream = %upstream.name, %digest, received, resumes, %reason, "blob download broke; resuming");
                }
                Err(Attempt::Broken(reason)) => {
                    return Err(invalid(format!(
                        "blob {digest} broke off after {received} bytes and {resumes} resumes: {reason}"
                    )))
                }
            }
        }
        match self
            .registry
            .finish_upload(cached_as, id, digest, Origin::Cached)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::DigestMismatch { actual, .. }) => Err(invalid(format!(
                "blob {digest} arrived with digest {actual}; nothing was cached"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// One GET (or ranged GET) of a blob, appending what arrives. A broken body is
    /// `Broken` (resume); an answer that cannot be right is `Fatal`.
    #[allow(clippy::too_many_arguments)]
    async fn download_attempt(
        &self,
        upstream: &Arc<Upstream>,
        request: UpstreamRequest<'_>,
        received: &mut u64,
        size: &mut Option<u64>,
        fetch: &Fetch,
        cached_as: &RepoName,
        id: &UploadId,
    ) -> Result<(), Attempt> {
        let fatal = |reason: String| Attempt::Fatal(upstream.invalid(reason).into());
        let digest = fetch.digest.clone();
        let resuming = request.from_byte.is_some();
        let mut response = match upstream.send(request).await {
            Ok(r) => r,
            // A first attempt that fails is the answer; a resume may try again when
            // the trouble was the connection, not a verdict (down, rate-limited).
            Err(
                e @ (UpstreamError::Unreachable { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Status { .. }),
            ) if resuming => return Err(Attempt::Broken(e.to_string())),
            Err(e) => return Err(Attempt::Fatal(e.into())),
        };
        let status = response.status();
        // Bytes at the start of the body that are already stored (a 200 to a Range).
        let mut skip = 0u64;
        let total = match status {
            StatusCode::OK => {
                skip = *received;
                response.content_length()
            }
            StatusCode::PARTIAL_CONTENT if resuming => {
                let range = header(&response, "content-range").unwrap_or("");
                match crate::api::range::parse_response_content_range(range) {
                    Some((r, total)) if r.start == *received => total,
                    _ => {
                        return Err(fatal(format!(
                            "resume of blob {digest} got Content-Range {range:?}"
                        )))
                    }
                }
            }
            other => {
                let missing = MirrorError::NotFound {
                    missing: Missing::Blob,
                    detail: format!("blob {digest} is unknown to upstream {}", upstream.name),
                };
                return Err(match other {
                    StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        Attempt::Fatal(missing)
                    }
                    _ => fatal(format!("{other} for blob {digest}")),
                });
            }
        };
        match (*size, total) {
            (None, Some(total)) => {
                *size = Some(total);
                fetch.set_size(total);
            }
            (Some(known), Some(total)) if known != total => {
                return Err(fatal(format!(
                    "blob {digest} changed size from {known} to {total}"
                )))
            }
            _ => {}
        }
        loop {
            let mut batch = VecDeque::new();
            let mut batched = 0usize;
            let mut ended = false;
            let mut broken = None;
            // Wait for one chunk, then take whatever else is already there.
            let mut first = true;
            while batched < WRITE_BATCH {
                let next = if first {
                    first = false;
                    Ok(response.chunk().await)
                } else {
                    tokio::time::timeout(std::time::Duration::ZERO, response.chunk()).await
                };
                match next {
                    Ok(Ok(Some(mut chunk))) => {
                        if skip > 0 {
                            let n = skip.min(chunk.len() as u64);
                            skip -= n;
                            chunk = chunk.slice(n as usize..);
                        }
                        batched += chunk.len();
                        if !chunk.is_empty() {
                            batch.push_back(chunk);
                        }
                    }
                    Ok(Ok(None)) => {
                        ended = true;
                        break;
                    }
                    Ok(Err(e)) => {
                        broken = Some(upstream::describe(e));
                        break;
                    }
                    Err(_nothing_ready) => break,
                }
            }
            if batched > 0 {
                let appended = self
                    .registry
                    .append_upload(cached_as, id, Some(*received), &mut Chunks(batch))
                    .await
                    .map_err(|e| Attempt::Fatal(e.into()))?;
                *received = appended;
                fetch.landed(appended);
            }
            if size.is_some_and(|s| *received > s) {
                return Err(fatal(format!(
                    "blob {digest} is longer than the {} bytes announced",
                    size.unwrap_or(0)
                )));
            }
            if let Some(reason) = broken {
                return Err(Attempt::Broken(reason));
            }
            if ended {
                return match *size {
                    Some(s) if *received < s => Err(Attempt::Broken(format!(
                        "body ended after {} of {s} bytes",
                        *received
                    ))),
                    _ => Ok(()),
                };
            }
        }
    }
}

/// Takes a fetch out of the in-flight table exactly once; if the task ends early (a
/// panic, a runtime shutting down), it also fails the fetch, so no waiter waits forever.
struct Completion<'a> {
    fetches: &'a BlobFetches,
    fetch: &'a Arc<Fetch>,
    finished: bool,
}

impl Completion<'_> {
    fn complete(&mut self) -> Vec<RepoName> {
        self.finished = true;
        self.fetches.complete(self.fetch)
    }
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.fetches.complete(self.fetch);
            self.fetch.finish(Err(MirrorError::Store(StoreError::io(
                "fetching from upstream",
                std::io::Error::other("the fetch task stopped"),
            ))));
        }
    }
}

enum Attempt {
    Broken(String),
    Fatal(MirrorError),
}
