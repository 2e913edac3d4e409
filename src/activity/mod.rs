//! The activity log: who pushed, pulled, deleted or mounted what and, recorded by other
//! modules through [`ActivityLog::record`], who changed a user, team, role, namespace,
//! robot or token, or signed in; when, and from where. Searched newest first
//! ([`ActivityLog::query`]) and exported as JSON lines ([`ActivityLog::export`]).
//!
//! Why this shape: recording must never slow a request down or fail it.
//! [`ActivityLog::record`] queues the entry without waiting (a full queue drops it,
//! counted in `portcullis_activity_dropped_total`), and the [`Recorder`] background
//! service commits what is queued in batches, one redb transaction each, on the blocking
//! pool. Pulls are counted in memory (`aggregate.rs`) and merged into one entry per
//! repository, actor and hour every [`FLUSH_EVERY`], so a crash loses at most that
//! much of them; at shutdown the drain calls [`ActivityLog::flush`]. The recorder also
//! applies `activity.retention_days`, at start and then daily.
//!
//! The database (`DATA/activity.redb`) is not the metadata store's: its commits never
//! queue behind a push's, and losing it loses no image.

mod aggregate;
mod entry;
mod filter;

pub use entry::Entry;
pub use filter::{parse_time, Cursor, Filter, Page, MAX_PAGE};

use crate::config::ActivityConfig;
use crate::metrics;
use crate::notify::Exchange;
use crate::store::{open_database, StoreError};
use aggregate::{PullKey, Tally};
use async_trait::async_trait;
use entry::Observed;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The database's file name in the data directory.
pub const FILE: &str = "activity.redb";

/// How long [`ActivityLog::flush`] waits for the recorder at most.
pub const FLUSH_BOUND: Duration = Duration::from_secs(1);

/// How often counted pulls are merged into the stored entries.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Entries waiting for the recorder; more are dropped. A burst of this many waits
/// through one slow commit.
const QUEUE: usize = 10_000;

/// Entries in one transaction at most.
const MAX_BATCH: usize = 1_000;

/// The "dropping entries" warning comes at most this often.
const WARN_EVERY_MS: u64 = 60_000;

/// redb's page cache: the log is appended to and read in pages, never randomly.
const CACHE_BYTES: usize = 4 << 20;

/// (time, sequence number) -> [`Entry`] as JSON: the log, in time order.
const ENTRIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("entries");
/// (hour, repository, actor or "" for anonymous) -> the sequence number of that hour's
/// pull entry, so later pulls of the hour (also after a restart) merge into it.
const PULL_ENTRIES: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("pull_entries");
/// [`NEXT_SEQ`] -> the sequence number the next entry gets.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_SEQ: &str = "next_seq";

#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    /// Another process holds the database (redb allows one opener): a running server.
    #[error("{0} is open in another process")]
    InUse(String),
    #[error("activity log: {0}")]
    Db(String),
    #[error("activity log not saved: {0}")]
    NotSaved(String),
    #[error("writing the activity export: {0}")]
    Write(std::io::Error),
}

fn db_err(e: impl Into<redb::Error>) -> ActivityError {
    ActivityError::Db(e.into().to_string())
}

/// Now, in unix milliseconds: the log's time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Message {
    Entry(Entry),
    /// Save the counted pulls too, then answer (with the error text, if any).
    Flush(oneshot::Sender<Result<(), String>>),
}

/// What the request path and the readers hold.
pub struct ActivityLog {
    db: Arc<Database>,
    queue: mpsc::Sender<Message>,
    pulls: Mutex<Tally>,
    /// Unix milliseconds of the last "dropping entries" warning.
    warned_at: AtomicU64,
}

