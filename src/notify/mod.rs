//! Webhook notifications: pushes, pulls and deletes POSTed to the `[[notifications]]`
//! endpoints in CNCF distribution's (registry:2) envelope format, so consumers written
//! for registry:2 (Portus-style sync jobs, audit trails) work unchanged.
//!
//! Why this shape: a request must never wait for, or fail because of, an endpoint.
//! [`Api`](crate::api::Api) calls [`Notifier::notify`] once per answered request; the
//! pure [`event::event_for`] decides whether that answer is an event, and the event
//! goes into each interested endpoint's bounded queue with `try_send` (a full queue
//! drops it and counts it). One worker per endpoint (`delivery.rs`), run by the
//! [`Delivery`] background service, POSTs what is queued and retries with back-off.
//! At shutdown the drain calls [`Notifier::flush`] once no connection is left (so no
//! request can make another event): every worker tries once more for what is queued,
//! within [`FLUSH_BOUND`], before the process exits. Handlers know nothing of this.
//!
//! Header values from the configuration (tokens) are never logged, nor is the URL
//! (it may hold a token too); log lines and metric labels name the endpoint.

mod delivery;
pub mod event;

pub use delivery::FLUSH_BOUND;
pub use event::{Action, Event, EventKind, Exchange};

use crate::auth::access::glob_match;
use crate::config::{Config, NotificationEndpoint};
use crate::metrics;
use async_trait::async_trait;
use delivery::{FlushSignal, Worker};
use event::{Occurrence, Source};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Histogram, IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;

/// How long past the flush's deadline [`Notifier::flush`] waits for the workers'
/// bookkeeping (their last POSTs end at the deadline).
const FLUSH_MARGIN: Duration = Duration::from_millis(250);

/// One endpoint's metrics, with its label already applied.
#[derive(Clone)]
struct EndpointMetrics {
    sent: IntCounter,
    failed: IntCounter,
    queued: IntGauge,
    queue_full: IntCounter,
    retries_exhausted: IntCounter,
    shutdown: IntCounter,
    seconds: Histogram,
}

impl EndpointMetrics {
    fn for_endpoint(name: &str) -> EndpointMetrics {
        let m = metrics::get();
        let dropped = |reason| m.notifications_dropped.with_label_values(&[name, reason]);
        EndpointMetrics {
            sent: m.notifications.with_label_values(&[name, "sent"]),
            failed: m.notifications.with_label_values(&[name, "failed"]),
            queued: m.notifications_queued.with_label_values(&[name]),
            queue_full: dropped("queue_full"),
            retries_exhausted: dropped("retries_exhausted"),
            shutdown: dropped("shutdown"),
            seconds: m.notification_seconds.with_label_values(&[name]),
        }
    }
}

/// The sending side of one endpoint: what it wants, and its queue.
struct Queue {
    name: String,
    capacity: usize,
    events: Vec<EventKind>,
    repositories: Vec<String>,
    sender: mpsc::Sender<Event>,
    overflowing: Arc<AtomicBool>,
    metrics: EndpointMetrics,
}

impl Queue {
    fn wants(&self, event: &Event) -> bool {
        self.events.contains(&event.action.kind())
            && (self.repositories.is_empty()
                || self
                    .repositories
                    .iter()
                    .any(|p| glob_match(p, &event.target.repository)))
    }

    /// Queues the event without waiting; a full or closed queue drops it.
    fn offer(&self, event: Event) {
        // Counted before the worker can take it, so the gauge never goes below zero.
        self.metrics.queued.inc();
        let Err(refused) = self.sender.try_send(event) else {
            return;
        };
        self.metrics.queued.dec();
        match refused {
            TrySendError::Full(_) => {
                self.metrics.queue_full.inc();
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.name,
                        queue = self.capacity,
                        "notification queue full: dropping events until the endpoint catches up"
                    );
                }
            }
            TrySendError::Closed(_) => self.metrics.shutdown.inc(),
        }
    }
}

/// What the request path holds: the endpoints' queues and this instance's identity.
pub struct Notifier {
    queues: Vec<Queue>,
    source: Source,
    /// Set to the deadline when the shutdown's flush begins.
    flush: watch::Sender<Option<Instant>>,
    /// How many workers have finished their flush.
    flushed: watch::Receiver<usize>,
}

