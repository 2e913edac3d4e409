//! One endpoint's worker: takes what is queued (up to [`MAX_BATCH`] events), POSTs it
//! as one envelope, retries with a doubling back-off, and gives the batch up after
//! `retries` more attempts. When the shutdown's flush begins it tries once more for
//! everything queued, until the flush's deadline.

use super::event::{Envelope, Event, ENVELOPE_MEDIA_TYPE};
use super::EndpointMetrics;
use crate::config::{NotificationEndpoint, MAX_NOTIFICATION_BACKOFF};
use crate::mirror::upstream::{describe, is_loopback, read_limited};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Events in one envelope at most. registry:2 sends one per request; batching what
/// has queued up lets a slow endpoint catch up (and bounds the body to ~100 KiB).
pub const MAX_BATCH: usize = 100;
/// At shutdown, how long the workers keep delivering what is queued. The drain waits
/// for them before the process exits, within the margin the server leaves after
/// `server.shutdown_grace_secs`.
pub const FLUSH_BOUND: Duration = Duration::from_secs(3);
/// What is read of an endpoint's answer (for the connection's reuse); the rest is dropped.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The wait before retry number `retry` (1 for the first): `base` doubled per retry,
/// at most [`MAX_NOTIFICATION_BACKOFF`].
pub fn backoff_before_retry(base: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_NOTIFICATION_BACKOFF)
}

/// The shutdown's flush as workers see it: `None` until it begins, then its deadline.
pub type FlushSignal = watch::Receiver<Option<Instant>>;

/// Waits for the flush to begin and returns its deadline (a notifier that went away
/// means: flush now).
async fn flush_begins(signal: &mut FlushSignal) -> Instant {
    let deadline = signal.wait_for(Option::is_some).await.ok().and_then(|d| *d);
    deadline.unwrap_or_else(|| Instant::now() + FLUSH_BOUND)
}

/// Delivers one endpoint's events; owns the receiving end of its queue.
pub struct Worker {
    endpoint: NotificationEndpoint,
    client: reqwest::Client,
    headers: HeaderMap,
    queue: mpsc::Receiver<Event>,
    /// Set by the sending side when it drops an event for a full queue (so it warns
    /// once per overflow); cleared here whenever events are taken out.
    overflowing: Arc<AtomicBool>,
    metrics: EndpointMetrics,
    flush: FlushSignal,
    /// Counts the workers whose flush is over, for the notifier to wait on.
    flushed: Arc<watch::Sender<usize>>,
}

/// How delivering one batch ended.
enum Delivery {
    Sent,
    /// Every attempt failed; the last error.
    GaveUp(String),
    /// The flush began while waiting to retry (its deadline): the batch goes to it.
    Interrupted(Instant),
}