impl ActivityLog {
    /// Opens (creating if needed) the log at `path`, and the service that writes it
    /// (to add to the server; a command that only reads may drop it).
    pub fn open(
        path: &Path,
        config: &ActivityConfig,
    ) -> Result<(Arc<ActivityLog>, Recorder), ActivityError> {
        let db = open_database(path, CACHE_BYTES).map_err(|e| match e {
            StoreError::InUse(file) => ActivityError::InUse(file),
            other => ActivityError::Db(other.to_string()),
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(ENTRIES).map_err(db_err)?;
        txn.open_table(PULL_ENTRIES).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let (queue, inbox) = mpsc::channel(QUEUE);
        let log = Arc::new(ActivityLog {
            db: Arc::new(db),
            queue,
            pulls: Mutex::new(Tally::default()),
            warned_at: AtomicU64::new(0),
        });
        let recorder = Recorder {
            log: log.clone(),
            inbox: Mutex::new(Some(inbox)),
            retention: config.retention,
        };
        Ok((log, recorder))
    }

    /// Queues `entry` for the recorder. Never waits: when the queue is full the entry
    /// is dropped and counted.
    pub fn record(&self, entry: Entry) {
        if self.queue.try_send(Message::Entry(entry)).is_err() {
            self.dropped();
        }
    }

    /// Records what an answered registry request did, if it is something the log keeps
    /// (`entry.rs`); a manifest pull is only counted. Never waits.
    pub fn record_exchange(&self, exchange: &Exchange, now_ms: u64) {
        match entry::observe(exchange, now_ms) {
            Some(Observed::Entry(entry)) => self.record(entry),
            Some(Observed::Pull(pull)) => self.count_pull(pull),
            None => {}
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.pulls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts pulls into their hour; a tally full of other keys drops them.
    fn count_pull(&self, pull: Entry) {
        if !self.tally().add(pull) {
            self.dropped();
        }
    }

    fn dropped(&self) {
        metrics::get().activity_dropped.inc();
        let now = now_ms();
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= WARN_EVERY_MS;
        if due
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                queue = QUEUE,
                "activity log behind: dropping entries (counted in portcullis_activity_dropped_total)"
            );
        }
    }

    /// One page of the entries `filter` matches, newest first, starting below `before`
    /// (a page's `next`); at most `limit` entries (1 to [`MAX_PAGE`]).
    pub async fn query(
        &self,
        filter: &Filter,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, ActivityError> {
        let (db, filter) = (self.db.clone(), filter.clone());
        blocking(move || {
            let Some(span) = filter.span(before) else {
                return Ok(Page {
                    entries: Vec::new(),
                    next: None,
                });
            };
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ENTRIES).map_err(db_err)?;
            let rows = table.range(span).map_err(db_err)?.rev().map(decode);
            filter::page(rows, &filter, limit, filter::MAX_SCANNED)
        })
        .await?
    }

    /// Writes the entries `filter` matches to `out` as JSON lines, oldest first, and
    /// returns how many. Blocks on disk: from async code, call it on the blocking pool.
    /// It reads a snapshot, so the recorder goes on writing meanwhile.
    pub fn export(&self, filter: &Filter, out: impl Write) -> Result<u64, ActivityError> {
        self.export_shown(filter, Some, out)
    }

    /// [`ActivityLog::export`] of what `shown` makes of each matching entry: it may
    /// leave an entry out (`None`) or parts of it, for a caller who may not see all.
    pub fn export_shown(
        &self,
        filter: &Filter,
        shown: impl Fn(Entry) -> Option<Entry>,
        mut out: impl Write,
    ) -> Result<u64, ActivityError> {
        let mut written = 0;
        if let Some(span) = filter.span(None) {
            let txn = self.db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ENTRIES).map_err(db_err)?;
            for row in table.range(span).map_err(db_err)? {
                let (_, entry) = decode(row)?;
                if let Some(entry) = Some(entry).filter(|e| filter.matches(e)).and_then(&shown) {
                    serde_json::to_writer(&mut out, &entry)
                        .map_err(|e| ActivityError::Write(e.into()))?;
                    out.write_all(b"\n").map_err(ActivityError::Write)?;
                    written += 1;
                }
            }
        }
        out.flush().map_err(ActivityError::Write)?;
        Ok(written)
    }

    /// Saves what waits: the queued entries and the counted pulls. For the shutdown's
    /// drain, once no request can record more; gives up after [`FLUSH_BOUND`].
    pub async fn flush(&self) -> Result<(), ActivityError> {
        let deadline = Instant::now() + FLUSH_BOUND;
        let stalled = || {
            ActivityError::NotSaved(format!(
                "the recorder did not answer within {FLUSH_BOUND:?}"
            ))
        };
        let (done, saved) = oneshot::channel();
        tokio::time::timeout_at(deadline, self.queue.send(Message::Flush(done)))
            .await
            .map_err(|_| stalled())?
            .map_err(|_| stalled())?;
        tokio::time::timeout_at(deadline, saved)
            .await
            .map_err(|_| stalled())?
            .map_err(|_| stalled())?
            .map_err(ActivityError::NotSaved)
    }

    /// Removes the entries from before `before_ms` (unix milliseconds) and returns how
    /// many. Blocks on disk.
    pub fn prune(&self, before_ms: u64) -> Result<u64, ActivityError> {
        self.write(|txn| {
            let mut removed = 0;
            txn.open_table(ENTRIES)
                .map_err(db_err)?
                .retain_in((0, 0)..(before_ms, 0), |_, _| {
                    removed += 1;
                    false
                })
                .map_err(db_err)?;
            txn.open_table(PULL_ENTRIES)
                .map_err(db_err)?
                .retain_in((0, "", "")..(before_ms, "", ""), |_, _| false)
                .map_err(db_err)?;
            Ok(removed)
        })
    }

    /// Runs `f` in one write transaction and commits it (durably). Blocks on disk.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, ActivityError>,
    ) -> Result<T, ActivityError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let value = f(&txn)?;
        txn.commit().map_err(db_err)?;
        Ok(value)
    }

    /// Appends entries in one transaction.
    fn append(&self, batch: &[Entry]) -> Result<(), ActivityError> {
        self.write(|txn| {
            let mut entries = txn.open_table(ENTRIES).map_err(db_err)?;
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            for entry in batch {
                let seq = next_seq(&mut counters)?;
                entries
                    .insert((entry.time, seq), encode(entry).as_slice())
                    .map_err(db_err)?;
            }
            Ok(())
        })
    }

    /// Merges counted pulls into their hours' stored entries (making those that do not
    /// exist yet), in one transaction.
    fn merge_pulls(&self, pulls: &[(PullKey, Entry)]) -> Result<(), ActivityError> {
        self.write(|txn| {
            let mut entries = txn.open_table(ENTRIES).map_err(db_err)?;
            let mut index = txn.open_table(PULL_ENTRIES).map_err(db_err)?;
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            for (key, pull) in pulls {
                let index_key = (
                    key.hour,
                    key.repository.as_str(),
                    key.actor.as_deref().unwrap_or(""),
                );
                let known = index.get(index_key).map_err(db_err)?.map(|s| s.value());
                let stored = match known {
                    Some(seq) => entries
                        .get((key.hour, seq))
                        .map_err(db_err)?
                        .map(|row| decode_entry(row.value()))
                        .transpose()?
                        .map(|entry| (seq, entry)),
                    None => None,
                };
                let (seq, entry) = match stored {
                    Some((seq, mut entry)) => {
                        aggregate::merge(&mut entry, pull.clone());
                        (seq, entry)
                    }
                    None => {
                        let seq = next_seq(&mut counters)?;
                        index.insert(index_key, seq).map_err(db_err)?;
                        (seq, pull.clone())
                    }
                };
                entries
                    .insert((key.hour, seq), encode(&entry).as_slice())
                    .map_err(db_err)?;
            }
            Ok(())
        })
    }
}

