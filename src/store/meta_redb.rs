//! [`MetaStore`] on redb, an embedded transactional key-value store.
//!
//! Tables use tuple keys so that one repository's entries are contiguous and sorted:
//! listing tags or referrers is a range scan, never a directory walk. Every method is
//! one transaction, committed durably before it returns.

use super::{
    unix_now, CachedTag, CachedTagEntry, CachedTagList, LinkEntry, ManifestEntry, ManifestRecord,
    MetaSnapshot, MetaStore, Origin, Page, ReferrerEntry, Removal, StoreError, TagEntry,
};
use crate::oci::manifest::Descriptor;
use crate::oci::{Digest, RepoName, Tag};
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// repository -> (): every repository that holds anything.
const REPOS: TableDefinition<&str, ()> = TableDefinition::new("repos");
/// (repository, blob digest) -> size: the blobs a repository may serve.
const BLOB_LINKS: TableDefinition<(&str, &str), u64> = TableDefinition::new("blob_links");
/// (repository, manifest digest) -> ManifestRecord as JSON.
const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
/// (repository, tag) -> manifest digest.
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// (repository, subject digest, referrer digest) -> referrer Descriptor as JSON.
const REFERRERS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("referrers");
/// (repository, blob digest) -> (): the blob links the pull-through cache made.
const CACHED_LINKS: TableDefinition<(&str, &str), ()> = TableDefinition::new("cached_links");
/// (repository, tag, media type) -> CachedTag as JSON: mirrored tags.
const CACHED_TAGS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("cached_tags");
/// repository -> CachedTagList as JSON: mirrored tag lists.
const CACHED_TAG_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("cached_tag_lists");
/// (repository, blob digest) -> unix seconds the link was made (garbage collection's
/// grace period). Beside BLOB_LINKS rather than in it, so stores written before it open.
const LINK_TIMES: TableDefinition<(&str, &str), u64> = TableDefinition::new("blob_link_times");
/// (repository, tag) -> unix seconds the tag was last set (retention rules).
const TAG_TIMES: TableDefinition<(&str, &str), u64> = TableDefinition::new("tag_times");
/// blob or manifest digest -> unix seconds of its last read, flushed in batches.
const ACCESS_TIMES: TableDefinition<&str, u64> = TableDefinition::new("access_times");

/// redb's page cache. Its default (1 GiB) would grow to the whole database while a
/// collection reads every table; the hot pages of the request path fit in far less,
/// and the OS page cache holds the rest.
const CACHE_BYTES: usize = 16 << 20;

pub struct RedbMetaStore {
    db: Arc<Database>,
}

fn meta_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        // Keep the I/O error whole, so a full disk is reported as one.
        redb::Error::Io(io) => StoreError::io("metadata store", io),
        other => StoreError::Meta(other.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Meta(format!("corrupt record: {e}"))
}

/// Opens (creating if needed) a redb file with a page cache of `cache_bytes`; another
/// process holding it is [`StoreError::InUse`] (redb allows one opener).
pub fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            e => StoreError::Meta(format!(
                "opening {}: {}",
                path.display(),
                redb::Error::from(e)
            )),
        })
}

impl RedbMetaStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<RedbMetaStore, StoreError> {
        let db = open_database(path, CACHE_BYTES)?;
        let txn = db.begin_write().map_err(meta_err)?;
        {
            txn.open_table(REPOS).map_err(meta_err)?;
            txn.open_table(BLOB_LINKS).map_err(meta_err)?;
            txn.open_table(MANIFESTS).map_err(meta_err)?;
            txn.open_table(TAGS).map_err(meta_err)?;
            txn.open_table(REFERRERS).map_err(meta_err)?;
            txn.open_table(CACHED_LINKS).map_err(meta_err)?;
            txn.open_table(CACHED_TAGS).map_err(meta_err)?;
            txn.open_table(CACHED_TAG_LISTS).map_err(meta_err)?;
            txn.open_table(LINK_TIMES).map_err(meta_err)?;
            txn.open_table(TAG_TIMES).map_err(meta_err)?;
            txn.open_table(ACCESS_TIMES).map_err(meta_err)?;
        }
        txn.commit().map_err(meta_err)?;
        Ok(RedbMetaStore { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool: redb calls block on disk I/O.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Meta(format!("metadata task failed: {e}")))?
    }

