//! The edge: listeners, TLS, and the per-connection HTTP loop.
//!
//! Every listener is a pingora TCP listener whose app is a [`Listener`]. It caps
//! connections per client address, then looks at the first bytes of a connection
//! (`sniff`) to catch the commonest mistake in registry setups, a client speaking the
//! wrong protocol for the port: a TLS ClientHello on a plain port, or plain HTTP on a
//! TLS port, gets an HTTP answer at once that says what to do (`refuse`), so Docker
//! reports "server gave HTTP response to HTTPS client" and containers/image falls
//! back to http:// where allowed, without waiting out a timeout. TLS handshakes run
//! through pingora's rustls acceptor with our own config (see `tls`), then the
//! stream goes to the HTTP loop in `http`. Every stage has a deadline, so a client
//! that sends a few bytes and stops is closed, never held.

mod access;
mod http;
mod limiter;
mod preface;
mod refuse;
mod reload;
mod sniff;
pub mod tls;

pub use http::HttpApp;
pub use limiter::ConnectionLimiter;
pub use reload::Reloader;

use crate::metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use preface::PrefaceDeadline;
use refuse::{answer_and_close, WrongProtocol};
use sniff::FirstBytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Longest a TLS handshake may take, within the connection's first-head deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Protocol {
    Plain,
    Tls {
        acceptor: Acceptor,
        /// Answer plain HTTP with a redirect to https:// instead of a 400.
        redirect: bool,
    },
}

/// A pingora app for one kind of listener, in front of the shared HTTP loop.
pub struct Listener {
    /// HTTP/1.x, and on TLS ports HTTP/2 by ALPN.
    http: Arc<HttpApp>,
    /// The same app for plain connections that opened with the HTTP/2 preface.
    h2c: Arc<HttpApp>,
    protocol: Protocol,
    limiter: Arc<ConnectionLimiter>,
    /// How long a new connection has to show what it speaks (and finish a handshake).
    first_bytes_timeout: Duration,
}

impl Listener {
    pub fn new(
        http: Arc<HttpApp>,
        protocol: Protocol,
        limiter: Arc<ConnectionLimiter>,
        first_bytes_timeout: Duration,
    ) -> Listener {
        Listener {
            h2c: Arc::new(http.with_h2c()),
            http,
            protocol,
            limiter,
            first_bytes_timeout,
        }
    }

    /// A plain connection: TLS by mistake, the h2c preface, or HTTP/1.x.
    async fn serve_plain(&self, stream: Stream, deadline: Instant, shutdown: &ShutdownWatch) {
        let Ok(mut tcp) = stream.into_any().downcast::<L4Stream>() else {
            return;
        };
        let mut first = [0u8; sniff::H2_PREFACE.len()];
        let mut len = 0;
        let kind = loop {
            match sniff::classify(&first[..len]) {
                FirstBytes::NeedMore => {}
                decided => break decided,
            }
            match tokio::time::timeout_at(deadline, tcp.read(&mut first[len..])).await {
                Ok(Ok(n)) if n > 0 => len += n,
                // Closed, failed, or silent past the deadline: nobody to answer.
                _ => return,
            }
        };
        tcp.rewind(&first[..len]);
        let app = match kind {
            FirstBytes::Tls => {
                count_wrong_protocol("tls_on_plain");
                let answer = WrongProtocol::TlsOnPlainPort.response();
                return answer_and_close(tcp, answer.as_bytes()).await;
            }
            FirstBytes::H2Preface => &self.h2c,
            _ => &self.http,
        };
        app.process_new(tcp, shutdown).await;
    }

    async fn serve_tls(
        &self,
        mut stream: Stream,
        acceptor: &Acceptor,
        redirect: bool,
        deadline: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let mut first = [0u8; 2];
        match tokio::time::timeout_at(deadline, stream.try_peek(&mut first)).await {
            Ok(Ok(true)) => {}
            _ => return,
        }
        if !matches!(sniff::classify(&first), FirstBytes::Tls) {
            count_wrong_protocol("plain_on_tls");
            let head = read_head(&mut stream, deadline).await;
            let wrong = match https_location(&head).filter(|_| redirect) {
                Some(location) => WrongProtocol::Redirect(location),
                None => WrongProtocol::PlainOnTlsPort,
            };
            return answer_and_close(stream, wrong.response().as_bytes()).await;
        }
        // Listeners hand us TCP streams; the handshake needs the concrete type.
        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
            return;
        };
        let deadline = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
        let handshake = tokio::time::timeout_at(deadline, acceptor.tls_handshake(*tcp)).await;
        let result = match &handshake {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "failed",
            Err(_) => "timeout",
        };
        metrics::get()
            .tls_handshakes
            .with_label_values(&[result])
            .inc();
        match handshake {
            Ok(Ok(tls)) => {
                let mut stream: Stream = Box::new(tls);
                if stream.selected_alpn_proto() == Some(ALPN::H2) {
                    let deadline = Instant::now() + self.first_bytes_timeout;
                    stream = Box::new(PrefaceDeadline::new(stream, deadline));
                }
                self.http.process_new(stream, shutdown).await;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }
}

fn count_wrong_protocol(kind: &str) {
    metrics::get()
        .wrong_protocol
        .with_label_values(&[kind])
        .inc();
}

/// An accepted connection, counted in `portcullis_connections_open` while it lasts.
/// The count is also what a shutdown waits for (`ops::drain`).
pub struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn start(listener: &str) -> OpenConnection {
        let m = metrics::get();
        m.connections.with_label_values(&[listener]).inc();
        let open = m.connections_open.with_label_values(&[listener]);
        open.inc();
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The https:// URL for a plain request head (`GET /v2/ HTTP/1.1` ... `Host: h:p`).
fn https_location(head: &[u8]) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?;
    let host = lines
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        })?
        .1
        .trim();
    let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    (target.starts_with('/') && safe(target) && safe(host))
        .then(|| format!("https://{host}{target}"))
}

/// Reads up to 8 KiB or the end of a request head, before `deadline`; for the
/// redirect on a TLS port, which needs the target and the Host header.
async fn read_head(stream: &mut Stream, deadline: Instant) -> Vec<u8> {
    let mut head = vec![0u8; 8192];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut head[len..])).await {
            Ok(Ok(n)) if n > 0 => len += n,
            _ => break,
        }
    }
    head.truncate(len);
    head
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _slot = match client {
            Some(ip) => match self.limiter.acquire(ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::get().connections_refused.inc();
                    tracing::warn!(client = %ip, "connection refused: limits.max_connections_per_ip reached");
                    return None;
                }
            },
            None => None,
        };
        let _open = OpenConnection::start(match self.protocol {
            Protocol::Plain => "plain",
            Protocol::Tls { .. } => "tls",
        });
        let deadline = Instant::now() + self.first_bytes_timeout;
        match &self.protocol {
            Protocol::Plain => self.serve_plain(stream, deadline, shutdown).await,
            Protocol::Tls { acceptor, redirect } => {
                self.serve_tls(stream, acceptor, *redirect, deadline, shutdown)
                    .await
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_target_from_request_head() {
        let head = b"GET /v2/team/app/tags/list?n=1 HTTP/1.1\r\nHost: registry.lan:5443\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            https_location(head).as_deref(),
            Some("https://registry.lan:5443/v2/team/app/tags/list?n=1")
        );
        assert_eq!(
            https_location(b"GET /v2/ HTTP/1.1\r\n\r\n"),
            None,
            "no Host"
        );
        assert_eq!(
            https_location(b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            None
        );
        assert_eq!(https_location(b"\x16\x03\x01"), None);
    }
}