fn next_seq(counters: &mut redb::Table<&str, u64>) -> Result<u64, ActivityError> {
    let seq = counters
        .get(NEXT_SEQ)
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    counters.insert(NEXT_SEQ, seq + 1).map_err(db_err)?;
    Ok(seq)
}

fn encode(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("an entry serializes")
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, ActivityError> {
    serde_json::from_slice(bytes).map_err(|e| ActivityError::Db(format!("corrupt entry: {e}")))
}

type Row<'a> = (
    redb::AccessGuard<'a, (u64, u64)>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn decode(row: Result<Row, redb::StorageError>) -> Result<(Cursor, Entry), ActivityError> {
    let (key, value) = row.map_err(db_err)?;
    let (time, seq) = key.value();
    Ok((Cursor::new(time, seq), decode_entry(value.value())?))
}

/// Runs `f` on the blocking pool: redb blocks on disk.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ActivityError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ActivityError::Db(format!("activity task failed: {e}")))
}

/// The background service that writes the log: batches from the queue, the counted
/// pulls every [`FLUSH_EVERY`], retention daily. It does not watch pingora's shutdown:
/// the drain's [`ActivityLog::flush`] is the last word, then the process exits.
pub struct Recorder {
    log: Arc<ActivityLog>,
    inbox: Mutex<Option<mpsc::Receiver<Message>>>,
    retention: Option<Duration>,
}

