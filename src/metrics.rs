//! Prometheus metrics: every metric's name, help and labels in one place.
//!
//! One process-wide set ([`get`]), registered in its own `prometheus::Registry` and
//! rendered by the metrics listener (`ops`). Callers record outcomes, not timings
//! they would have to compute twice: the edge records each finished request once
//! (`edge::access`), the mirror its cache and upstream outcomes, gc its runs.
//! Labels are bounded sets (route kind, method, status, upstream name); repository
//! names appear only when `metrics.repository_label` asks for them.
//!
//! A request's context (route, user, cache outcome) is collected by [`RequestNote`], a
//! task-local the edge sets around `Api::handle`: the mirror notes a cache outcome deep
//! in its code without every signature carrying the request.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::cell::RefCell;
use std::sync::{Arc, LazyLock, OnceLock};

/// Request latency buckets, seconds: sub-millisecond manifest hits to long blob transfers.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
const GC_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
/// Webhook POSTs: a receiver on the LAN answers in milliseconds; timeouts end at seconds.
const NOTIFICATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

pub struct Metrics {
    registry: Registry,
    /// `route`: the route kind (`manifest`, `blob`, ...); `status`: the HTTP status.
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub received_bytes: IntCounterVec,
    pub sent_bytes: IntCounterVec,
    /// Requests being answered right now.
    pub requests_in_flight: IntGauge,
    /// Request heads refused before routing (malformed, too large, too slow), by status.
    pub refused_heads: IntCounterVec,
    /// `listener`: `plain` or `tls`.
    pub connections: IntCounterVec,
    pub connections_open: IntGaugeVec,
    /// Connections refused by `limits.max_connections_per_ip`.
    pub connections_refused: IntCounter,
    /// `result`: `ok`, `failed`, `timeout`.
    pub tls_handshakes: IntCounterVec,
    /// A client speaking the wrong protocol for the port (`tls_on_plain`, `plain_on_tls`).
    pub wrong_protocol: IntCounterVec,
    /// `result`: `success`, `failure`, `rate_limited`.
    pub auth_attempts: IntCounterVec,
    /// `event`: `started`, `completed`, `cancelled`, `expired`.
    pub upload_sessions: IntCounterVec,
    /// Requests writing blob data (holding one of `limits.max_concurrent_uploads`).
    pub uploads_active: IntGauge,
    /// `kind`: `manifest`, `blob`, `tag_list`; `result`: see [`CacheResult`].
    pub cache: IntCounterVec,
    /// `upstream`, `method`, `status` (`error` when no response came).
    pub upstream_requests: IntCounterVec,
    /// `upstream`, `kind`: what went wrong (`connect`, `timeout`, `digest`, ...).
    pub upstream_errors: IntCounterVec,
    pub upstream_ratelimit_remaining: IntGaugeVec,
    /// 1 while the upstream is considered reachable, 0 while it is marked down.
    pub upstream_up: IntGaugeVec,
    /// Blob bytes in the store by `origin` (`pushed`, `cached`), as last measured by gc
    /// and updated as blobs are stored.
    pub store_bytes: IntGaugeVec,
    /// `result`: `ok`, `failed`; dry runs are not counted.
    pub gc_runs: IntCounterVec,
    pub gc_seconds: Histogram,
    pub gc_freed_bytes: IntCounter,
    pub gc_deleted_blobs: IntCounter,
    pub cache_evicted_bytes: IntCounter,
    /// POSTs to webhook endpoints, by `endpoint` and `result` (`sent`, `failed`).
    pub notifications: IntCounterVec,
    /// Events never delivered, by `endpoint` and `reason` (`queue_full`,
    /// `retries_exhausted`, `shutdown`).
    pub notifications_dropped: IntCounterVec,
    /// Events waiting in an endpoint's queue.
    pub notifications_queued: IntGaugeVec,
    /// Time one POST took, answered or not, by `endpoint`.
    pub notification_seconds: HistogramVec,
    /// Activity-log entries (and pulls) not recorded: the recorder was behind.
    pub activity_dropped: IntCounter,
    /// `repository`, `route`, `method`: only with `metrics.repository_label`.
    repository_requests: OnceLock<IntCounterVec>,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique");
    metric
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique");
    metric
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = Histogram::with_opts(opts).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique");
    metric
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique");
        let build = counters(
            &r,
            "portcullis_build_info",
            "Always 1; the version is a label.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).inc();
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_http_request_duration_seconds",
                "Time from the request head to the last byte of the answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("valid metric");
        r.register(Box::new(request_seconds.clone()))
            .expect("unique");
        let notification_seconds = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_notification_duration_seconds",
                "Time one webhook POST took (answered, failed or timed out), by endpoint.",
            )
            .buckets(NOTIFICATION_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .expect("valid metric");
        r.register(Box::new(notification_seconds.clone()))
            .expect("unique");
        Metrics {
            requests: counters(
                &r,
                "portcullis_http_requests_total",
                "Requests answered, by route kind, method and status.",
                &["route", "method", "status"],
            ),
            request_seconds,
            received_bytes: counters(
                &r,
                "portcullis_http_received_bytes_total",
                "Request body bytes read, by route kind.",
                &["route"],
            ),
            sent_bytes: counters(
                &r,
                "portcullis_http_sent_bytes_total",
                "Response body bytes sent, by route kind.",
                &["route"],
            ),
            requests_in_flight: gauge(
                &r,
                "portcullis_http_requests_in_flight",
                "Requests being answered.",
            ),
            refused_heads: counters(
                &r,
                "portcullis_http_refused_heads_total",
                "Request heads refused before routing (malformed, too large, too slow), by status.",
                &["status"],
            ),
            connections: counters(
                &r,
                "portcullis_connections_total",
                "Connections accepted, by listener (plain, tls).",
                &["listener"],
            ),
            connections_open: gauges(
                &r,
                "portcullis_connections_open",
                "Connections open, by listener (plain, tls).",
                &["listener"],
            ),
            connections_refused: counter(
                &r,
                "portcullis_connections_refused_total",
                "Connections closed at once by limits.max_connections_per_ip.",
            ),
            tls_handshakes: counters(
                &r,
                "portcullis_tls_handshakes_total",
                "TLS handshakes, by result (ok, failed, timeout).",
                &["result"],
            ),
            wrong_protocol: counters(
                &r,
                "portcullis_wrong_protocol_total",
                "Connections that spoke the wrong protocol for the port (tls_on_plain, plain_on_tls).",
                &["kind"],
            ),
            auth_attempts: counters(
                &r,
                "portcullis_auth_attempts_total",
                "Requests with credentials, by result (success, failure, rate_limited).",
                &["result"],
            ),
            upload_sessions: counters(
                &r,
                "portcullis_upload_sessions_total",
                "Blob upload sessions, by event (started, completed, cancelled, expired).",
                &["event"],
            ),
            uploads_active: gauge(
                &r,
                "portcullis_uploads_active",
                "Requests writing blob data now (limits.max_concurrent_uploads caps them).",
            ),
            cache: counters(
                &r,
                "portcullis_cache_requests_total",
                "Pull-through cache lookups, by kind (manifest, blob, tag_list) and result (hit, miss, stale, coalesced, revalidated).",
                &["kind", "result"],
            ),
            upstream_requests: counters(
                &r,
                "portcullis_upstream_requests_total",
                "Requests sent to upstream registries, by upstream, method and status (error: no response).",
                &["upstream", "method", "status"],
            ),
            upstream_errors: counters(
                &r,
                "portcullis_upstream_errors_total",
                "Upstream failures, by upstream and kind.",
                &["upstream", "kind"],
            ),
            upstream_ratelimit_remaining: gauges(
                &r,
                "portcullis_upstream_ratelimit_remaining",
                "The upstream's last ratelimit-remaining header.",
                &["upstream"],
            ),
            upstream_up: gauges(
                &r,
                "portcullis_upstream_up",
                "1 while the upstream is considered reachable, 0 while marked down.",
                &["upstream"],
            ),
            store_bytes: gauges(
                &r,
                "portcullis_store_bytes",
                "Blob bytes stored, by origin (pushed, cached).",
                &["origin"],
            ),
            gc_runs: counters(
                &r,
                "portcullis_gc_runs_total",
                "Garbage collections that changed the store, by result (ok, failed).",
                &["result"],
            ),
            gc_seconds: histogram(
                &r,
                "portcullis_gc_duration_seconds",
                "Time garbage collections took.",
                GC_BUCKETS,
            ),
            gc_freed_bytes: counter(
                &r,
                "portcullis_gc_freed_bytes_total",
                "Bytes freed by garbage collection (blobs, uploads and evictions).",
            ),
            gc_deleted_blobs: counter(
                &r,
                "portcullis_gc_deleted_blobs_total",
                "Blob files deleted by garbage collection.",
            ),
            cache_evicted_bytes: counter(
                &r,
                "portcullis_cache_evicted_bytes_total",
                "Cached bytes evicted to keep cache.max_bytes.",
            ),
            notifications: counters(
                &r,
                "portcullis_notifications_total",
                "Webhook POSTs (one envelope of events each), by endpoint and result (sent, failed).",
                &["endpoint", "result"],
            ),
            notifications_dropped: counters(
                &r,
                "portcullis_notifications_dropped_total",
                "Events never delivered, by endpoint and reason (queue_full, retries_exhausted, shutdown).",
                &["endpoint", "reason"],
            ),
            notifications_queued: gauges(
                &r,
                "portcullis_notifications_queued",
                "Events waiting in an endpoint's queue.",
                &["endpoint"],
            ),
            notification_seconds,
            activity_dropped: counter(
                &r,
                "portcullis_activity_dropped_total",
                "Activity-log entries and pulls not recorded because the recorder was behind.",
            ),
            repository_requests: OnceLock::new(),
            registry: r,
        }
    }