impl Worker {
    pub fn new(
        endpoint: NotificationEndpoint,
        queue: mpsc::Receiver<Event>,
        overflowing: Arc<AtomicBool>,
        metrics: EndpointMetrics,
        flush: FlushSignal,
        flushed: Arc<watch::Sender<usize>>,
    ) -> Result<Worker, String> {
        let fail = |what: String| format!("notifications endpoint {}: {what}", endpoint.name);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = reqwest::Url::parse(&endpoint.url).map_err(|e| fail(format!("url: {e}")))?;
        // No redirects: a redirect could carry the configured headers to another host.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        // A proxy from the environment is for the internet, never for this machine.
        if is_loopback(&url) {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| fail(format!("cannot build an HTTP client: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &endpoint.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| fail(format!("header name {name:?} is not valid")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| fail(format!("the value of header {name} is not valid")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(Worker {
            endpoint,
            client,
            headers,
            queue,
            overflowing,
            metrics,
            flush,
            flushed,
        })
    }

    /// Delivers until the flush begins, then flushes.
    pub async fn run(mut self) {
        let mut signal = self.flush.clone();
        let (unsent, deadline) = loop {
            let first = tokio::select! {
                deadline = flush_begins(&mut signal) => break (None, deadline),
                event = self.queue.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let batch = self.take_batch(first);
            match self.deliver(&batch).await {
                Delivery::Sent => {}
                Delivery::GaveUp(error) => {
                    self.metrics.retries_exhausted.inc_by(batch.len() as u64);
                    tracing::warn!(
                        endpoint = %self.endpoint.name,
                        events = batch.len(),
                        attempts = self.endpoint.retries + 1,
                        "notifications dropped: every attempt failed (last: {error})"
                    );
                }
                Delivery::Interrupted(deadline) => break (Some(batch), deadline),
            }
        };
        let flushed = self.flushed.clone();
        self.flush(unsent, deadline).await;
        flushed.send_modify(|done| *done += 1);
    }

    /// `first` and whatever else is queued, up to [`MAX_BATCH`].
    fn take_batch(&mut self, first: Event) -> Vec<Event> {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        self.metrics.queued.sub(batch.len() as i64);
        self.overflowing.store(false, Ordering::Relaxed);
        batch
    }

    /// The first attempt and up to `retries` more, backing off between them.
    async fn deliver(&self, batch: &[Event]) -> Delivery {
        let body = envelope(batch);
        let mut signal = self.flush.clone();
        let mut attempt = 0;
        loop {
            let error = match self.post(body.clone(), self.endpoint.timeout).await {
                Ok(()) => return Delivery::Sent,
                Err(error) => error,
            };
            attempt += 1;
            if attempt > self.endpoint.retries {
                return Delivery::GaveUp(error);
            }
            let wait = backoff_before_retry(self.endpoint.backoff, attempt);
            tracing::warn!(
                endpoint = %self.endpoint.name,
                events = batch.len(),
                "notification POST failed ({error}); retry {attempt} of {} in {wait:?}",
                self.endpoint.retries
            );
            // A POST under way is never cut off (bounded by its timeout); only the
            // wait for the next one ends early when the flush begins.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                deadline = flush_begins(&mut signal) => return Delivery::Interrupted(deadline),
            }
        }
    }

    /// One POST within `timeout`: delivered on a 2xx answer, else the reason.
    async fn post(&self, body: Bytes, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        let sent = self
            .client
            .post(&self.endpoint.url)
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, ENVELOPE_MEDIA_TYPE)
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let outcome = match sent {
            Ok(answer) if answer.status().is_success() => {
                // Read (a bounded part of) the answer so the connection can be reused.
                let _ = read_limited(answer, MAX_ANSWER_BYTES).await;
                Ok(())
            }
            Ok(answer) if answer.status().is_redirection() => Err(format!(
                "answered {}; redirects are not followed, so point url at where it leads",
                answer.status()
            )),
            Ok(answer) => Err(format!("answered {}", answer.status())),
            // Without the URL: its path or query may hold a token.
            Err(e) => Err(describe(e.without_url())),
        };
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(()) => self.metrics.sent.inc(),
            Err(_) => self.metrics.failed.inc(),
        }
        outcome
    }

    /// The shutdown's flush: one attempt per batch for what is queued, until `deadline`.
    /// The queue is closed first, so an event that still comes is counted as dropped at
    /// once instead of waiting where nobody reads.
    async fn flush(mut self, unsent: Option<Vec<Event>>, deadline: Instant) {
        self.queue.close();
        let mut pending = unsent;
        let mut dropped = 0;
        loop {
            let batch = match pending.take() {
                Some(batch) => batch,
                None => match self.queue.try_recv() {
                    Ok(first) => self.take_batch(first),
                    Err(_) => break,
                },
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.min(self.endpoint.timeout);
            if timeout.is_zero() || self.post(envelope(&batch), timeout).await.is_err() {
                dropped += batch.len();
            }
        }
        if dropped > 0 {
            self.metrics.shutdown.inc_by(dropped as u64);
            tracing::warn!(
                endpoint = %self.endpoint.name,
                events = dropped,
                "notifications dropped: not delivered before shutdown"
            );
        }
    }
}