impl Recorder {
    async fn run(&self) {
        let taken = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut inbox) = taken else {
            return;
        };
        let mut save_pulls = tokio::time::interval_at(Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
        // The first tick is at once: retention applies from the start.
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                message = inbox.recv() => {
                    let Some(first) = message else { return };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match inbox.try_recv() {
                            Ok(message) => batch.push(message),
                            Err(_) => break,
                        }
                    }
                    self.save(batch).await;
                }
                _ = save_pulls.tick() => {
                    if let Err(e) = self.save_pulls().await {
                        tracing::warn!("counted pulls not saved, trying again in a minute: {e}");
                    }
                }
                _ = prune.tick() => self.prune().await,
            }
        }
    }

    /// Commits the entries of `batch`; if it asks for a flush, the pulls too, and
    /// answers.
    async fn save(&self, batch: Vec<Message>) {
        let mut entries = Vec::new();
        let mut waiting = Vec::new();
        for message in batch {
            match message {
                Message::Entry(entry) => entries.push(entry),
                Message::Flush(done) => waiting.push(done),
            }
        }
        let lost = entries.len();
        let mut saved = Ok(());
        if !entries.is_empty() {
            let log = self.log.clone();
            saved = blocking(move || log.append(&entries)).await.and_then(|r| r);
            if let Err(e) = &saved {
                tracing::warn!(entries = lost, "activity entries lost: {e}");
            }
        }
        if !waiting.is_empty() {
            let answer = saved
                .and(self.save_pulls().await)
                .map_err(|e| e.to_string());
            for done in waiting {
                let _ = done.send(answer.clone());
            }
        }
    }

    /// Merges the counted pulls into the log; on failure they are counted again, for
    /// the next try.
    async fn save_pulls(&self) -> Result<(), ActivityError> {
        let pulls = self.log.tally().take();
        if pulls.is_empty() {
            return Ok(());
        }
        let log = self.log.clone();
        let (saved, pulls) = blocking(move || (log.merge_pulls(&pulls), pulls)).await?;
        if saved.is_err() {
            for (_, pull) in pulls {
                self.log.count_pull(pull);
            }
        }
        saved
    }

    async fn prune(&self) {
        let Some(retention) = self.retention else {
            return;
        };
        let before = now_ms().saturating_sub(retention.as_millis() as u64);
        let log = self.log.clone();
        match blocking(move || log.prune(before)).await.and_then(|r| r) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                "activity entries older than activity.retention_days removed"
            ),
            Err(e) => tracing::warn!("pruning the activity log failed: {e}"),
        }
    }
}

#[async_trait]
impl BackgroundService for Recorder {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.run().await;
    }
}

#[cfg(test)]
mod tests {
    use super::aggregate::HOUR_MS;
    use super::*;
    use crate::api::{route, Body, Response};
    use crate::notify::event::tests::{request, D, MANIFEST_TYPE};
    use crate::oci::RepoName;

    const TEN: u64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z

    fn keep_forever() -> ActivityConfig {
        ActivityConfig { retention: None }
    }

    /// A log in `dir` with its recorder running.
    fn started(dir: &Path) -> (Arc<ActivityLog>, tokio::task::JoinHandle<()>) {
        let (log, recorder) = ActivityLog::open(&dir.join(FILE), &keep_forever()).unwrap();
        (log, tokio::spawn(async move { recorder.run().await }))
    }

