//! Filesystem [`BlobStore`]: `blobs/<alg>/<2 hex>/<hex>`, sessions under `uploads/<id>/`.
//!
//! Durability recipe for every blob: write to a file outside `blobs/`, fsync it,
//! verify its digest, rename it into place, fsync the directory. A crash at any step
//! leaves either no blob or a complete, verified one.

use super::{BlobStore, ByteSource, SessionReader, StoreError, StoredBlob, UploadId, UploadInfo};
use crate::oci::digest::{Algorithm, Hasher};
use crate::oci::{Digest, RepoName};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Uploads are written in batches of this size, each on the blocking pool while the
/// next batch arrives from the network.
const WRITE_BATCH: usize = 1 << 20;
/// During an upload, written data is flushed to disk every this many bytes, so the
/// fsync that completes the upload has little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// A file written one batch at a time on the blocking pool, one batch in flight:
/// the caller prepares the next batch while the previous one is written.
struct PipelinedWriter {
    idle: Option<std::fs::File>,
    in_flight: Option<tokio::task::JoinHandle<(std::fs::File, std::io::Result<()>)>>,
    unsynced: u64,
}

impl PipelinedWriter {
    fn new(file: std::fs::File) -> PipelinedWriter {
        PipelinedWriter {
            idle: Some(file),
            in_flight: None,
            unsynced: 0,
        }
    }

    /// Waits for the batch in flight and takes the file back.
    async fn file(&mut self) -> std::io::Result<std::fs::File> {
        if let Some(task) = self.in_flight.take() {
            let (file, result) = task.await.map_err(std::io::Error::other)?;
            self.idle = Some(file);
            result?;
        }
        self.idle
            .take()
            .ok_or_else(|| std::io::Error::other("upload file lost after a failed write"))
    }

    async fn write(&mut self, batch: Bytes) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut file = self.file().await?;
        self.unsynced += batch.len() as u64;
        let sync = self.unsynced >= WRITEBACK_EVERY;
        if sync {
            self.unsynced = 0;
        }
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let result =
                file.write_all(&batch)
                    .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
            (file, result)
        }));
        Ok(())
    }

    /// Waits until every batch is written.
    async fn finish(mut self) -> std::io::Result<()> {
        self.file().await.map(drop)
    }
}

/// Where fsck --repair puts what it takes out of the store, relative to the root.
pub const LOST_FOUND: &str = "lost+found";

/// Bytes read from disk per chunk of a blob being served: bounds memory per download.
const READ_CHUNK: u64 = 256 * 1024;

/// A range of a blob file, read one chunk at a time on the blocking pool, straight
/// into the chunk's buffer (no second copy, unlike an async file wrapper).
struct FileChunks {
    /// `None` while a read is in flight on the blocking pool.
    file: Option<std::fs::File>,
    remaining: u64,
}

#[async_trait]
impl ByteSource for FileChunks {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let want = self.remaining.min(READ_CHUNK);
        let file = self.file.take().ok_or_else(|| {
            StoreError::io("reading blob", std::io::Error::other("earlier read failed"))
        })?;
        let (file, read) = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(want as usize);
            let read = (&file).take(want).read_to_end(&mut buf).map(|_| buf);
            (file, read)
        })
        .await
        .map_err(|e| StoreError::io("reading blob", std::io::Error::other(e)))?;
        self.file = Some(file);
        let buf = read.map_err(|e| StoreError::io("reading blob", e))?;
        if buf.is_empty() {
            return Err(StoreError::io(
                "reading blob",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob ended before its recorded size",
                ),
            ));
        }
        self.remaining -= buf.len() as u64;
        Ok(Some(Bytes::from(buf)))
    }
}

/// An upload session's file, read at any offset. The open handle follows the file
/// when finishing renames it into `blobs/`, so readers never see a gap.
struct SessionFile(Arc<std::fs::File>);

#[async_trait]
impl SessionReader for SessionFile {
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        use std::os::unix::fs::FileExt;
        let file = self.0.clone();
        let len = usize::try_from(len).map_err(|_| {
            StoreError::io("reading upload", std::io::Error::other("read too large"))
        })?;
        blocking("reading upload".into(), move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }
}

/// Running sha256 of an upload's bytes so far, so finishing needs no second read.
/// Lost on restart; then the file is hashed again when the upload finishes.
struct HashProgress {
    hasher: Hasher,
    hashed: u64,
}

