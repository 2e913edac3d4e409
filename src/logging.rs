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
use std::sync::Mutex;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

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

/// Standard error, through [`redact`]. Every `write` is one whole event (the fmt layer
/// writes each with one call), redacted before it is kept: a secret is never split
/// across two writes. Events are kept until `flush` or until `BATCH_BYTES` wait.
struct RedactingStderr {
    pending: Vec<u8>,
    batch_bytes: usize,
}

/// What the server's log writer gathers before one write to stderr; it also writes
/// whenever no event waits (see [`init_server`]).
const BATCH_BYTES: usize = 64 * 1024;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.pending.extend_from_slice(redact(&text).as_bytes());
        if self.pending.len() >= self.batch_bytes {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(&self.pending)?;
        self.pending.clear();
        stderr.flush()
    }
}

/// The server's log thread; dropping it writes what waits and stops the thread.
static SERVER_WRITER: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = Mutex::new(None);

/// Where pingora logs what a client did rather than what went wrong here (a client
/// that hung up mid-handshake is an `error!` there), and the retries of an upgrade's
/// socket hand-over (an `error!` while the old server has yet to answer; a failed
/// hand-over is still reported by the bootstrap): shown only when `RUST_LOG` asks.
const DEFAULT_FILTER: &str = "info,pingora_core::apps=off,pingora_core::protocols=off,\
                              pingora_core::server::transfer_fd=off";

/// Installs the subscriber for a command: `RUST_LOG` filters (default
/// [`DEFAULT_FILTER`]), each line to stderr as it comes, as text or as one JSON object
/// per line with the fields at the top level.
pub fn init(config: &LogConfig) {
    install(
        config,
        BoxMakeWriter::new(|| RedactingStderr {
            pending: Vec::new(),
            batch_bytes: 0,
        }),
    );
}

/// [`init`] for the server: lines are formatted where they happen, then redacted and
/// written by a thread of their own, many to a write under load (one access line per
/// request would otherwise cost a system call each). Nothing is dropped: a full queue
/// makes the caller wait. [`flush_server`] writes what waits before the process exits.
pub fn init_server(config: &LogConfig) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        .finish(RedactingStderr {
            pending: Vec::with_capacity(BATCH_BYTES),
            batch_bytes: BATCH_BYTES,
        });
    *SERVER_WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    install(config, BoxMakeWriter::new(writer));
}

/// Writes the server's waiting log lines and stops its log thread (the last step of a
/// shutdown, and before exiting on an error).
pub fn flush_server() {
    drop(
        SERVER_WRITER
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
}

fn install(config: &LogConfig, writer: BoxMakeWriter) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
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