impl Notifier {
    /// The notifier for `config.notifications`, and the service that delivers for it
    /// (to add to the server). Without endpoints, notifying costs nothing.
    pub fn new(config: &Config) -> Result<(Arc<Notifier>, Delivery), String> {
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        let (flush, signal): (_, FlushSignal) = watch::channel(None);
        let (flushed_by, flushed) = watch::channel(0);
        let flushed_by = Arc::new(flushed_by);
        for endpoint in &config.notifications {
            let (sender, receiver) = mpsc::channel(endpoint.queue);
            let overflowing = Arc::new(AtomicBool::new(false));
            let metrics = EndpointMetrics::for_endpoint(&endpoint.name);
            workers.push(Worker::new(
                endpoint.clone(),
                receiver,
                overflowing.clone(),
                metrics.clone(),
                signal.clone(),
                flushed_by.clone(),
            )?);
            queues.push(queue_for(endpoint, sender, overflowing, metrics));
        }
        let port = config.listen.iter().chain(&config.tls_listen).next();
        let source = Source {
            addr: format!("{}:{}", hostname(), port.map_or(0, |a| a.port())),
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        let notifier = Arc::new(Notifier {
            queues,
            source,
            flush,
            flushed,
        });
        Ok((notifier, Delivery(Mutex::new(workers))))
    }

    /// The shutdown's last step for notifications, once no request can make another
    /// event: every worker stops waiting to retry and tries once more for what is
    /// queued; returns when all are done, at most [`FLUSH_BOUND`] (and a moment) later.
    /// Events still undelivered then are counted as dropped (`reason="shutdown"`).
    pub async fn flush(&self) {
        if self.queues.is_empty() {
            return;
        }
        let deadline = Instant::now() + FLUSH_BOUND;
        self.flush.send_replace(Some(deadline));
        let workers = self.queues.len();
        let mut flushed = self.flushed.clone();
        let all_done = flushed.wait_for(|done| *done >= workers);
        let _ = tokio::time::timeout_at((deadline + FLUSH_MARGIN).into(), all_done).await;
    }

    /// Queues the event this answered request makes, if any, for every endpoint that
    /// wants it. Never waits.
    pub fn notify(&self, exchange: &Exchange) {
        if self.queues.is_empty() {
            return;
        }
        let occurrence = || Occurrence {
            event_id: uuid::Uuid::new_v4().to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
            at: SystemTime::now(),
            source: &self.source,
        };
        let Some(event) = event::event_for(exchange, occurrence) else {
            return;
        };
        for queue in self.queues.iter().filter(|q| q.wants(&event)) {
            queue.offer(event.clone());
        }
    }
}

fn queue_for(
    endpoint: &NotificationEndpoint,
    sender: mpsc::Sender<Event>,
    overflowing: Arc<AtomicBool>,
    metrics: EndpointMetrics,
) -> Queue {
    Queue {
        name: endpoint.name.clone(),
        capacity: endpoint.queue,
        events: endpoint.events.clone(),
        repositories: endpoint.repositories.clone(),
        sender,
        overflowing,
        metrics,
    }
}

/// This machine's name for `source.addr`, as registry:2 reports it; `localhost` if
/// the system will not say.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let status = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if status == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// The background service running one delivery worker per endpoint. It does not
/// watch pingora's shutdown: the workers keep delivering while connections drain, and
/// [`Notifier::flush`] ends them.
pub struct Delivery(Mutex<Vec<Worker>>);

#[async_trait]
impl BackgroundService for Delivery {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let workers = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut running = tokio::task::JoinSet::new();
        for worker in workers {
            running.spawn(worker.run());
        }
        while running.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> Config {
        crate::config::from_text(
            &format!("[[notifications]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/\"\n{text}"),
            "t.toml",
            Vec::new(),
            crate::config::Overrides::default(),
        )
        .unwrap()
    }

    fn event(action: Action, repository: &str) -> Event {
        Event {
            id: String::new(),
            timestamp: String::new(),
            action,
            target: event::Target {
                repository: repository.to_string(),
                ..event::Target::default()
            },
            request: event::RequestRecord {
                id: String::new(),
                addr: None,
                host: None,
                method: "GET".into(),
                useragent: String::new(),
            },
            actor: event::Actor::default(),
            source: Source {
                addr: String::new(),
                instance_id: String::new(),
            },
        }
    }

    #[test]
    fn endpoints_choose_actions_and_repositories() {
        let config = endpoint("events = [\"push\"]\nrepositories = [\"team/*\"]\n");
        let (sender, _receiver) = mpsc::channel(1);
        let metrics = EndpointMetrics::for_endpoint("choose");
        let queue = queue_for(
            &config.notifications[0],
            sender,
            Default::default(),
            metrics,
        );
        assert!(queue.wants(&event(Action::Push, "team/app")));
        assert!(
            queue.wants(&event(Action::Mount, "team/app")),
            "a mount is a push"
        );
        assert!(!queue.wants(&event(Action::Pull, "team/app")));
        assert!(!queue.wants(&event(Action::Push, "other/app")));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let config = endpoint("queue = 1\n");
        let (sender, mut receiver) = mpsc::channel(1);
        let metrics = EndpointMetrics::for_endpoint("full");
        let queue = queue_for(
            &config.notifications[0],
            sender,
            Default::default(),
            metrics,
        );
        for _ in 0..3 {
            queue.offer(event(Action::Pull, "a"));
        }
        assert_eq!(queue.metrics.queued.get(), 1);
        assert_eq!(queue.metrics.queue_full.get(), 2);
        assert!(receiver.try_recv().is_ok());
        receiver.close();
        queue.offer(event(Action::Pull, "a"));
        assert_eq!(queue.metrics.shutdown.get(), 1);
    }

    #[test]
    fn the_source_names_this_machine() {
        let (notifier, _delivery) = Notifier::new(&endpoint("")).unwrap();
        assert!(
            notifier.source.addr.ends_with(":5000"),
            "{}",
            notifier.source.addr
        );
        assert!(!notifier.source.addr.starts_with(':'));
    }
}
