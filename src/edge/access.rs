//! The logging step of a request: once its answer is written, count it in the metrics
//! and write its access-log line. Nothing else in the request path logs or counts
//! requests, so a request is recorded exactly once, with what it really sent.

use crate::metrics::{self, RequestNote};
use std::net::IpAddr;
use std::time::Duration;

/// A request whose answer has been written (or failed to be).
pub struct Completed<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub status: u16,
    /// Body bytes read from the client and sent to it.
    pub received: u64,
    pub sent: u64,
    pub elapsed: Duration,
    /// The answer did not reach the client in full (it went away).
    pub broken: bool,
    pub note: RequestNote,
}

/// Longest user agent kept in a log line; clients control it.
const MAX_AGENT: usize = 200;

/// A bounded label for a method: the registry's methods, else `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// The upload-session event a request's answer means, if any.
pub fn upload_event(
    route: &str,
    method: &str,
    status: u16,
    query: Option<&str>,
) -> Option<&'static str> {
    let mount = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("mount=")));
    match (route, method, status) {
        ("upload_start", "POST", 202) => Some("started"),
        // A POST with `digest=` is a whole upload in one request; with `mount=` no upload.
        ("upload_start", "POST", 201) if !mount => Some("completed"),
        ("upload", "PUT", 201) => Some("completed"),
        ("upload", "DELETE", 204) => Some("cancelled"),
        _ => None,
    }
}

/// Records one request: metrics always, the access line when `access_log` is on.
pub fn record(request: &Completed, access_log: bool) {
    let m = metrics::get();
    // A path that is no route (404 before routing) still counts, under `none`.
    let route = request.note.route.unwrap_or("none");
    let method = method_label(request.method);
    let status_text = itoa_status(request.status);
    let status = status_text.as_str();
    m.requests.with_label_values(&[route, method, status]).inc();
    m.request_seconds
        .with_label_values(&[route, method])
        .observe(request.elapsed.as_secs_f64());
    if request.received > 0 {
        m.received_bytes
            .with_label_values(&[route])
            .inc_by(request.received);
    }
    if request.sent > 0 {
        m.sent_bytes
            .with_label_values(&[route])
            .inc_by(request.sent);
    }
    if let Some(event) = upload_event(route, method, request.status, request.query) {
        m.upload_sessions.with_label_values(&[event]).inc();
    }
    if let (Some(counter), Some(repo)) = (m.repository_requests(), &request.note.repository) {
        counter.with_label_values(&[repo, route, method]).inc();
    }
    if !access_log {
        return;
    }
    let agent = request.user_agent.unwrap_or("-");
    let agent = &agent[..agent.floor_char_boundary(MAX_AGENT)];
    tracing::info!(
        target: "access",
        client = %request.client.map_or_else(|| "-".to_string(), |c| c.to_string()),
        user = request.note.user.as_deref().unwrap_or("-"),
        method = request.method.as_str(),
        path = request.path,
        query = request.query.unwrap_or(""),
        status,
        sent = request.sent,
        received = request.received,
        // Whole microseconds, so the text stays short (26.086, not 26.086198000000003).
        ms = request.elapsed.as_micros() as f64 / 1000.0,
        cache = request.note.cache.map_or("-", |c| c.as_str()),
        agent,
        broken = request.broken,
    );
}

/// A status code as text without allocating (they are always three digits).
struct StatusText([u8; 3]);

impl StatusText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("000")
    }
}

fn itoa_status(status: u16) -> StatusText {
    let s = status.min(999);
    StatusText([
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        let odd = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
        assert_eq!(itoa_status(200).as_str(), "200");
        assert_eq!(itoa_status(404).as_str(), "404");
        assert_eq!(itoa_status(1200).as_str(), "999");
    }

    #[test]
    fn upload_events_follow_the_answers() {
        assert_eq!(
            upload_event("upload_start", "POST", 202, None),
            Some("started")
        );
        assert_eq!(
            upload_event("upload_start", "POST", 201, Some("digest=sha256:ab")),
            Some("completed")
        );
        assert_eq!(
            upload_event("upload_start", "POST", 201, Some("from=a&mount=sha256:ab")),
            None,
            "a mount uploads nothing"
        );
        assert_eq!(upload_event("upload", "PUT", 201, None), Some("completed"));
        assert_eq!(upload_event("upload", "PATCH", 202, None), None);
        assert_eq!(
            upload_event("upload", "DELETE", 204, None),
            Some("cancelled")
        );
        assert_eq!(upload_event("upload", "PUT", 400, None), None);
    }
}