/// Per-session state; its async mutex also serialises concurrent PATCHes to one session.
type Session = Arc<tokio::sync::Mutex<Option<HashProgress>>>;

/// Sessions idle this long lose their in-memory hash progress (bounding memory for
/// abandoned uploads); their bytes stay on disk and are hashed again if they finish.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);
/// At most this many sessions keep hash progress in memory at once.
const MAX_TRACKED_SESSIONS: u64 = 100_000;

pub struct FsBlobStore {
    root: PathBuf,
    sessions: moka::sync::Cache<UploadId, Session>,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`. Files left in `tmp/` by a
    /// crash mid-write are removed: nothing refers to them, and they take space.
    pub fn open(root: &Path) -> Result<FsBlobStore, StoreError> {
        for dir in ["blobs", "uploads", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        }
        let tmp = root.join("tmp");
        let leftovers = std::fs::read_dir(&tmp)
            .map_err(|e| StoreError::io(format!("reading {}", tmp.display()), e))?;
        for entry in leftovers.flatten() {
            // Session directories being set up (see upload_start) and files.
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
        // A session whose removal a crash cut short (upload_finish renames `data` into
        // blobs/ and then removes the directory): no client can resume it.
        let uploads = root.join("uploads");
        let sessions = std::fs::read_dir(&uploads)
            .map_err(|e| StoreError::io(format!("reading {}", uploads.display()), e))?;
        for entry in sessions.flatten() {
            let path = entry.path();
            let ours = UploadId::parse(&entry.file_name().to_string_lossy()).is_some();
            if ours
                && path.is_dir()
                && !(path.join("data").is_file() && path.join("repo").is_file())
            {
                let _ = std::fs::remove_dir_all(path);
            }
        }
        Ok(FsBlobStore::open_as_is(root))
    }

    /// Opens a store without creating or tidying anything, so that fsck sees (and
    /// reports) what [`FsBlobStore::open`] would have removed.
    pub fn open_as_is(root: &Path) -> FsBlobStore {
        FsBlobStore {
            root: root.to_path_buf(),
            sessions: moka::sync::Cache::builder()
                .max_capacity(MAX_TRACKED_SESSIONS)
                .time_to_idle(SESSION_IDLE)
                .build(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(blob_relative_path(digest))
    }

    /// What lies under `blobs/`, `uploads/` and `tmp/` that is neither a blob nor a
    /// resumable session: what fsck reports.
    pub async fn strays(&self) -> Result<Vec<Stray>, StoreError> {
        let root = self.root.clone();
        blocking("surveying the store".into(), move || {
            let mut strays = walk_blobs(&root)?.1;
            strays.extend(walk_uploads(&root)?.1);
            strays.extend(walk_tmp(&root)?);
            Ok(strays)
        })
        .await
    }

    /// Moves a file or directory (`path`, relative to the root) to the same path under
    /// `lost+found/`, for an operator to look at, never over an earlier one; returns
    /// where it went, relative to the root.
    pub async fn move_to_lost_found(&self, path: &Path) -> Result<PathBuf, StoreError> {
        let (root, path) = (self.root.clone(), self.inside(path)?);
        let context = format!("moving {} to lost+found", path.display());
        blocking(context, move || {
            let base = Path::new(LOST_FOUND).join(&path);
            let mut dest = base.clone();
            for n in 1.. {
                if !root.join(&dest).exists() {
                    break;
                }
                dest = PathBuf::from(format!("{}.{n}", base.display()));
            }
            let parent = dest.parent().unwrap_or(Path::new(LOST_FOUND));
            std::fs::create_dir_all(root.join(parent))?;
            std::fs::rename(root.join(&path), root.join(&dest))?;
            Ok(dest)
        })
        .await
    }

    /// Deletes a file or directory (`path`, relative to the root).
    pub async fn remove_path(&self, path: &Path) -> Result<(), StoreError> {
        let full = self.root.join(self.inside(path)?);
        blocking(format!("removing {}", path.display()), move || {
            if full.is_dir() {
                std::fs::remove_dir_all(&full)
            } else {
                std::fs::remove_file(&full)
            }
        })
        .await
    }

    /// `path` if it names something inside the root (no `..`, not absolute).
    fn inside(&self, path: &Path) -> Result<PathBuf, StoreError> {
        use std::path::Component;
        if path.components().all(|c| matches!(c, Component::Normal(_))) {
            Ok(path.to_path_buf())
        } else {
            Err(StoreError::io(
                format!("{}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a path inside the data directory",
                ),
            ))
        }
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    fn session(&self, id: &UploadId) -> Session {
        self.sessions.get_with(id.clone(), Session::default)
    }

    fn forget_session(&self, id: &UploadId) {
        self.sessions.invalidate(id);
    }
}

/// Moves a complete, verified file into place under `dest` and makes the rename durable.
/// If `dest` already exists the content is identical (same digest): keep the old one.
fn install(src: &Path, dest: &Path) -> std::io::Result<()> {
    if dest.exists() {
        return std::fs::remove_file(src);
    }
    let parent = dest.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(parent)?;
    std::fs::rename(src, dest)?;
    std::fs::File::open(parent)?.sync_all()
}

/// Hashes a whole file from disk with `algorithm` (after a restart, or for sha512).
fn hash_file(path: &Path, algorithm: Algorithm) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Free bytes for unprivileged writers on the file system holding `path`.
fn available_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string; statvfs fills `stat` on success.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so `stat` is initialised.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

async fn blocking<T: Send + 'static>(
    context: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::io(context.clone(), std::io::Error::other(e)))?
        .map_err(|e| StoreError::io(context, e))
}

/// Unix seconds of a file's last modification.
fn modified_secs(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Entries of a directory that may not exist (yet).
fn entries(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(list) => list.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Where a blob lives, relative to the store's root: `blobs/<alg>/<2 hex>/<hex>`.
pub fn blob_relative_path(digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    Path::new("blobs")
        .join(digest.algorithm().name())
        .join(&hex[..2])
        .join(hex)
}

/// Something in the store's directories that is neither a blob nor an upload session:
/// nothing reads it. `path` is relative to the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub path: PathBuf,
    pub kind: StrayKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrayKind {
    /// Under `blobs/` but not at the path of a digest: never served.
    NotABlob,
    /// Left in `tmp/` by a write that never finished.
    TempFile,
    /// Under `uploads/` but not a session the store can resume; says what is wrong.
    MalformedUpload(&'static str),
}

fn stray(root: &Path, path: &Path, kind: StrayKind) -> Stray {
    Stray {
        path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
        kind,
    }
}

/// Walks `blobs/<alg>/<2 hex>/<hex>`: the blobs, and anything else found there.
fn walk_blobs(root: &Path) -> std::io::Result<(Vec<StoredBlob>, Vec<Stray>)> {
    let mut found = Vec::new();
    let mut strays = Vec::new();
    let mut not_a_blob = |path: &Path| strays.push(stray(root, path, StrayKind::NotABlob));
    for algorithm in entries(&root.join("blobs"))? {
        if !algorithm.file_type()?.is_dir() {
            not_a_blob(&algorithm.path());
            continue;
        }
        let algorithm_name = algorithm.file_name().to_string_lossy().into_owned();
        for prefix in entries(&algorithm.path())? {
            if !prefix.file_type()?.is_dir() {
                not_a_blob(&prefix.path());
                continue;
            }
            let prefix_name = prefix.file_name().to_string_lossy().into_owned();
            for file in entries(&prefix.path())? {
                let name = file.file_name().to_string_lossy().into_owned();
                let digest = format!("{algorithm_name}:{name}")
                    .parse::<Digest>()
                    .ok()
                    .filter(|d| d.hex()[..2] == prefix_name);
                // Removed since the directory was read: not a blob any more.
                let Some(meta) = not_found_is_none(file.metadata())? else {
                    continue;
                };
                match digest {
                    Some(digest) if meta.is_file() => found.push(StoredBlob {
                        digest,
                        size: meta.len(),
                        modified: modified_secs(&meta),
                    }),
                    _ => not_a_blob(&file.path()),
                }
            }
        }
    }
    Ok((found, strays))
}

/// The upload sessions, and what under `uploads/` cannot be one.
fn walk_uploads(root: &Path) -> std::io::Result<(Vec<UploadInfo>, Vec<Stray>)> {
    let mut found = Vec::new();
    let mut strays = Vec::new();
    for entry in entries(&root.join("uploads"))? {
        let path = entry.path();
        let malformed = |why| stray(root, &path, StrayKind::MalformedUpload(why));
        if !entry.file_type()?.is_dir() {
            strays.push(malformed("not a directory"));
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = UploadId::parse(&name).filter(|id| id.as_str() == name) else {
            strays.push(malformed("not named by a session id, a UUID"));
            continue;
        };
        let Some(info) = not_found_is_none(read_upload(&path, id))? else {
            continue;
        };
        if info.repo.is_none() {
            strays.push(malformed("no readable repo file"));
        } else if !path.join("data").is_file() {
            strays.push(malformed("no data file"));
        }
        found.push(info);
    }
    Ok((found, strays))
}

/// Everything in `tmp/`: nothing refers to it.
fn walk_tmp(root: &Path) -> std::io::Result<Vec<Stray>> {
    Ok(entries(&root.join("tmp"))?
        .iter()
        .map(|entry| stray(root, &entry.path(), StrayKind::TempFile))
        .collect())
}

fn read_upload(dir: &Path, id: UploadId) -> std::io::Result<UploadInfo> {
    let repo = std::fs::read_to_string(dir.join("repo"))
        .ok()
        .and_then(|r| RepoName::parse(&r).ok());
    let (size, modified) = match not_found_is_none(std::fs::metadata(dir.join("data")))? {
        Some(meta) => (meta.len(), modified_secs(&meta)),
        None => (0, modified_secs(&std::fs::metadata(dir)?)),
    };
    Ok(UploadInfo {
        id,
        repo,
        size,
        modified,
    })
}

fn not_found_is_none<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let meta = not_found_is_none(tokio::fs::metadata(self.blob_path(digest)).await)
            .map_err(|e| StoreError::io(format!("stat blob {digest}"), e))?;
        Ok(meta.map(|m| m.len()))
    }

    async fn open(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Option<Box<dyn ByteSource>>, StoreError> {
        let path = self.blob_path(digest);
        let opened = blocking(format!("opening blob {digest}"), move || {
            not_found_is_none(std::fs::File::open(path)).and_then(|file| {
                file.map(|mut f| f.seek(std::io::SeekFrom::Start(offset)).map(|_| f))
                    .transpose()
            })
        })
        .await?;
        Ok(opened.map(|file| {
            Box::new(FileChunks {
                file: Some(file),
                remaining: len,
            }) as Box<dyn ByteSource>
        }))
    }

    async fn available_bytes(&self) -> Result<Option<u64>, StoreError> {
        available_bytes(&self.root)
            .map(Some)
            .map_err(|e| StoreError::io(format!("statvfs {}", self.root.display()), e))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let probe = self
            .root
            .join("tmp")
            .join(format!("readyz-{}", UploadId::random().as_str()));
        blocking(format!("writing {}", probe.display()), move || {
            let written = std::fs::File::create(&probe).and_then(|mut file| {
                file.write_all(b"ready")?;
                file.sync_all()
            });
            let removed = std::fs::remove_file(&probe);
            written.and(removed)
        })
        .await
    }

    async fn read_all(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = blocking(format!("reading blob {digest}"), move || {
            not_found_is_none(std::fs::read(path))
        })
        .await?;
        Ok(bytes.map(Bytes::from))
    }

    async fn put_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), StoreError> {
        digest
            .verify(&bytes)
            .map_err(|actual| StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })?;
        let dest = self.blob_path(digest);
        let tmp = self.root.join("tmp").join(UploadId::random().as_str());
        blocking(format!("storing {digest}"), move || {
            if dest.exists() {
                return Ok(());
            }
            let written = std::fs::File::create(&tmp).and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            });
            match written.and_then(|()| install(&tmp, &dest)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // A full disk must not also keep the half-written copy.
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        })
        .await
    }

    async fn upload_start(&self, id: &UploadId, repo: &RepoName) -> Result<(), StoreError> {
        // Set up in tmp/ and renamed into uploads/ whole, so a crash never leaves a
        // session without its record (tmp/ is emptied when the store opens).
        let staging = self.root.join("tmp").join(id.as_str());
        let dir = self.upload_dir(id);
        let repo = repo.to_string();
        blocking("starting upload".into(), move || {
            std::fs::create_dir_all(&staging)?;
            std::fs::write(staging.join("repo"), repo)?;
            std::fs::File::create(staging.join("data"))?;
            std::fs::rename(&staging, &dir)
        })
        .await
    }

    async fn upload_status(&self, id: &UploadId) -> Result<Option<(RepoName, u64)>, StoreError> {
        let dir = self.upload_dir(id);
        let read = async {
            let repo = tokio::fs::read_to_string(dir.join("repo")).await?;
            let size = tokio::fs::metadata(dir.join("data")).await?.len();
            Ok::<_, std::io::Error>((repo, size))
        };
        let found = not_found_is_none(read.await)
            .map_err(|e| StoreError::io("reading upload session", e))?;
        // A session written by us always holds a valid name; anything else is not ours.
        Ok(found.and_then(|(repo, size)| RepoName::parse(&repo).ok().map(|r| (r, size))))
    }

    async fn upload_append(
        &self,
        id: &UploadId,
        offset: Option<u64>,
        body: &mut dyn ByteSource,
    ) -> Result<u64, StoreError> {
        let session = self.session(id);
        let mut progress = session.lock().await;
        let path = self.upload_dir(id).join("data");
        let context = || "appending to upload".to_string();
        let Some(file) =
            not_found_is_none(tokio::fs::OpenOptions::new().append(true).open(&path).await)
                .map_err(|e| StoreError::io(context(), e))?
        else {
            return Err(StoreError::UploadUnknown);
        };
        let mut size = file
            .metadata()
            .await
            .map_err(|e| StoreError::io(context(), e))?
            .len();
        let size_before = size;
        if let Some(requested) = offset {
            if requested != size {
                return Err(StoreError::UploadOffset { size, requested });
            }
        }
        if size == 0 {
            *progress = Some(HashProgress {
                hasher: Hasher::new(Algorithm::Sha256),
                hashed: 0,
            });
        }
        let mut writer = PipelinedWriter::new(file.into_std().await);
        let mut batch = BytesMut::new();
        // The body's own outcome (complete, or broken off by the client).
        let mut body_outcome = Ok(());
        let mut written = Ok(());
        while written.is_ok() {
            let chunk = match body.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    body_outcome = Err(e);
                    break;
                }
            };
            match progress.as_mut() {
                Some(p) if p.hashed == size => {
                    p.hasher.update(&chunk);
                    p.hashed += chunk.len() as u64;
                }
                _ => *progress = None,
            }
            size += chunk.len() as u64;
            batch.extend_from_slice(&chunk);
            if batch.len() >= WRITE_BATCH {
                written = writer.write(batch.split().freeze()).await;
            }
        }
        // Keep what arrived even if the body broke off, so the client can resume.
        if written.is_ok() {
            written = writer.write(batch.freeze()).await;
        }
        if written.is_ok() {
            written = writer.finish().await;
        }
        if let Err(e) = written {
            // Our write failed (a full disk, say): drop this request's bytes, so the
            // session holds what it held before and the client can send the chunk again.
            // The running hash has seen bytes that are gone: hash again at finish.
            *progress = None;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size_before));
            return Err(StoreError::io(context(), e));
        }
        body_outcome.map(|()| size)
    }

    async fn upload_finish(&self, id: &UploadId, expected: &Digest) -> Result<u64, StoreError> {
        let session = self.session(id);
        let progress = session.lock().await.take();
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        let dest = self.blob_path(expected);
        let wanted = expected.clone();
        let expected = expected.clone();
        let result = blocking("finishing upload".into(), move || {
            let file = match std::fs::File::open(&data) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(None)),
                other => other?,
            };
            file.sync_all()?;
            let size = file.metadata()?.len();
            let actual = match progress {
                Some(p) if p.hashed == size && expected.algorithm() == Algorithm::Sha256 => {
                    p.hasher.finish()
                }
                _ => hash_file(&data, expected.algorithm())?,
            };
            if actual != expected {
                std::fs::remove_dir_all(&dir)?;
                return Ok(Err(Some(actual)));
            }
            install(&data, &dest)?;
            std::fs::remove_dir_all(&dir)?;
            Ok(Ok(size))
        })
        .await;
        self.forget_session(id);
        match result? {
            Ok(size) => Ok(size),
            Err(None) => Err(StoreError::UploadUnknown),
            Err(Some(actual)) => Err(StoreError::DigestMismatch {
                expected: wanted,
                actual,
            }),
        }
    }

    async fn upload_cancel(&self, id: &UploadId) -> Result<bool, StoreError> {
        let session = self.session(id);
        let _guard = session.lock().await;
        let dir = self.upload_dir(id);
        let removed = not_found_is_none(tokio::fs::remove_dir_all(&dir).await)
            .map_err(|e| StoreError::io("cancelling upload", e))?;
        self.forget_session(id);
        Ok(removed.is_some())
    }

    async fn upload_reader(
        &self,
        id: &UploadId,
    ) -> Result<Option<Arc<dyn SessionReader>>, StoreError> {
        let path = self.upload_dir(id).join("data");
        let file = blocking("opening upload".into(), move || {
            not_found_is_none(std::fs::File::open(path))
        })
        .await?;
        Ok(file.map(|f| Arc::new(SessionFile(Arc::new(f))) as Arc<dyn SessionReader>))
    }

    async fn list_blobs(&self) -> Result<Vec<StoredBlob>, StoreError> {
        let root = self.root.clone();
        blocking("listing blobs".into(), move || {
            walk_blobs(&root).map(|(blobs, _)| blobs)
        })
        .await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        let removed = not_found_is_none(tokio::fs::remove_file(&path).await)
            .map_err(|e| StoreError::io(format!("deleting blob {digest}"), e))?;
        Ok(removed.is_some())
    }

    async fn list_uploads(&self) -> Result<Vec<UploadInfo>, StoreError> {
        let root = self.root.clone();
        blocking("listing uploads".into(), move || {
            walk_uploads(&root).map(|(uploads, _)| uploads)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opening_removes_sessions_a_crash_left_half_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsBlobStore::open(root).unwrap();
        let repo = RepoName::parse("team/app").unwrap();
        let (kept, finished) = (UploadId::random(), UploadId::random());
        for id in [&kept, &finished] {
            store.upload_start(id, &repo).await.unwrap();
        }
        // upload_finish moved `data` into blobs/ and was killed before removing the rest.
        let half = root.join("uploads").join(finished.as_str());
        std::fs::remove_file(half.join("data")).unwrap();

        let store = FsBlobStore::open(root).unwrap();
        assert!(!half.exists());
        assert_eq!(store.upload_status(&kept).await.unwrap(), Some((repo, 0)));
        assert!(store.strays().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn strays_are_everything_that_is_neither_a_blob_nor_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = FsBlobStore::open(root).unwrap();
        let digest = Digest::sha256_of(b"blob");
        store
            .put_bytes(&digest, Bytes::from_static(b"blob"))
            .await
            .unwrap();
        let session = UploadId::random();
        store
            .upload_start(&session, &RepoName::parse("team/app").unwrap())
            .await
            .unwrap();
        // A blob at the path of another prefix is never found by its digest.
        let misplaced = Path::new("blobs/sha256/00").join(digest.hex());
        std::fs::create_dir_all(root.join("blobs/sha256/00")).unwrap();
        std::fs::write(root.join(&misplaced), b"blob").unwrap();
        std::fs::write(root.join("blobs/sha256/notes.txt"), b"x").unwrap();
        std::fs::write(root.join("tmp/partial"), b"x").unwrap();
        std::fs::create_dir_all(root.join("uploads/not-a-uuid")).unwrap();
        let half = UploadId::random();
        std::fs::create_dir_all(root.join("uploads").join(half.as_str())).unwrap();

        let store = FsBlobStore::open_as_is(root);
        let mut strays = store.strays().await.unwrap();
        strays.sort_by(|a, b| a.path.cmp(&b.path));
        let kinds: Vec<_> = strays.iter().map(|s| (s.path.clone(), s.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (misplaced, StrayKind::NotABlob),
                ("blobs/sha256/notes.txt".into(), StrayKind::NotABlob),
                ("tmp/partial".into(), StrayKind::TempFile),
                (
                    Path::new("uploads").join(half.as_str()),
                    StrayKind::MalformedUpload("no readable repo file")
                ),
                (
                    "uploads/not-a-uuid".into(),
                    StrayKind::MalformedUpload("not named by a session id, a UUID")
                ),
            ]
        );
        let blobs = store.list_blobs().await.unwrap();
        assert_eq!(blobs.len(), 1);
        assert_eq!(blobs[0].digest, digest);
        assert_eq!(store.list_uploads().await.unwrap().len(), 2);

        let moved = store
            .move_to_lost_found(&blob_relative_path(&digest))
            .await
            .unwrap();
        assert_eq!(
            moved,
            Path::new(LOST_FOUND).join(blob_relative_path(&digest))
        );
        assert_eq!(std::fs::read(root.join(&moved)).unwrap(), b"blob");
        assert!(store.stat(&digest).await.unwrap().is_none());
        store
            .remove_path(Path::new("uploads/not-a-uuid"))
            .await
            .unwrap();
        assert!(store.remove_path(Path::new("../outside")).await.is_err());
    }
}
