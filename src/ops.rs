//! Operations: the listener for monitoring (`/metrics`, `/healthz`, `/readyz` on
//! `metrics.listen`, never the public port) and the drain that lets a shutdown or an
//! upgrade finish what is in flight.
//!
//! Shutdown, as pingora runs it: SIGTERM (or SIGQUIT after handing the listening
//! sockets to a new process) broadcasts a shutdown; listeners stop accepting and
//! connections stop keeping alive. pingora then waits `server.shutdown_grace_secs`
//! before it drops whatever still runs. [`Drain`] ends that wait early: once no
//! connection is open it saves what must be saved and exits, so a quiet server stops
//! at once and a busy one only after its last answer.

use crate::metrics;
use crate::mirror::Mirror;
use crate::store::Registry;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Set once a shutdown has begun: `/readyz` fails so load balancers move on.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// How often the drain looks at the open-connection count.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The monitoring endpoints.
pub struct Ops {
    pub mirror: Arc<Mirror>,
    /// `/readyz` also fails while an upstream is marked down (`metrics.check_upstreams`).
    pub check_upstreams: bool,
}

/// One readiness check: its name and what went wrong, if anything.
pub struct Check {
    pub name: String,
    pub problem: Option<String>,
}

/// The `/readyz` answer: 200 when every check passed, else 503; a JSON body that
/// names each check, so a probe's log says what is wrong.
pub fn readiness(checks: &[Check]) -> (u16, serde_json::Value) {
    let ready = checks.iter().all(|c| c.problem.is_none());
    let detail: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|c| {
            let state = c.problem.as_deref().unwrap_or("ok");
            (c.name.clone(), serde_json::Value::from(state))
        })
        .collect();
    let status = if ready { 200 } else { 503 };
    (
        status,
        serde_json::json!({ "ready": ready, "checks": detail }),
    )
}

impl Ops {
    async fn checks(&self) -> Vec<Check> {
        let registry: &Registry = self.mirror.registry();
        let problem = |r: Result<(), String>| r.err();
        let mut checks = vec![
            Check {
                name: "shutdown".into(),
                problem: DRAINING
                    .load(Ordering::Relaxed)
                    .then(|| "shutting down".to_string()),
            },
            Check {
                name: "store".into(),
                problem: problem(
                    registry
                        .blob_store()
                        .check_writable()
                        .await
                        .map_err(|e| e.to_string()),
                ),
            },
            Check {
                name: "metadata".into(),
                problem: problem(
                    registry
                        .meta()
                        .list_repos(None, 1)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                ),
            },
        ];
        if self.check_upstreams {
            for upstream in self.mirror.upstreams() {
                checks.push(Check {
                    name: format!("upstream {}", upstream.name),
                    problem: (!upstream.is_up())
                        .then(|| "marked down after repeated failures".to_string()),
                });
            }
        }
        checks
    }
}

fn answer(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .expect("valid response parts")
}

#[async_trait]
impl ServeHttp for Ops {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let header = session.req_header();
        if !matches!(header.method, http::Method::GET | http::Method::HEAD) {
            return answer(405, "text/plain", b"GET only\n".to_vec());
        }
        match header.uri.path() {
            "/metrics" => answer(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::get().render().into_bytes(),
            ),
            "/healthz" => answer(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (status, body) = readiness(&self.checks().await);
                answer(status, "application/json", body.to_string().into_bytes())
            }
            _ => answer(
                404,
                "text/plain",
                b"not found; try /metrics, /healthz or /readyz\n".to_vec(),
            ),
        }
    }
}

/// Work a shutdown must finish before the process exits.
pub type Finisher =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Waits for the shutdown broadcast, then for the last open connection (at most
/// `grace`), runs the finishers and exits.
pub struct Drain {
    pub grace: Duration,
    pub finishers: Vec<Finisher>,
}

/// Connections open on the registry's listeners (not the monitoring one).
fn open_connections() -> i64 {
    let open = &metrics::get().connections_open;
    ["plain", "tls"]
        .iter()
        .map(|l| open.with_label_values(&[l]).get())
        .sum()
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        DRAINING.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.grace;
        let mut open = open_connections();
        while open > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
            open = open_connections();
        }
        if open > 0 {
            tracing::warn!(
                connections = open,
                grace_secs = self.grace.as_secs(),
                "server.shutdown_grace_secs passed; closing connections still open"
            );
        }
        tracing::info!("shutdown complete");
        for finish in &self.finishers {
            finish().await;
        }
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let ok = |name: &str| Check {
            name: name.into(),
            problem: None,
        };
        let (status, body) = readiness(&[ok("store"), ok("metadata")]);
        assert_eq!(status, 200);
        assert_eq!(body["ready"], true);
        assert_eq!(body["checks"]["store"], "ok");
        let failing = Check {
            name: "store".into(),
            problem: Some("writing tmp/x: Read-only file system".into()),
        };
        let (status, body) = readiness(&[failing, ok("metadata")]);
        assert_eq!(status, 503);
        assert_eq!(body["ready"], false);
        assert_eq!(
            body["checks"]["store"],
            "writing tmp/x: Read-only file system"
        );
        assert_eq!(body["checks"]["metadata"], "ok");
    }
}