fn envelope(batch: &[Event]) -> Bytes {
    let body = serde_json::to_vec(&Envelope { events: batch }).expect("events serialize");
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::event::{Action, Actor, RequestRecord, Source, Target};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// A loopback endpoint answering every POST with `status`; counts the POSTs.
    async fn endpoint_answering(status: u16) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = posts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let posts = counted.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(value) = lower.strip_prefix("content-length:") {
                                length = value.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.unwrap();
                        posts.fetch_add(1, Ordering::SeqCst);
                        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, posts)
    }

    /// What the notifier holds of one worker: its queue, metrics and flush handles.
    struct Harness {
        metrics: EndpointMetrics,
        sender: mpsc::Sender<Event>,
        flush: watch::Sender<Option<Instant>>,
        flushed: watch::Receiver<usize>,
    }

    fn harness(url: &str, keys: &str, label: &str) -> (Worker, Harness) {
        let text = format!("[[notifications]]\nname = \"{label}\"\nurl = \"{url}\"\n{keys}");
        let config =
            crate::config::from_text(&text, "t.toml", Vec::new(), Default::default()).unwrap();
        let endpoint = config.notifications[0].clone();
        let (sender, receiver) = mpsc::channel(endpoint.queue);
        let (flush, signal) = watch::channel(None);
        let (flushed_by, flushed) = watch::channel(0);
        let metrics = EndpointMetrics::for_endpoint(label);
        let worker = Worker::new(
            endpoint,
            receiver,
            Default::default(),
            metrics.clone(),
            signal,
            Arc::new(flushed_by),
        )
        .unwrap();
        let harness = Harness {
            metrics,
            sender,
            flush,
            flushed,
        };
        (worker, harness)
    }

    impl Harness {
        /// Queues an event as the notifier does (counted in the gauge).
        async fn send(&self) {
            self.metrics.queued.inc();
            self.sender.send(event()).await.unwrap();
        }
    }

    fn start_flush(flush: &watch::Sender<Option<Instant>>) {
        flush.send_replace(Some(Instant::now() + FLUSH_BOUND));
    }

    fn event() -> Event {
        Event {
            id: "e".into(),
            timestamp: "1970-01-01T00:00:00Z".into(),
            action: Action::Push,
            target: Target {
                repository: "a".into(),
                ..Target::default()
            },
            request: RequestRecord {
                id: "r".into(),
                addr: None,
                host: None,
                method: "PUT".into(),
                useragent: String::new(),
            },
            actor: Actor::default(),
            source: Source {
                addr: "h:1".into(),
                instance_id: "i".into(),
            },
        }
    }

    /// Polls `done` for up to 10 s.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10 s: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_batch_is_given_up_after_the_retries_and_counted() {
        let (url, posts) = endpoint_answering(500).await;
        let (worker, h) = harness(&url, "retries = 2\nbackoff_secs = 0\n", "unit-retries");
        let metrics = &h.metrics;
        h.send().await;
        let running = tokio::spawn(worker.run());
        eventually("the give-up", || metrics.retries_exhausted.get() == 1).await;
        assert_eq!(posts.load(Ordering::SeqCst), 3);
        assert_eq!((metrics.failed.get(), metrics.sent.get()), (3, 0));
        assert_eq!(metrics.queued.get(), 0);
        assert_eq!(metrics.seconds.get_sample_count(), 3);
        start_flush(&h.flush);
        running.await.unwrap();
        assert_eq!(*h.flushed.borrow(), 1, "the worker says it is done");
        assert_eq!(metrics.shutdown.get(), 0, "nothing was left at shutdown");
    }

    #[tokio::test]
    async fn what_is_queued_when_the_flush_begins_gets_one_more_try() {
        let (url, posts) = endpoint_answering(204).await;
        let (worker, h) = harness(&url, "", "unit-flush");
        let metrics = &h.metrics;
        for _ in 0..(MAX_BATCH + 1) {
            h.send().await;
        }
        // The flush begins before the worker ever ran: everything goes in it.
        start_flush(&h.flush);
        worker.run().await;
        let posted = posts.load(Ordering::SeqCst);
        assert_eq!(posted, 2, "{MAX_BATCH} events per POST");
        assert_eq!((metrics.sent.get(), metrics.shutdown.get()), (2, 0));
        assert_eq!(metrics.queued.get(), 0);
        // The queue is closed now: later events are refused at once.
        assert!(h.sender.try_send(event()).is_err());
    }

    #[tokio::test]
    async fn a_dead_endpoint_at_shutdown_loses_its_events_counted() {
        let url = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", listener.local_addr().unwrap())
        };
        let (worker, h) = harness(&url, "backoff_secs = 60\n", "unit-dead");
        let metrics = &h.metrics;
        h.send().await;
        let running = tokio::spawn(worker.run());
        // The first attempt failed; the worker waits 60 s to retry...
        eventually("the first failure", || metrics.failed.get() == 1).await;
        h.send().await;
        // ...until the flush cuts the wait short: one last try each, then counted.
        let started = Instant::now();
        start_flush(&h.flush);
        running.await.unwrap();
        assert!(started.elapsed() < FLUSH_BOUND + Duration::from_secs(1));
        assert_eq!(metrics.shutdown.get(), 2);
        assert_eq!(metrics.retries_exhausted.get(), 0);
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let second = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8)
            .map(|retry| backoff_before_retry(second, retry).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff_before_retry(Duration::ZERO, 5), Duration::ZERO);
        assert_eq!(backoff_before_retry(second, 100), MAX_NOTIFICATION_BACKOFF);
        assert_eq!(
            backoff_before_retry(second, u32::MAX),
            MAX_NOTIFICATION_BACKOFF
        );
    }
}
