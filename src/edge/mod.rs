//! The edge: listeners, TLS, and the per-connection HTTP loop.
//!
//! Every listener is a pingora TCP listener whose app is a [`Listener`]: it peeks at
//! the first byte of a connection to catch the commonest mistake in registry setups,
//! a client speaking the wrong protocol for the port. A TLS ClientHello on a plain
//! port, or plain HTTP on a TLS port, gets an HTTP answer that says what to do
//! (instead of a hang or garbage), so Docker reports "server gave HTTP response to
//! HTTPS client" at once and falls back where it is allowed to. TLS handshakes run
//! through pingora's rustls acceptor with our own config (see `tls`), then the
//! stream goes to the HTTP loop in `http`.

mod http;
mod reload;
pub mod tls;

pub use http::HttpApp;
pub use reload::Reloader;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a new connection may stay silent before it is dropped.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

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
    http: Arc<HttpApp>,
    protocol: Protocol,
}

impl Listener {
    pub fn new(http: Arc<HttpApp>, protocol: Protocol) -> Listener {
        Listener { http, protocol }
    }
}

/// What to say to a client using the wrong protocol for the port.
#[derive(Debug, PartialEq, Eq)]
enum WrongProtocol {
    /// TLS on a plain port.
    TlsOnPlainPort,
    /// Plain HTTP on a TLS port.
    PlainOnTlsPort,
    /// Plain HTTP on a TLS port configured to redirect: `https://host/path`.
    Redirect(String),
}

impl WrongProtocol {
    fn response(&self) -> String {
        let (status, location, text) = match self {
            WrongProtocol::TlsOnPlainPort => (
                "400 Bad Request",
                None,
                "This port serves plain HTTP, but the client started a TLS handshake. Use http:// for this port \
                 (for Docker: list it under \"insecure-registries\"), or connect to the registry's TLS port.\n",
            ),
            WrongProtocol::PlainOnTlsPort => (
                "400 Bad Request",
                None,
                "This port serves HTTPS, but the client sent plain HTTP. Use https:// for this port.\n",
            ),
            WrongProtocol::Redirect(location) => {
                ("308 Permanent Redirect", Some(location.as_str()), "Use https:// for this port.\n")
            }
        };
        let location = location
            .map(|l| format!("Location: {l}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {status}\r\n{location}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
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

/// Answers and closes. Callers read what the client already sent first (`read_head`):
/// closing with unread bytes would reset the connection and hide the answer.
async fn refuse(mut stream: Stream, wrong: WrongProtocol) {
    let _ = stream.write_all(wrong.response().as_bytes()).await;
    let _ = stream.flush().await;
    let _ = AsyncWriteExt::shutdown(&mut stream).await;
}

/// Reads up to 8 KiB or the end of a request head, waiting at most a moment.
async fn read_head(stream: &mut Stream) -> Vec<u8> {
    let mut head = vec![0u8; 8192];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut head[len..])).await
        {
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
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut first = [0u8; 1];
        match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.try_peek(&mut first)).await {
            Ok(Ok(true)) => {}
            _ => return None,
        }
        let tls_hello = first[0] == TLS_HANDSHAKE_RECORD;
        match (&self.protocol, tls_hello) {
            (Protocol::Plain, false) => self.http.process_new(stream, shutdown).await,
            (Protocol::Tls { acceptor, .. }, true) => {
                // Listeners hand us TCP streams; the handshake needs the concrete type.
                let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
                    return None;
                };
                let tls =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(*tcp)).await;
                match tls {
                    Ok(Ok(tls)) => self.http.process_new(Box::new(tls), shutdown).await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => None,
                }
            }
            (Protocol::Plain, true) => {
                read_head(&mut stream).await;
                refuse(stream, WrongProtocol::TlsOnPlainPort).await;
                None
            }
            (Protocol::Tls { redirect, .. }, false) => {
                let head = read_head(&mut stream).await;
                let wrong = match https_location(&head).filter(|_| *redirect) {
                    Some(location) => WrongProtocol::Redirect(location),
                    None => WrongProtocol::PlainOnTlsPort,
                };
                refuse(stream, wrong).await;
                None
            }
        }
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

    #[test]
    fn answers_are_complete_http_responses() {
        for wrong in [
            WrongProtocol::TlsOnPlainPort,
            WrongProtocol::PlainOnTlsPort,
            WrongProtocol::Redirect("https://h/v2/".into()),
        ] {
            let text = wrong.response();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 "), "{head}");
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{head}"
            );
        }
        assert!(WrongProtocol::Redirect("https://h/v2/".into())
            .response()
            .contains("Location: https://h/v2/\r\n"));
    }
}