    /// Adds the per-repository request counter (`metrics.repository_label`).
    pub fn enable_repository_label(&self) {
        self.repository_requests.get_or_init(|| {
            counters(
                &self.registry,
                "portcullis_repository_requests_total",
                "Requests by repository, route kind and method (metrics.repository_label).",
                &["repository", "route", "method"],
            )
        });
    }

    pub fn repository_requests(&self) -> Option<&IntCounterVec> {
        self.repository_requests.get()
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// One series of a counter or gauge family, as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// (label name, value) pairs.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The series a counter or gauge family holds now, for status pages: reading them
/// this way creates no series that nothing recorded (as `with_label_values` would).
pub fn series(metric: &impl prometheus::core::Collector) -> Vec<Series> {
    use prometheus::proto::MetricType;
    metric
        .collect()
        .iter()
        .flat_map(|family| {
            let counter = family.get_field_type() == MetricType::COUNTER;
            family.get_metric().iter().map(move |m| Series {
                labels: m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect(),
                value: if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                },
            })
        })
        .collect()
}

/// What a pull-through cache lookup came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the store; the upstream was not asked.
    Hit,
    /// Fetched from the upstream (and cached).
    Miss,
    /// A tag revalidated with the upstream: unchanged, served from the store.
    Revalidated,
    /// Joined a fetch already under way (coalesced with another client).
    Coalesced,
    /// The upstream failed; served what the cache had (stale-if-error).
    Stale,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Stale => "stale",
        }
    }
}