    /// Stops the recorder and lets go of the database.
    async fn stopped(log: Arc<ActivityLog>, recorder: tokio::task::JoinHandle<()>) {
        recorder.abort();
        let _ = recorder.await;
        assert_eq!(Arc::strong_count(&log), 1);
    }

    fn entry(time: u64, actor: &str, action: &str, target: &str) -> Entry {
        Entry {
            time,
            actor: Some(actor.into()),
            client: Some("192.0.2.7".into()),
            action: action.into(),
            target: target.into(),
            detail: None,
            count: 1,
        }
    }

    /// A manifest GET of team/app:1.0 by `user`, answered.
    fn pull(log: &ActivityLog, user: Option<&str>, at: u64) {
        let req = request("GET", "/v2/team/app/manifests/1.0", &[]);
        let answer = Response::new(200)
            .header("Content-Type", MANIFEST_TYPE)
            .header("Docker-Content-Digest", D)
            .body(Body::Empty);
        let route = route::parse(&req.path).unwrap();
        let repository = RepoName::parse("team/app").unwrap();
        let exchange = Exchange {
            route: &route,
            request: &req,
            client: Some("192.0.2.7".parse().unwrap()),
            user,
            repository: &repository,
            response: &answer,
        };
        log.record_exchange(&exchange, at);
    }

    async fn everything(log: &ActivityLog) -> Vec<Entry> {
        let page = log.query(&Filter::default(), None, MAX_PAGE).await.unwrap();
        assert_eq!(page.next, None);
        page.entries
    }

    fn export(log: &ActivityLog, filter: &Filter) -> String {
        let mut out = Vec::new();
        let written = log.export(filter, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(written as usize, text.lines().count());
        text
    }

    #[tokio::test]
    async fn entries_are_searched_newest_first_and_exported_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recorder) = started(dir.path());
        log.record(entry(TEN + 2, "alice", "push", "team/app"));
        log.record(entry(TEN + 1, "bob", "user.create", "user:carol"));
        log.record(entry(TEN + 2, "alice", "delete", "team/app"));
        log.record(entry(TEN + 3, "alice", "push", "team/web"));
        log.flush().await.unwrap();

        let actions = |entries: &[Entry]| -> Vec<String> {
            entries.iter().map(|e| e.action.clone()).collect()
        };
        assert_eq!(
            actions(&everything(&log).await),
            ["push", "delete", "push", "user.create"],
            "newest first; the same millisecond in the order recorded, reversed"
        );
        let alice = Filter {
            actor: Some("alice".into()),
            ..Filter::default()
        };
        let first = log.query(&alice, None, 2).await.unwrap();
        assert_eq!(actions(&first.entries), ["push", "delete"]);
        let next: Cursor = first.next.unwrap().to_string().parse().unwrap();
        let second = log.query(&alice, Some(next), 2).await.unwrap();
        assert_eq!(actions(&second.entries), ["push"]);
        assert_eq!(second.entries[0].target, "team/app");
        assert_eq!(second.next, None);

