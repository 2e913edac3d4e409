//! The in-flight table: at most one upstream fetch per blob digest, however many
//! clients ask at once (the model is pingora's cache lock, `pingora-cache/src/lock.rs`).
//!
//! The fetch writes into an upload session while the digest is computed; every
//! waiter, including one that joins late or asks for a range, streams from that
//! growing file. The last byte of the blob is held back until the digest has been
//! verified, so a client can never complete a download of wrong content: on a
//! mismatch or a truncated upstream every waiter gets an error instead.

use super::MirrorError;
use crate::oci::{Digest, RepoName};
use crate::store::{ByteSource, SessionReader, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

/// Bytes read from the growing file per chunk sent to a client.
const READ_CHUNK: u64 = 256 * 1024;

#[derive(Debug, Clone)]
pub enum State {
    Running,
    /// Verified and committed to the store.
    Done,
    /// Why the fetch failed; nothing was stored.
    Failed(Arc<MirrorError>),
}

#[derive(Debug, Clone)]
pub struct Progress {
    /// The blob's size once the upstream said it.
    pub size: Option<u64>,
    /// Bytes written to the session so far (readable by waiters).
    pub landed: u64,
    pub state: State,
}

/// One blob on its way from an upstream.
pub struct Fetch {
    pub digest: Digest,
    progress: watch::Sender<Progress>,
    reader: OnceLock<Arc<dyn SessionReader>>,
    started_for: RepoName,
    /// Repositories that asked for the blob while it was arriving, so each is
    /// linked to it when it is committed.
    repos: Mutex<Vec<RepoName>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fetch {
    fn new(digest: &Digest, repo: &RepoName) -> Fetch {
        Fetch {
            digest: digest.clone(),
            progress: watch::Sender::new(Progress {
                size: None,
                landed: 0,
                state: State::Running,
            }),
            reader: OnceLock::new(),
            started_for: repo.clone(),
            repos: Mutex::new(vec![repo.clone()]),
        }
    }

    /// The repository whose upstream the blob is being fetched from.
    pub fn started_for(&self) -> &RepoName {
        &self.started_for
    }

    /// Set once, before any byte lands.
    pub fn set_reader(&self, reader: Arc<dyn SessionReader>) {
        let _ = self.reader.set(reader);
    }

    pub fn set_size(&self, size: u64) {
        self.progress.send_modify(|p| p.size = Some(size));
    }

    pub fn landed(&self, total: u64) {
        self.progress.send_modify(|p| p.landed = total);
    }

    pub fn finish(&self, outcome: Result<(), MirrorError>) {
        self.progress.send_modify(|p| {
            p.state = match outcome {
                Ok(()) => {
                    p.size.get_or_insert(p.landed);
                    State::Done
                }
                Err(reason) => State::Failed(Arc::new(reason)),
            }
        });
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until the blob's size is known (the upstream's response head).
    pub async fn size(&self) -> Result<u64, Arc<MirrorError>> {
        let mut rx = self.progress.subscribe();
        loop {
            {
                let p = rx.borrow_and_update();
                if let State::Failed(reason) = &p.state {
                    return Err(reason.clone());
                }
                if let Some(size) = p.size {
                    return Ok(size);
                }
            }
            rx.changed().await.map_err(|_| abandoned())?;
        }
    }

    /// Waits until the blob is verified and committed, or the fetch failed.
    pub async fn finished(&self) -> Result<(), Arc<MirrorError>> {
        let mut rx = self.progress.subscribe();
        loop {
            match &rx.borrow_and_update().state {
                State::Done => return Ok(()),
                State::Failed(reason) => return Err(reason.clone()),
                State::Running => {}
            }
            rx.changed().await.map_err(|_| abandoned())?;
        }
    }

    /// `len` bytes from `offset` (within the size), as they arrive.
    pub fn stream(self: &Arc<Self>, offset: u64, len: u64) -> GrowingBlob {
        GrowingBlob {
            fetch: self.clone(),
            progress: self.progress.subscribe(),
            position: offset,
            end: offset.saturating_add(len),
        }
    }
}

/// Bytes of a stream ending at `end` that may be sent: everything written, except the
/// stream's own last byte, which waits until the whole blob is verified. So no range,
/// not even an empty one, completes with unverified content.
pub fn readable_bytes(progress: &Progress, end: u64) -> u64 {
    match progress.state {
        State::Done => progress.landed.min(end),
        _ => progress.landed.min(end.saturating_sub(1)),
    }
}

/// A waiter's view of a blob being fetched.
pub struct GrowingBlob {
    fetch: Arc<Fetch>,
    progress: watch::Receiver<Progress>,
    position: u64,
    end: u64,
}

/// The fetch task ended without saying how (it cannot: it always finishes).
fn abandoned() -> Arc<MirrorError> {
    Arc::new(MirrorError::Store(fetch_failed(
        "the upstream fetch was abandoned",
    )))
}

fn fetch_failed(reason: impl std::fmt::Display) -> StoreError {
    StoreError::io(
        "fetching from upstream",
        std::io::Error::other(reason.to_string()),
    )
}

#[async_trait]
impl ByteSource for GrowingBlob {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        loop {
            let (readable, verified) = {
                let p = self.progress.borrow_and_update();
                if let State::Failed(reason) = &p.state {
                    return Err(fetch_failed(reason));
                }
                (readable_bytes(&p, self.end), matches!(p.state, State::Done))
            };
            if self.position < readable {
                let reader =
                    self.fetch.reader.get().ok_or_else(|| {
                        fetch_failed("bytes landed before the session was readable")
                    })?;
                let len = (readable - self.position).min(READ_CHUNK);
                let bytes = reader.read_at(self.position, len).await?;
                self.position += len;
                return Ok(Some(bytes));
            }
            if verified {
                // Verified means every byte landed: the stream is at its end.
                return if self.position >= self.end {
                    Ok(None)
                } else {
                    Err(fetch_failed("the blob ended before the range"))
                };
            }
            if self.progress.changed().await.is_err() {
                return Err(fetch_failed("the upstream fetch was abandoned"));
            }
        }
    }
}

/// Blob fetches in flight, by digest.
#[derive(Default)]
pub struct BlobFetches {
    table: Mutex<HashMap<Digest, Arc<Fetch>>>,
}

impl BlobFetches {
    /// The fetch of `digest` in flight, if any, without joining it.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fetch>> {
        lock(&self.table).get(digest).cloned()
    }

    /// Joins the fetch of `digest` for `repo`, or registers a new one and hands it to
    /// `start` (which must see it through to [`BlobFetches::complete`]). A fetch that
    /// another repository started is joined only if `repo`'s own upstream `confirmed`
    /// it has the blob (`None` otherwise): a name must not reach content its upstream
    /// does not serve.
    pub fn join_or_start(
        &self,
        digest: &Digest,
        repo: &RepoName,
        confirmed: bool,
        start: impl FnOnce(Arc<Fetch>),
    ) -> Option<Arc<Fetch>> {
        let mut table = lock(&self.table);
        if let Some(fetch) = table.get(digest) {
            let mut repos = lock(&fetch.repos);
            if repos.contains(repo) {
                return Some(fetch.clone());
            }
            if !confirmed {
                return None;
            }
            repos.push(repo.clone());
            return Some(fetch.clone());
        }
        let fetch = Arc::new(Fetch::new(digest, repo));
        table.insert(digest.clone(), fetch.clone());
        drop(table);
        start(fetch.clone());
        Some(fetch)
    }

    /// Takes the fetch out of the table; returns every repository that joined it.
    /// Nobody can join after this, so the list is complete.
    pub fn complete(&self, fetch: &Fetch) -> Vec<RepoName> {
        lock(&self.table).remove(&fetch.digest);
        std::mem::take(&mut *lock(&fetch.repos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Memory(Mutex<Vec<u8>>);

    #[async_trait]
    impl SessionReader for Memory {
        async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, StoreError> {
            let data = lock(&self.0);
            let (start, end) = (offset as usize, (offset + len) as usize);
            assert!(end <= data.len(), "read past the written bytes");
            Ok(Bytes::copy_from_slice(&data[start..end]))
        }
    }

    fn setup() -> (Arc<Fetch>, Arc<Memory>) {
        let name = RepoName::parse("docker.io/library/x").unwrap();
        let fetch = Arc::new(Fetch::new(&Digest::sha256_of(b"abcdef"), &name));
        let memory = Arc::new(Memory(Mutex::new(Vec::new())));
        fetch.set_reader(memory.clone());
        (fetch, memory)
    }

    fn write(fetch: &Fetch, memory: &Memory, bytes: &[u8]) {
        let mut data = lock(&memory.0);
        data.extend_from_slice(bytes);
        fetch.landed(data.len() as u64);
    }

    #[test]
    fn the_last_byte_of_every_stream_waits_for_verification() {
        let progress = |landed, state| Progress {
            size: Some(6),
            landed,
            state,
        };
        assert_eq!(readable_bytes(&progress(4, State::Running), 6), 4);
        assert_eq!(readable_bytes(&progress(6, State::Running), 6), 5);
        assert_eq!(readable_bytes(&progress(6, State::Done), 6), 6);
        // A range that ends early holds back its own last byte too.
        assert_eq!(readable_bytes(&progress(6, State::Running), 3), 2);
        assert_eq!(readable_bytes(&progress(6, State::Done), 3), 3);
        assert_eq!(readable_bytes(&progress(0, State::Running), 0), 0);
    }

    #[tokio::test]
    async fn waiters_stream_while_bytes_arrive_and_finish_after_verification() {
        let (fetch, memory) = setup();
        fetch.set_size(6);
        let mut whole = fetch.stream(0, 6);
        write(&fetch, &memory, b"abc");
        assert_eq!(whole.next_chunk().await.unwrap().unwrap(), "abc");
        write(&fetch, &memory, b"def");
        assert_eq!(whole.next_chunk().await.unwrap().unwrap(), "de");
        // A late joiner's range, and an empty one: both wait for the digest check.
        let mut range = fetch.stream(1, 3);
        assert_eq!(range.next_chunk().await.unwrap().unwrap(), "bc");
        let mut empty = fetch.stream(0, 0);
        let pending = tokio::spawn(async move {
            let last = whole.next_chunk().await.map(|c| c.unwrap());
            let range_last = range.next_chunk().await.map(|c| c.unwrap());
            let empty_end = empty.next_chunk().await.map(|c| c.is_none());
            (last, range_last, empty_end)
        });
        tokio::task::yield_now().await;
        assert!(
            !pending.is_finished(),
            "the last bytes must wait for the digest check"
        );
        fetch.finish(Ok(()));
        let (last, range_last, empty_end) = pending.await.unwrap();
        assert_eq!(last.unwrap(), "f");
        assert_eq!(range_last.unwrap(), "d");
        assert!(empty_end.unwrap());
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_every_waiter() {
        let (fetch, memory) = setup();
        fetch.set_size(6);
        write(&fetch, &memory, b"abcdef");
        let mut waiter = fetch.stream(0, 6);
        assert_eq!(waiter.next_chunk().await.unwrap().unwrap(), "abcde");
        fetch.finish(Err(MirrorError::Store(fetch_failed("digest mismatch"))));
        assert!(waiter.next_chunk().await.is_err());
        assert!(fetch.size().await.is_err());
    }

    #[test]
    fn one_fetch_per_digest_and_joiners_are_recorded() {
        let fetches = BlobFetches::default();
        let digest = Digest::sha256_of(b"blob");
        let a = RepoName::parse("docker.io/library/a").unwrap();
        let b = RepoName::parse("ghcr.io/acme/b").unwrap();
        let mut started = 0;
        let first = fetches
            .join_or_start(&digest, &a, false, |_| started += 1)
            .unwrap();
        let again = fetches
            .join_or_start(&digest, &a, false, |_| started += 1)
            .unwrap();
        // Another repository joins only once its own upstream confirmed the blob.
        assert!(fetches
            .join_or_start(&digest, &b, false, |_| started += 1)
            .is_none());
        let confirmed = fetches
            .join_or_start(&digest, &b, true, |_| started += 1)
            .unwrap();
        assert_eq!(started, 1);
        assert!(Arc::ptr_eq(&first, &again) && Arc::ptr_eq(&first, &confirmed));
        assert_eq!(first.started_for(), &a);
        assert_eq!(fetches.complete(&first), vec![a.clone(), b]);
        assert!(fetches.get(&digest).is_none());
        fetches.join_or_start(&digest, &a, false, |_| started += 1);
        assert_eq!(started, 2);
    }
}