/// What a request's handling learnt that the access log and metrics want.
#[derive(Debug, Default, Clone)]
pub struct RequestNote {
    /// The route kind (`manifest`, `blob`, ...), once the path is parsed.
    pub route: Option<&'static str>,
    /// The repository, when `metrics.repository_label` wants it.
    pub repository: Option<String>,
    pub user: Option<Arc<str>>,
    /// The last cache outcome noted (a manifest by tag notes the tag's).
    pub cache: Option<CacheResult>,
}

tokio::task_local! {
    static NOTE: RefCell<RequestNote>;
}

/// Runs `handling` with a fresh [`RequestNote`] and returns what it noted.
pub async fn noted<T>(handling: impl std::future::Future<Output = T>) -> (T, RequestNote) {
    NOTE.scope(RefCell::new(RequestNote::default()), async {
        let out = handling.await;
        (out, NOTE.with(|n| n.take()))
    })
    .await
}

/// Changes the current request's note; outside a request (gc, fetch), nothing.
pub fn note(change: impl FnOnce(&mut RequestNote)) {
    let _ = NOTE.try_with(|n| change(&mut n.borrow_mut()));
}

/// Counts a cache lookup and notes it for the access log.
pub fn cache_outcome(kind: &'static str, result: CacheResult) {
    get()
        .cache
        .with_label_values(&[kind, result.as_str()])
        .inc();
    note(|n| n.cache = Some(result));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_stay_with_their_request() {
        let ((), first) = noted(async {
            note(|n| n.route = Some("manifest"));
            cache_outcome("manifest", CacheResult::Stale);
        })
        .await;
        assert_eq!(first.route, Some("manifest"));
        assert_eq!(first.cache, Some(CacheResult::Stale));
        let ((), second) = noted(async {}).await;
        assert_eq!(second.route, None, "a new request starts empty");
        // Outside any request, noting is harmless.
        note(|n| n.route = Some("blob"));
        let text = get().render();
        assert!(
            text.contains(r#"portcullis_cache_requests_total{kind="manifest",result="stale"}"#),
            "{text}"
        );
        assert!(text.contains("portcullis_build_info{version="), "{text}");
        let stale = series(&get().cache)
            .into_iter()
            .find(|s| s.label("kind") == "manifest" && s.label("result") == "stale")
            .unwrap();
        assert!(stale.value >= 1.0, "{stale:?}");
    }
}