    /// Runs `f` in one write transaction and commits it.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(meta_err)?;
            let value = f(&txn)?;
            txn.commit().map_err(meta_err)?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` in one read transaction, on the calling thread: reads are served from
    /// redb's page cache in microseconds, while a hop to the blocking pool would cost two
    /// context switches (profiled: 40% of a manifest HEAD). Writes, which fsync, still go
    /// to the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        f(&self.db.begin_read().map_err(meta_err)?)
    }
}

/// The (media type, record JSON) entries of one mirrored tag.
fn cached_tag_entries(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    repo: &str,
    tag: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut entries = Vec::new();
    for entry in table.range((repo, tag, "")..).map_err(meta_err)? {
        let (key, value) = entry.map_err(meta_err)?;
        let (r, t, media_type) = key.value();
        if r != repo || t != tag {
            break;
        }
        entries.push((media_type.to_string(), value.value().to_vec()));
    }
    Ok(entries)
}

/// Takes one page from sorted `names`, skipping `last` itself.
fn paginate(
    names: impl Iterator<Item = Result<String, StoreError>>,
    last: Option<&str>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut items = Vec::new();
    for name in names {
        let name = name?;
        if last == Some(name.as_str()) {
            continue;
        }
        if items.len() == limit {
            return Ok(Page {
                items,
                more: limit > 0,
            });
        }
        items.push(name);
    }
    Ok(Page { items, more: false })
}

#[async_trait]
impl MetaStore for RedbMetaStore {
    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        origin: Origin,
    ) -> Result<(), StoreError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |txn| {
            txn.open_table(REPOS)
                .map_err(meta_err)?
                .insert(repo.as_str(), ())
                .map_err(meta_err)?;
            let key = (repo.as_str(), digest.as_str());
            let mut links = txn.open_table(BLOB_LINKS).map_err(meta_err)?;
            let existed = links.insert(key, size).map_err(meta_err)?.is_some();
            if !existed {
                txn.open_table(LINK_TIMES)
                    .map_err(meta_err)?
                    .insert(key, unix_now())
                    .map_err(meta_err)?;
            }
            let mut cached = txn.open_table(CACHED_LINKS).map_err(meta_err)?;
            match origin {
                // A blob pushed (or mounted) earlier stays pushed.
                Origin::Cached if !existed => {
                    cached.insert(key, ()).map_err(meta_err)?;
                }
                Origin::Cached => {}
                Origin::Pushed => {
                    cached.remove(key).map_err(meta_err)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, StoreError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |txn| {
            let links = txn.open_table(BLOB_LINKS).map_err(meta_err)?;
            let size = links
                .get((repo.as_str(), digest.as_str()))
                .map_err(meta_err)?;
            Ok(size.map(|v| v.value()))
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StoreError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |txn| remove_link(txn, &repo, &digest))
            .await
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        record: &ManifestRecord,
        tag: Option<&Tag>,
        referrer: Option<&Descriptor>,
    ) -> Result<(), StoreError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        let tag = tag.map(|t| t.to_string());
        let record_json = serde_json::to_vec(record).map_err(json_err)?;
        let subject = record.subject.as_ref().map(|s| s.to_string());
        let referrer_json = referrer
            .map(serde_json::to_vec)
            .transpose()
            .map_err(json_err)?;
        self.write(move |txn| {
            txn.open_table(REPOS)
                .map_err(meta_err)?
                .insert(repo.as_str(), ())
                .map_err(meta_err)?;
            let mut manifests = txn.open_table(MANIFESTS).map_err(meta_err)?;
            manifests
                .insert((repo.as_str(), digest.as_str()), record_json.as_slice())
                .map_err(meta_err)?;
            if let Some(tag) = &tag {
                let mut tags = txn.open_table(TAGS).map_err(meta_err)?;
                tags.insert((repo.as_str(), tag.as_str()), digest.as_str())
                    .map_err(meta_err)?;
                txn.open_table(TAG_TIMES)
                    .map_err(meta_err)?
                    .insert((repo.as_str(), tag.as_str()), unix_now())
                    .map_err(meta_err)?;
            }
            if let (Some(subject), Some(json)) = (&subject, &referrer_json) {
                let mut referrers = txn.open_table(REFERRERS).map_err(meta_err)?;
                referrers
                    .insert(
                        (repo.as_str(), subject.as_str(), digest.as_str()),
                        json.as_slice(),
                    )
                    .map_err(meta_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, StoreError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |txn| {
            let manifests = txn.open_table(MANIFESTS).map_err(meta_err)?;
            let found = manifests
                .get((repo.as_str(), digest.as_str()))
                .map_err(meta_err)?;
            found
                .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                .transpose()
        })
        .await
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StoreError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |txn| remove_manifest(txn, &repo, &digest))
            .await
    }

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.read(move |txn| {
            let tags = txn.open_table(TAGS).map_err(meta_err)?;
            let found = tags.get((repo.as_str(), tag.as_str())).map_err(meta_err)?;
            found
                .map(|v| {
                    v.value()
                        .parse()
                        .map_err(|e| StoreError::Meta(format!("corrupt tag: {e}")))
                })
                .transpose()
        })
        .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, StoreError> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.write(move |txn| remove_tag(txn, &repo, &tag)).await
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        let repo = repo.to_string();
        let last = last.map(str::to_string);
        self.read(move |txn| {
            let repos = txn.open_table(REPOS).map_err(meta_err)?;
            if repos.get(repo.as_str()).map_err(meta_err)?.is_none() {
                return Ok(None);
            }
            let tags = txn.open_table(TAGS).map_err(meta_err)?;
            let start = (repo.as_str(), last.as_deref().unwrap_or(""));
            let names = tags
                .range(start..)
                .map_err(meta_err)?
                .map_while(|entry| match entry {
                    Ok((key, _)) => {
                        let (r, tag) = key.value();
                        (r == repo).then(|| Ok(tag.to_string()))
                    }
                    Err(e) => Some(Err(meta_err(e))),
                });
            paginate(names, last.as_deref(), limit).map(Some)
        })
        .await
    }

    async fn list_repos(&self, last: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let last = last.map(str::to_string);
        self.read(move |txn| {
            let repos = txn.open_table(REPOS).map_err(meta_err)?;
            let start = last.as_deref().unwrap_or("");
            let names = repos.range(start..).map_err(meta_err)?.map(|entry| {
                entry
                    .map(|(key, _)| key.value().to_string())
                    .map_err(meta_err)
            });
            paginate(names, last.as_deref(), limit)
        })
        .await
    }

    async fn repo_exists(&self, repo: &RepoName) -> Result<bool, StoreError> {
        let repo = repo.to_string();
        self.read(move |txn| {
            let repos = txn.open_table(REPOS).map_err(meta_err)?;
            Ok(repos.get(repo.as_str()).map_err(meta_err)?.is_some())
        })
        .await
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, StoreError> {
        let (repo, subject) = (repo.to_string(), subject.to_string());
        self.read(move |txn| {
            let referrers = txn.open_table(REFERRERS).map_err(meta_err)?;
            let mut found = Vec::new();
            let start = (repo.as_str(), subject.as_str(), "");
            for entry in referrers.range(start..).map_err(meta_err)? {
                let (key, value) = entry.map_err(meta_err)?;
                let (r, s, _) = key.value();
                if r != repo || s != subject {
                    break;
                }
                found.push(serde_json::from_slice(value.value()).map_err(json_err)?);
            }
            Ok(found)
        })
        .await
    }

    async fn cached_tags(&self, repo: &RepoName, tag: &Tag) -> Result<Vec<CachedTag>, StoreError> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.read(move |txn| {
            let table = txn.open_table(CACHED_TAGS).map_err(meta_err)?;
            cached_tag_entries(&table, &repo, &tag)?
                .into_iter()
                .map(|(_, json)| serde_json::from_slice(&json).map_err(json_err))
                .collect()
        })
        .await
    }

    async fn put_cached_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        record: &CachedTag,
    ) -> Result<(), StoreError> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        let media_type = record.media_type.clone();
        let json = serde_json::to_vec(record).map_err(json_err)?;
        self.write(move |txn| {
            txn.open_table(REPOS)
                .map_err(meta_err)?
                .insert(repo.as_str(), ())
                .map_err(meta_err)?;
            txn.open_table(CACHED_TAGS)
                .map_err(meta_err)?
                .insert(
                    (repo.as_str(), tag.as_str(), media_type.as_str()),
                    json.as_slice(),
                )
                .map_err(meta_err)?;
            Ok(())
        })
        .await
    }

    async fn remove_cached_tag(&self, repo: &RepoName, tag: &Tag) -> Result<(), StoreError> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.write(move |txn| {
            let mut table = txn.open_table(CACHED_TAGS).map_err(meta_err)?;
            for (media_type, _) in cached_tag_entries(&table, &repo, &tag)? {
                table
                    .remove((repo.as_str(), tag.as_str(), media_type.as_str()))
                    .map_err(meta_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn cached_tag_names(&self, repo: &RepoName) -> Result<Vec<String>, StoreError> {
        let repo = repo.to_string();
        self.read(move |txn| {
            let table = txn.open_table(CACHED_TAGS).map_err(meta_err)?;
            let mut names: Vec<String> = Vec::new();
            for entry in table.range((repo.as_str(), "", "")..).map_err(meta_err)? {
                let (key, _) = entry.map_err(meta_err)?;
                let (r, tag, _) = key.value();
                if r != repo {
                    break;
                }
                if names.last().map(String::as_str) != Some(tag) {
                    names.push(tag.to_string());
                }
            }
            Ok(names)
        })
        .await
    }

    async fn cached_tag_list(&self, repo: &RepoName) -> Result<Option<CachedTagList>, StoreError> {
        let repo = repo.to_string();
        self.read(move |txn| {
            let table = txn.open_table(CACHED_TAG_LISTS).map_err(meta_err)?;
            let found = table.get(repo.as_str()).map_err(meta_err)?;
            found
                .map(|v| serde_json::from_slice(v.value()).map_err(json_err))
                .transpose()
        })
        .await
    }

    async fn put_cached_tag_list(
        &self,
        repo: &RepoName,
        list: &CachedTagList,
    ) -> Result<(), StoreError> {
        let repo = repo.to_string();
        let json = serde_json::to_vec(list).map_err(json_err)?;
        self.write(move |txn| {
            txn.open_table(CACHED_TAG_LISTS)
                .map_err(meta_err)?
                .insert(repo.as_str(), json.as_slice())
                .map_err(meta_err)?;
            Ok(())
        })
        .await
    }

    async fn snapshot_begun(
        &self,
        begun: tokio::sync::oneshot::Sender<()>,
    ) -> Result<MetaSnapshot, StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(meta_err)?;
            let _ = begun.send(());
            snapshot(&txn)
        })
        .await
    }

    async fn remove_records(&self, removals: Vec<Removal>) -> Result<usize, StoreError> {
        if removals.is_empty() {
            return Ok(0);
        }
        self.write(move |txn| {
            let mut removed = 0;
            for removal in &removals {
                if remove_record(txn, removal)? {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn record_access(&self, accessed: Vec<(Digest, u64)>) -> Result<(), StoreError> {
        if accessed.is_empty() {
            return Ok(());
        }
        self.write(move |txn| {
            let mut table = txn.open_table(ACCESS_TIMES).map_err(meta_err)?;
            for (digest, at) in &accessed {
                table
                    .insert(digest.to_string().as_str(), at)
                    .map_err(meta_err)?;
            }
            Ok(())
        })
        .await
    }
}

/// Removes a manifest record, its referrers entry, the tags that name it and the
/// mirrored tag records that name it; `false` if there was no record.
fn remove_manifest(
    txn: &redb::WriteTransaction,
    repo: &str,
    digest: &str,
) -> Result<bool, StoreError> {
    let mut manifests = txn.open_table(MANIFESTS).map_err(meta_err)?;
    let Some(removed) = manifests.remove((repo, digest)).map_err(meta_err)? else {
        return Ok(false);
    };
    let record: ManifestRecord = serde_json::from_slice(removed.value()).map_err(json_err)?;
    if let Some(subject) = record.subject {
        let subject = subject.to_string();
        let mut referrers = txn.open_table(REFERRERS).map_err(meta_err)?;
        referrers
            .remove((repo, subject.as_str(), digest))
            .map_err(meta_err)?;
    }
    let mut tags = txn.open_table(TAGS).map_err(meta_err)?;
    let mut pointing = Vec::new();
    for entry in tags.range((repo, "")..).map_err(meta_err)? {
        let (key, value) = entry.map_err(meta_err)?;
        let (r, tag) = key.value();
        if r != repo {
            break;
        }
        if value.value() == digest {
            pointing.push(tag.to_string());
        }
    }
    let mut tag_times = txn.open_table(TAG_TIMES).map_err(meta_err)?;
    for tag in pointing {
        tags.remove((repo, tag.as_str())).map_err(meta_err)?;
        tag_times.remove((repo, tag.as_str())).map_err(meta_err)?;
    }
    let mut cached = txn.open_table(CACHED_TAGS).map_err(meta_err)?;
    let mut naming = Vec::new();
    for entry in cached.range((repo, "", "")..).map_err(meta_err)? {
        let (key, value) = entry.map_err(meta_err)?;
        let (r, tag, media_type) = key.value();
        if r != repo {
            break;
        }
        let record: CachedTag = serde_json::from_slice(value.value()).map_err(json_err)?;
        if record.digest.to_string() == digest {
            naming.push((tag.to_string(), media_type.to_string()));
        }
    }
    for (tag, media_type) in naming {
        cached
            .remove((repo, tag.as_str(), media_type.as_str()))
            .map_err(meta_err)?;
    }
    Ok(true)
}

fn remove_link(txn: &redb::WriteTransaction, repo: &str, digest: &str) -> Result<bool, StoreError> {
    let key = (repo, digest);
    let removed = txn
        .open_table(BLOB_LINKS)
        .map_err(meta_err)?
        .remove(key)
        .map_err(meta_err)?
        .is_some();
    txn.open_table(CACHED_LINKS)
        .map_err(meta_err)?
        .remove(key)
        .map_err(meta_err)?;
    txn.open_table(LINK_TIMES)
        .map_err(meta_err)?
        .remove(key)
        .map_err(meta_err)?;
    Ok(removed)
}

fn remove_tag(txn: &redb::WriteTransaction, repo: &str, tag: &str) -> Result<bool, StoreError> {
    let removed = txn
        .open_table(TAGS)
        .map_err(meta_err)?
        .remove((repo, tag))
        .map_err(meta_err)?
        .is_some();
    txn.open_table(TAG_TIMES)
        .map_err(meta_err)?
        .remove((repo, tag))
        .map_err(meta_err)?;
    Ok(removed)
}

/// Removes one record (see [`MetaStore::remove_records`]); `false` if it was not there.
fn remove_record(txn: &redb::WriteTransaction, removal: &Removal) -> Result<bool, StoreError> {
    match removal {
        Removal::Link { repo, digest } => remove_link(txn, repo.as_str(), &digest.to_string()),
        Removal::Tag { repo, tag, digest } => {
            let current = txn
                .open_table(TAGS)
                .map_err(meta_err)?
                .get((repo.as_str(), tag.as_str()))
                .map_err(meta_err)?
                .map(|v| v.value().to_string());
            if current != Some(digest.to_string()) {
                return Ok(false);
            }
            remove_tag(txn, repo.as_str(), tag.as_str())
        }
        Removal::Manifest { repo, digest } => Ok(txn
            .open_table(MANIFESTS)
            .map_err(meta_err)?
            .remove((repo.as_str(), digest.to_string().as_str()))
            .map_err(meta_err)?
            .is_some()),
        Removal::Referrer {
            repo,
            subject,
            referrer,
        } => {
            let (subject, referrer) = (subject.to_string(), referrer.to_string());
            Ok(txn
                .open_table(REFERRERS)
                .map_err(meta_err)?
                .remove((repo.as_str(), subject.as_str(), referrer.as_str()))
                .map_err(meta_err)?
                .is_some())
        }
        Removal::CachedTag {
            repo,
            tag,
            media_type,
        } => Ok(txn
            .open_table(CACHED_TAGS)
            .map_err(meta_err)?
            .remove((repo.as_str(), tag.as_str(), media_type.as_str()))
            .map_err(meta_err)?
            .is_some()),
        Removal::Access { digest } => Ok(txn
            .open_table(ACCESS_TIMES)
            .map_err(meta_err)?
            .remove(digest.to_string().as_str())
            .map_err(meta_err)?
            .is_some()),
    }
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Meta(format!("corrupt {what} {value:?} in the metadata store"))
}

fn repo_of(s: &str) -> Result<RepoName, StoreError> {
    RepoName::parse(s).map_err(|_| corrupt("repository name", s))
}

fn digest_of(s: &str) -> Result<Digest, StoreError> {
    s.parse().map_err(|_| corrupt("digest", s))
}

fn tag_of(s: &str) -> Result<Tag, StoreError> {
    Tag::parse(s).map_err(|_| corrupt("tag", s))
}

/// Reads every table into memory (see [`MetaSnapshot`]).
fn snapshot(txn: &redb::ReadTransaction) -> Result<MetaSnapshot, StoreError> {
    let mut snap = MetaSnapshot::default();
    for entry in txn
        .open_table(REPOS)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        snap.repos
            .push(repo_of(entry.map_err(meta_err)?.0.value())?);
    }
    let cached = txn.open_table(CACHED_LINKS).map_err(meta_err)?;
    let times = txn.open_table(LINK_TIMES).map_err(meta_err)?;
    for entry in txn
        .open_table(BLOB_LINKS)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        let (key, size) = entry.map_err(meta_err)?;
        let (repo, digest) = key.value();
        let origin = match cached.get((repo, digest)).map_err(meta_err)? {
            Some(_) => Origin::Cached,
            None => Origin::Pushed,
        };
        let linked_at = times.get((repo, digest)).map_err(meta_err)?;
        snap.links.push(LinkEntry {
            repo: repo_of(repo)?,
            digest: digest_of(digest)?,
            size: size.value(),
            origin,
            linked_at: linked_at.map_or(0, |t| t.value()),
        });
    }
    for entry in txn
        .open_table(MANIFESTS)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        let (key, value) = entry.map_err(meta_err)?;
        let (repo, digest) = key.value();
        snap.manifests.push(ManifestEntry {
            repo: repo_of(repo)?,
            digest: digest_of(digest)?,
            record: serde_json::from_slice(value.value()).map_err(json_err)?,
        });
    }
    let tag_times = txn.open_table(TAG_TIMES).map_err(meta_err)?;
    for entry in txn
        .open_table(TAGS)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        let (key, value) = entry.map_err(meta_err)?;
        let (repo, tag) = key.value();
        let tagged_at = tag_times.get((repo, tag)).map_err(meta_err)?;
        snap.tags.push(TagEntry {
            repo: repo_of(repo)?,
            tag: tag_of(tag)?,
            digest: digest_of(value.value())?,
            tagged_at: tagged_at.map_or(0, |t| t.value()),
        });
    }
    for entry in txn
        .open_table(REFERRERS)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        let (key, _) = entry.map_err(meta_err)?;
        let (repo, subject, referrer) = key.value();
        snap.referrers.push(ReferrerEntry {
            repo: repo_of(repo)?,
            subject: digest_of(subject)?,
            referrer: digest_of(referrer)?,
        });
    }
    for entry in txn
        .open_table(CACHED_TAGS)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        let (key, value) = entry.map_err(meta_err)?;
        let (repo, tag, _) = key.value();
        snap.cached_tags.push(CachedTagEntry {
            repo: repo_of(repo)?,
            tag: tag_of(tag)?,
            record: serde_json::from_slice(value.value()).map_err(json_err)?,
        });
    }
    for entry in txn
        .open_table(ACCESS_TIMES)
        .map_err(meta_err)?
        .iter()
        .map_err(meta_err)?
    {
        let (key, value) = entry.map_err(meta_err)?;
        snap.accessed.push((digest_of(key.value())?, value.value()));
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    /// A layer, an image manifest and a signature of it.
    fn digests() -> (Digest, Digest, Digest) {
        (
            Digest::sha256_of(b"layer"),
            Digest::sha256_of(b"manifest"),
            Digest::sha256_of(b"sig"),
        )
    }

    fn record(subject: Option<Digest>) -> ManifestRecord {
        ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 8,
            subject,
            origin: Origin::Pushed,
            created_at: 7,
        }
    }

    /// The referrers entry of manifest `digest`.
    fn referrer(digest: &Digest) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.clone(),
            size: 3,
            artifact_type: None,
            urls: Vec::new(),
            annotations: None,
            platform: None,
        }
    }

    #[tokio::test]
    async fn snapshot_holds_every_record_with_its_times() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let (app, cache) = (name("team/app"), name("docker.io/library/nginx"));
        let (layer, manifest, sig) = digests();
        meta.link_blob(&app, &layer, 5, Origin::Pushed)
            .await
            .unwrap();
        meta.link_blob(&cache, &layer, 5, Origin::Cached)
            .await
            .unwrap();
        let tag = Tag::parse("1.0").unwrap();
        meta.put_manifest(&app, &manifest, &record(None), Some(&tag), None)
            .await
            .unwrap();
        meta.put_manifest(
            &app,
            &sig,
            &record(Some(manifest.clone())),
            None,
            Some(&referrer(&sig)),
        )
        .await
        .unwrap();

        let snap = meta.snapshot().await.unwrap();
        assert_eq!(snap.repos, vec![cache.clone(), app.clone()]);
        let origins: Vec<_> = snap.links.iter().map(|l| (&l.repo, l.origin)).collect();
        assert_eq!(
            origins,
            vec![(&cache, Origin::Cached), (&app, Origin::Pushed)]
        );
        assert!(snap.links.iter().all(|l| l.linked_at > 0 && l.size == 5));
        assert_eq!(snap.manifests.len(), 2);
        assert_eq!(snap.tags.len(), 1);
        assert_eq!((&snap.tags[0].tag, &snap.tags[0].digest), (&tag, &manifest));
        assert!(snap.tags[0].tagged_at > 0);
        assert_eq!(
            snap.referrers,
            vec![ReferrerEntry {
                repo: app.clone(),
                subject: manifest.clone(),
                referrer: sig.clone()
            }]
        );

        // Deleting forgets the times with the records.
        meta.delete_manifest(&app, &manifest).await.unwrap();
        meta.unlink_blob(&app, &layer).await.unwrap();
        let snap = meta.snapshot().await.unwrap();
        assert!(snap.tags.is_empty());
        assert_eq!(snap.links.len(), 1);
        let txn = meta.db.begin_read().unwrap();
        assert!(txn.open_table(TAG_TIMES).unwrap().is_empty().unwrap());
        assert_eq!(txn.open_table(LINK_TIMES).unwrap().len().unwrap(), 1);
    }

    #[tokio::test]
    async fn remove_records_takes_exactly_what_is_named_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let repo = name("team/app");
        let (layer, manifest, sig) = digests();
        meta.link_blob(&repo, &layer, 5, Origin::Cached)
            .await
            .unwrap();
        let record = record(Some(manifest.clone()));
        let tag = Tag::parse("1.0").unwrap();
        meta.put_manifest(&repo, &sig, &record, Some(&tag), Some(&referrer(&sig)))
            .await
            .unwrap();
        let cached = CachedTag {
            media_type: record.media_type.clone(),
            digest: sig.clone(),
            checked_at: 1,
        };
        meta.put_cached_tag(&repo, &tag, &cached).await.unwrap();

        let removed = meta
            .remove_records(vec![
                Removal::Link {
                    repo: repo.clone(),
                    digest: layer.clone(),
                },
                Removal::Tag {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: sig.clone(),
                },
                Removal::Referrer {
                    repo: repo.clone(),
                    subject: manifest.clone(),
                    referrer: sig.clone(),
                },
                Removal::CachedTag {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    media_type: cached.media_type.clone(),
                },
                // Not there: counted out, not an error.
                Removal::Manifest {
                    repo: repo.clone(),
                    digest: manifest.clone(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(removed, 4);
        let snap = meta.snapshot().await.unwrap();
        assert!(snap.links.is_empty() && snap.tags.is_empty());
        assert!(snap.referrers.is_empty() && snap.cached_tags.is_empty());
        // The manifest record was not named, so it stays.
        assert_eq!(snap.manifests.len(), 1);
        let txn = meta.db.begin_read().unwrap();
        assert!(txn.open_table(TAG_TIMES).unwrap().is_empty().unwrap());
        assert!(txn.open_table(LINK_TIMES).unwrap().is_empty().unwrap());
        assert!(txn.open_table(CACHED_LINKS).unwrap().is_empty().unwrap());
    }
}