        let repository = Filter {
            target_prefix: Some("team/app".into()),
            since: Some(TEN + 2),
            ..Filter::default()
        };
        assert_eq!(
            export(&log, &repository),
            format!(
                "{{\"time\":{t},\"actor\":\"alice\",\"client\":\"192.0.2.7\",\"action\":\"push\",\"target\":\"team/app\",\"count\":1}}\n\
                 {{\"time\":{t},\"actor\":\"alice\",\"client\":\"192.0.2.7\",\"action\":\"delete\",\"target\":\"team/app\",\"count\":1}}\n",
                t = TEN + 2
            )
        );
        let nothing = Filter {
            since: Some(TEN + 3),
            until: Some(TEN + 3),
            ..Filter::default()
        };
        assert_eq!(export(&log, &nothing), "");
        stopped(log, recorder).await;
    }

    #[tokio::test]
    async fn pulls_are_one_entry_per_repository_actor_and_hour() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recorder) = started(dir.path());
        pull(&log, Some("ci"), TEN + 5);
        pull(&log, Some("ci"), TEN + 6);
        pull(&log, None, TEN + 7);
        pull(&log, Some("ci"), TEN + HOUR_MS + 1);
        // A HEAD is no pull.
        let head = request("HEAD", "/v2/team/app/manifests/1.0", &[]);
        let route = route::parse(&head.path).unwrap();
        let repository = RepoName::parse("team/app").unwrap();
        log.record_exchange(
            &Exchange {
                route: &route,
                request: &head,
                client: None,
                user: Some("ci"),
                repository: &repository,
                response: &Response::new(200).header("Docker-Content-Digest", D),
            },
            TEN + 8,
        );
        log.flush().await.unwrap();
        // More pulls of the same hour merge into its entry, also after a restart.
        pull(&log, Some("ci"), TEN + 9);
        log.flush().await.unwrap();
        stopped(log, recorder).await;
        let (log, recorder) = started(dir.path());
        pull(&log, Some("ci"), TEN + 10);
        log.flush().await.unwrap();

        let summary: Vec<_> = everything(&log)
            .await
            .into_iter()
            .map(|e| (e.time, e.actor, e.action, e.target, e.detail, e.count))
            .collect();
        let at = |time: u64, actor: Option<&str>, count: u64| {
            let actor = actor.map(str::to_string);
            let detail = Some("1.0".to_string());
            (time, actor, "pull".into(), "team/app".into(), detail, count)
        };
        assert_eq!(
            summary,
            [
                at(TEN + HOUR_MS, Some("ci"), 1),
                at(TEN, Some("ci"), 4),
                at(TEN, None, 1),
            ]
        );
        stopped(log, recorder).await;
    }

    #[tokio::test(start_paused = true)]
    async fn counted_pulls_reach_the_disk_within_a_minute_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recorder) = started(dir.path());
        pull(&log, Some("ci"), TEN);
        pull(&log, Some("ci"), TEN + 1);
        tokio::time::sleep(FLUSH_EVERY + Duration::from_secs(1)).await;
        let mut counts = Vec::new();
        for _ in 0..100 {
            counts = everything(&log).await.iter().map(|e| e.count).collect();
            if !counts.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counts, [2]);
        stopped(log, recorder).await;
    }

    #[tokio::test]
    async fn retention_removes_what_is_older() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recorder) = started(dir.path());
        log.record(entry(TEN - 1, "alice", "push", "old"));
        log.record(entry(TEN, "alice", "push", "new"));
        pull(&log, None, TEN - HOUR_MS);
        log.flush().await.unwrap();
        assert_eq!(log.prune(TEN).unwrap(), 2);
        let left = everything(&log).await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].target, "new");
        // The pruned hour's pull entry is forgotten too: a late pull starts a new one.
        pull(&log, None, TEN - HOUR_MS);
        log.flush().await.unwrap();
        let counts: Vec<_> = everything(&log).await.iter().map(|e| e.count).collect();
        assert_eq!(counts, [1, 1]);
        stopped(log, recorder).await;
    }

    #[tokio::test]
    async fn a_second_opener_is_told_which_file_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _recorder) = ActivityLog::open(&dir.path().join(FILE), &keep_forever()).unwrap();
        let Err(err) = ActivityLog::open(&dir.path().join(FILE), &keep_forever()) else {
            panic!("opened twice");
        };
        assert!(matches!(err, ActivityError::InUse(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&*dir.path().join(FILE).to_string_lossy())
                && text.contains("open in another process"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts_and_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        // No recorder: nothing drains the queue.
        let (log, _recorder) = ActivityLog::open(&dir.path().join(FILE), &keep_forever()).unwrap();
        let dropped = || metrics::get().activity_dropped.get();
        let before = dropped();
        for i in 0..QUEUE as u64 + 3 {
            log.record(entry(i, "alice", "push", "a"));
        }
        assert!(dropped() >= before + 3, "{} -> {}", before, dropped());
        let err = log.flush().await.unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
    }
}
