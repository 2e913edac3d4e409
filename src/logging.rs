//! Log output: `tracing` to standard error, with secrets removed in one place.
//!
//! Every line passes through [`redact`] on its way out, whatever its level or origin
//! (pingora logs through the `log` crate, which lands here too), so a credential that
//! reaches a log message by any path (a request head inside an error, a header map
//! printed for debugging) never reaches the log.

use crate::config::{LogConfig, LogFormat};
use regex::Regex;
use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::LazyLock;

/// A header that carries a credential (also `Proxy-Authorization`, `Set-Cookie`), up
/// to the end of its value. No word boundary
/// before the name: in an escaped head it follows the `n` of a literal `\r\n`.
static SECRET_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(authorization|cookie|x-registry-auth)("?\s*[:=]\s*"?)[^\r\n"\\]*"#)
        .expect("valid regex")
});
/// A credential outside a header line: `Basic <base64>`, `Bearer <token>`, or a
/// token or password query parameter.
static SECRET_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(\b(?:basic|bearer)\s+)[A-Za-z0-9+/=._~-]{4,}|([?&](?:access_token|token|password|client_secret)=)[^&\s\x22]*",
    )
    .expect("valid regex")
});

const REDACTED: &str = "<redacted>";
/// [`SECRET_HEADER`]'s replacement: the name and separator stay, the value goes.
const HEADER_REDACTED: &str = "${1}${2}<redacted>";

/// `text` with credentials replaced by `<redacted>`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let headers = SECRET_HEADER.replace_all(text, HEADER_REDACTED);
    match SECRET_VALUE.replace_all(&headers, |c: &regex::Captures| {
        let prefix = c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str());
        format!("{prefix}{REDACTED}")
    }) {
        Cow::Borrowed(_) => headers,
        Cow::Owned(both) => Cow::Owned(both),
    }
}

/// Standard error, through [`redact`]. The fmt layer writes each event with one call.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Where pingora logs what a client did rather than what went wrong here (a client
/// that hung up mid-handshake is an `error!` there), and the retries of an upgrade's
/// socket hand-over (an `error!` while the old server has yet to answer; a failed
/// hand-over is still reported by the bootstrap): shown only when `RUST_LOG` asks.
const DEFAULT_FILTER: &str = "info,pingora_core::apps=off,pingora_core::protocols=off,\
                              pingora_core::server::transfer_fd=off";

/// Installs the subscriber: `RUST_LOG` filters (default [`DEFAULT_FILTER`]), lines to
/// stderr as text or as one JSON object per line with the fields at the top level.
pub fn init(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| RedactingStderr);
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_lose_their_values() {
        let head = "buf: GET /v2/ HTTP/1.1\\r\\nHost: h\\r\\nAuthorization: Basic YWxpY2U6c2VjcmV0\\r\\nCookie: s=1\\r\\n";
        let out = redact(head);
        assert!(!out.contains("YWxpY2U6c2VjcmV0"), "{out}");
        assert!(!out.contains("s=1"), "{out}");
        assert!(out.contains("Host: h"), "other headers stay: {out}");
        assert!(out.contains("Authorization: <redacted>"), "{out}");
    }

    #[test]
    fn debug_printed_maps_and_raw_tokens() {
        let map = r#"{"authorization": "Bearer eyJhbGciOi.xyz", "accept": "*/*"}"#;
        let out = redact(map);
        assert!(!out.contains("eyJhbGciOi"), "{out}");
        assert!(out.contains(r#""accept": "*/*""#), "{out}");
        let loose = redact("upstream said: bearer abcdefgh12345 and basic dXNlcjpwdw==");
        assert!(
            !loose.contains("abcdefgh12345") && !loose.contains("dXNlcjpwdw"),
            "{loose}"
        );
        let query = redact("GET /token?scope=repo&access_token=s3cr3t&x=1");
        assert!(
            !query.contains("s3cr3t") && query.contains("&x=1"),
            "{query}"
        );
    }

    #[test]
    fn lines_without_secrets_are_not_copied() {
        assert!(matches!(
            redact("request method=GET status=200"),
            Cow::Borrowed(_)
        ));
    }
}
