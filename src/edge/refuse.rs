//! Answers for connections refused before a request could be handled: the wrong
//! protocol for the port, or a request head the HTTP/1 parser rejects or that is over
//! our limits. Each gets a complete HTTP/1.1 answer with `Connection: close` (RFC 9112
//! §9.6), never a silent close, so clients and operators see what went wrong.
//!
//! The decisions ([`WrongProtocol`], [`status_for_parse_error`], [`head_over_limits`])
//! are pure; [`answer_and_close`] does the I/O.

use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request target (path and query) served; longer ones get 414. Registry
/// URLs are far shorter (a name is at most 255 bytes); nginx's default is 8 KiB.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Largest request head (request line and header fields) served; larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// After answering, read and discard what the client still sends, for at most this
/// long and this much: closing with unread data resets the connection, and the reset
/// can destroy the answer before the client reads it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// What to say to a client using the wrong protocol for the port.
#[derive(Debug, PartialEq, Eq)]
pub enum WrongProtocol {
    /// TLS on a plain port.
    TlsOnPlainPort,
    /// Plain HTTP on a TLS port.
    PlainOnTlsPort,
    /// Plain HTTP on a TLS port configured to redirect: `https://host/path`.
    Redirect(String),
}

impl WrongProtocol {
    pub fn response(&self) -> String {
        match self {
            WrongProtocol::TlsOnPlainPort => plain_text_answer(
                400,
                None,
                "This port serves plain HTTP, but the client started a TLS handshake. Use http:// for this port \
                 (for Docker: list it under \"insecure-registries\"), or connect to the registry's TLS port.\n",
            ),
            WrongProtocol::PlainOnTlsPort => plain_text_answer(
                400,
                None,
                "This port serves HTTPS, but the client sent plain HTTP. Use https:// for this port.\n",
            ),
            WrongProtocol::Redirect(location) => plain_text_answer(
                308,
                Some(location),
                "Use https:// for this port.\n",
            ),
        }
    }
}

/// The reason phrase of the statuses this module sends.
fn reason(status: u16) -> &'static str {
    match status {
        308 => "Permanent Redirect",
        400 => "Bad Request",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A complete `Connection: close` answer with a one-line text body.
pub fn plain_text_answer(status: u16, location: Option<&str>, text: &str) -> String {
    let location = location
        .map(|l| format!("Location: {l}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {}\r\n{location}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        reason(status),
        text.len()
    )
}

/// The answer to a request head that cannot be served, with a sentence saying why.
pub fn malformed_head_answer(status: u16) -> String {
    let text = match status {
        408 => "The request head did not arrive in time.\n",
        414 => "The request target is too long.\n",
        431 => "The request head is too large (too many or too long header fields).\n",
        501 => "The request uses a Transfer-Encoding this server does not implement; use chunked or Content-Length.\n",
        505 => "This server speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (h2c prior knowledge or TLS ALPN).\n",
        _ => "The request is not valid HTTP/1.1 (request line, header syntax or message framing).\n",
    };
    plain_text_answer(status, None, text)
}

/// The status for a request head that pingora's HTTP/1 parser refused, or `None`
/// when there is nobody to answer (the client closed, the read failed).
pub fn status_for_parse_error(e: &pingora::Error) -> Option<u16> {
    if e.etype != pingora::ErrorType::InvalidHTTPHeader {
        return None;
    }
    let context = e.context.as_ref().map_or("", |c| c.as_str());
    let parse_error = e
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<httparse::Error>());
    // The `http` crate refuses targets of 64 KiB and more while pingora builds the
    // header; pingora's context then names the target.
    let target_too_long = context
        .strip_prefix("invalid uri ")
        .is_some_and(|target| target.len() > MAX_TARGET_BYTES);
    Some(match parse_error {
        _ if target_too_long => 414,
        Some(httparse::Error::TooManyHeaders) => 431,
        Some(httparse::Error::Version) => 505,
        _ if context.starts_with("Request header larger than") => 431,
        // RFC 9112 §6.1: an unknown transfer coding is 501.
        _ if context.contains("non-chunked final Transfer-Encoding") => 501,
        _ => 400,
    })
}

/// The status for a parsed request head that is over our limits, if it is.
pub fn head_over_limits(target_len: usize, head_len: usize) -> Option<u16> {
    if target_len > MAX_TARGET_BYTES {
        Some(414)
    } else if head_len > MAX_HEAD_BYTES {
        Some(431)
    } else {
        None
    }
}

/// Writes `answer`, ends our side of the connection, then discards what the client
/// still sends (bounded) so the answer is not lost to a reset.
pub async fn answer_and_close(mut stream: Stream, answer: &[u8]) {
    let _ = stream.write_all(answer).await;
    let _ = stream.flush().await;
    let _ = AsyncWriteExt::shutdown(&mut stream).await;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 8192];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_http_responses() {
        let answers = [
            WrongProtocol::TlsOnPlainPort.response(),
            WrongProtocol::PlainOnTlsPort.response(),
            WrongProtocol::Redirect("https://h/v2/".into()).response(),
        ]
        .into_iter()
        .chain([400, 408, 414, 431, 501, 505].map(malformed_head_answer));
        for text in answers {
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 "), "{head}");
            assert!(!head.contains(" Error\r\n"), "a reason phrase: {head}");
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{head}"
            );
            assert!(head.contains("Connection: close"), "{head}");
        }
        assert!(WrongProtocol::Redirect("https://h/v2/".into())
            .response()
            .contains("Location: https://h/v2/\r\n"));
        assert!(malformed_head_answer(431)
            .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    fn parse_error(context: &'static str, cause: Option<httparse::Error>) -> pingora::Error {
        let mut e = *pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, context);
        e.cause = cause.map(|c| Box::new(c) as _);
        e
    }

    #[test]
    fn parse_errors_get_the_status_that_fits() {
        let status = |context, cause| status_for_parse_error(&parse_error(context, cause));
        assert_eq!(
            status("buf: ...", Some(httparse::Error::TooManyHeaders)),
            Some(431)
        );
        assert_eq!(
            status("buf: ...", Some(httparse::Error::Version)),
            Some(505)
        );
        assert_eq!(
            status("buf: ...", Some(httparse::Error::HeaderName)),
            Some(400)
        );
        assert_eq!(
            status("Request header larger than 1048575", None),
            Some(431)
        );
        assert_eq!(
            status("non-chunked final Transfer-Encoding", None),
            Some(501)
        );
        assert_eq!(status("multiple Host header fields", None), Some(400));
        let long_target = format!("invalid uri /v2/{}", "a".repeat(70_000));
        let e = pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, long_target);
        assert_eq!(status_for_parse_error(&e), Some(414));
        assert_eq!(status("invalid uri /v2/\x7f", None), Some(400));
        let closed = pingora::Error::explain(pingora::ErrorType::ConnectionClosed, "bytes read: 3");
        assert_eq!(status_for_parse_error(&closed), None);
    }

    #[test]
    fn limits_on_parsed_heads() {
        assert_eq!(head_over_limits(100, 1000), None);
        assert_eq!(head_over_limits(MAX_TARGET_BYTES, MAX_HEAD_BYTES), None);
        assert_eq!(head_over_limits(MAX_TARGET_BYTES + 1, 10), Some(414));
        assert_eq!(head_over_limits(10, MAX_HEAD_BYTES + 1), Some(431));
    }
}
