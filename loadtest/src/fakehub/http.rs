//! A minimal HTTP/1.1 server side, hand-written so that every byte on the wire is ours
//! to withhold, corrupt or cut off (the faults need that; a full server library would
//! tidy it away).
//!
//! Requests: a head of at most [`MAX_HEAD`] bytes, then a `Content-Length` body of at
//! most [`MAX_BODY`] bytes (the control POSTs); chunked bodies are refused. Keep-alive
//! and pipelining work. Responses always carry `Content-Length`; file bodies are
//! streamed in [`CHUNK`]-sized pieces and never held in memory whole.
//!
//! Written apart from the server's own parsers (`portcullis::api`) on purpose: a test
//! double that shared the code under test would share its bugs.

use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// Longest request body accepted (fault lists are small).
pub const MAX_BODY: usize = 1 << 20;
/// Piece size for streaming file bodies.
pub const CHUNK: usize = 256 * 1024;
/// How long a closing connection waits for the client to close its side.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    /// Header names and values (values decoded lossily; they are only compared or logged).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query part of the target (empty without one).
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Whether the client wants the connection closed after this exchange.
    pub fn wants_close(&self) -> bool {
        let has_token = |token: &str| {
            self.header_values("connection")
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.minor_version == 0 {
            !has_token("keep-alive")
        } else {
            has_token("close")
        }
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed or the socket failed: nothing to answer.
    Closed,
    /// The request is unacceptable: answer with this status and message, then close.
    Refused(u16, String),
}

/// What to send.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// A response body.
#[derive(Debug)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of the file at `path` from `offset` on.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn json(self, value: &serde_json::Value) -> Response {
        self.bytes("application/json", value.to_string().into_bytes())
    }

    pub fn bytes(mut self, content_type: &str, body: Vec<u8>) -> Response {
        self.body = Body::Bytes(body);
        self.header("Content-Type", content_type)
    }

    pub fn text(self, text: &str) -> Response {
        self.bytes("text/plain; charset=utf-8", text.as_bytes().to_vec())
    }
}

/// How a response goes out: the levers the faults pull. The default is a faithful send.
#[derive(Debug, Default, Clone)]
pub struct Shaping {
    /// Wait this long before the response head.
    pub head_delay: Option<Duration>,
    /// Send at most this many body bytes (the head still announces the full length).
    pub body_limit: Option<u64>,
    /// Flip bits in the body so its digest no longer matches (its length stays).
    pub corrupt: bool,
    /// Throttle the body to this rate.
    pub bytes_per_sec: Option<u64>,
}

/// One accepted connection: the socket and the bytes read but not yet consumed.
pub struct Connection {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads the next request; `Ok(None)` when the client closed between requests.
    pub async fn next_request(&mut self) -> Result<Option<Request>, ReadError> {
        let (mut request, head_len, body_len) = loop {
            match parse_head(&self.buffer)? {
                Some(parsed) => break parsed,
                None if self.buffer.len() >= MAX_HEAD => {
                    return Err(ReadError::Refused(
                        431,
                        format!("request head longer than {MAX_HEAD} bytes"),
                    ))
                }
                None => {}
            }
            if self.fill().await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Closed)
                };
            }
        };
        let expects_continue = request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue && body_len > 0 && self.buffer.len() < head_len + body_len {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ReadError::Closed)?;
        }
        while self.buffer.len() < head_len + body_len {
            if self.fill().await? == 0 {
                return Err(ReadError::Closed);
            }
        }
        request.body = self.buffer[head_len..head_len + body_len].to_vec();
        self.buffer.drain(..head_len + body_len);
        Ok(Some(request))
    }

    async fn fill(&mut self) -> Result<usize, ReadError> {
        let mut piece = [0u8; 8192];
        let n = self
            .stream
            .read(&mut piece)
            .await
            .map_err(|_| ReadError::Closed)?;
        self.buffer.extend_from_slice(&piece[..n]);
        Ok(n)
    }

    /// Reads and discards until the client closes: a request that is never answered.
    pub async fn wait_for_client_close(&mut self) {
        let mut sink = [0u8; 8192];
        while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
    }

    /// Sends `response` (its head only for HEAD requests) shaped by `shaping`.
    pub async fn send(
        &mut self,
        response: &Response,
        head_only: bool,
        close: bool,
        shaping: &Shaping,
    ) -> io::Result<()> {
        if let Some(delay) = shaping.head_delay {
            tokio::time::sleep(delay).await;
        }
        let head = render_head(response, close);
        self.stream.write_all(head.as_bytes()).await?;
        if head_only {
            return self.stream.flush().await;
        }
        let total = response.body.len();
        let limit = shaping.body_limit.map_or(total, |l| l.min(total));
        let piece = shaping
            .bytes_per_sec
            .map_or(CHUNK, |rate| usize::try_from(rate / 10).unwrap_or(CHUNK))
            .clamp(1, CHUNK);
        let mut source = BodySource::open(&response.body).await?;
        let mut buf = vec![0u8; piece.min(usize::try_from(limit).unwrap_or(piece)).max(1)];
        let started = Instant::now();
        let mut sent: u64 = 0;
        while sent < limit {
            let want = usize::try_from(limit - sent).map_or(buf.len(), |left| left.min(buf.len()));
            let n = source.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body source ended before its announced length",
                ));
            }
            if shaping.corrupt {
                buf[0] ^= 0xff;
            }
            self.stream.write_all(&buf[..n]).await?;
            sent += n as u64;
            if let Some(rate) = shaping.bytes_per_sec {
                let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
                tokio::time::sleep_until(started + due).await;
            }
        }
        self.stream.flush().await
    }

    /// Ends the connection with a FIN, as a server that closes cleanly does. What the
    /// client still sends is read and dropped for a while first: closing with unread
    /// data would make the kernel send an RST that can destroy the answer in flight.
    pub async fn close_cleanly(mut self) {
        if self.stream.shutdown().await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, self.wait_for_client_close()).await;
        }
    }

    /// Ends the connection with an RST (SO_LINGER 0): a connection broken mid-body.
    pub fn reset(self) {
        // Deprecated because a positive linger blocks on drop; a zero linger never does.
        #[allow(deprecated)]
        if let Err(e) = self.stream.set_linger(Some(Duration::ZERO)) {
            eprintln!("fake-hub: cannot set SO_LINGER 0 for a reset: {e}");
        }
        drop(self.stream);
    }
}

/// Parses a complete head at the start of `buffer`: the request (without body), the head
/// length and the announced body length. `Ok(None)` while the head is incomplete.
fn parse_head(buffer: &[u8]) -> Result<Option<(Request, usize, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Refused(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(ReadError::Refused(400, format!("malformed request: {e}"))),
    };
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        minor_version: parsed.version.unwrap_or(1),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
    };
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Refused(
            501,
            "Transfer-Encoding is not supported; send a Content-Length body".to_string(),
        ));
    }
    let body_len = content_length(&request)?;
    if body_len > MAX_BODY {
        return Err(ReadError::Refused(
            413,
            format!("request body longer than {MAX_BODY} bytes"),
        ));
    }
    Ok(Some((request, head_len, body_len)))
}

/// The announced body length: 0 without `Content-Length`; repeated values must agree.
fn content_length(request: &Request) -> Result<usize, ReadError> {
    let mut length = None;
    for value in request.header_values("content-length") {
        let parsed: usize = value
            .trim()
            .parse()
            .map_err(|_| ReadError::Refused(400, format!("invalid Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(ReadError::Refused(
                400,
                "conflicting Content-Length headers".to_string(),
            ));
        }
        length = Some(parsed);
    }
    Ok(length.unwrap_or(0))
}

fn render_head(response: &Response, close: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads a [`Body`] piece by piece.
enum BodySource<'a> {
    Memory(&'a [u8]),
    File(File),
}

impl<'a> BodySource<'a> {
    async fn open(body: &'a Body) -> io::Result<BodySource<'a>> {
        Ok(match body {
            Body::Empty => BodySource::Memory(&[]),
            Body::Bytes(bytes) => BodySource::Memory(bytes),
            Body::File { path, offset, .. } => {
                let mut file = File::open(path).await?;
                file.seek(io::SeekFrom::Start(*offset)).await?;
                BodySource::File(file)
            }
        })
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BodySource::Memory(rest) => {
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                *rest = &rest[n..];
                Ok(n)
            }
            BodySource::File(file) => file.read(buf).await,
        }
    }
}

/// The byte range a `Range` header selects from a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeChoice {
    /// No usable single range: send everything (RFC 9110 lets a server ignore the rest).
    Full,
    /// Bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// A well-formed range that lies outside the body: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (`bytes=N-`, `bytes=N-M`, `bytes=-N`) against `len`.
/// Malformed values and multiple ranges give [`RangeChoice::Full`].
pub fn parse_range(header: Option<&str>, len: u64) -> RangeChoice {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeChoice::Full;
    };
    if spec.contains(',') {
        return RangeChoice::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeChoice::Full;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                RangeChoice::Unsatisfiable
            } else {
                RangeChoice::Partial {
                    start: len - suffix.min(len),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                RangeChoice::Full
            } else if start >= len {
                RangeChoice::Unsatisfiable
            } else {
                RangeChoice::Partial {
                    start,
                    end: end.map_or(len - 1, |e| e.min(len - 1)),
                }
            }
        }
        _ => RangeChoice::Full,
    }
}

/// Decodes a query string into (name, value) pairs (`+` is a space, `%XX` a byte).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeChoice::*;
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(r("bytes=0-"), Partial { start: 0, end: 99 });
        assert_eq!(r("bytes=10-19"), Partial { start: 10, end: 19 });
        assert_eq!(r("bytes=90-500"), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-10"), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000"), Partial { start: 0, end: 99 });
        assert_eq!(r("bytes=100-"), Unsatisfiable);
        assert_eq!(r("bytes=150-160"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=20-10"), Full);
        assert_eq!(r("bytes=0-1,5-6"), Full);
        assert_eq!(r("bytes=abc"), Full);
        assert_eq!(r("bytes=1-x"), Full);
        assert_eq!(r("bytes=+1-2"), Full);
        assert_eq!(r("items=0-1"), Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_pairs("scope=repository%3Aa%2Fb%3Apull&scope=x+y&service=s&flag"),
            vec![
                ("scope".into(), "repository:a/b:pull".into()),
                ("scope".into(), "x y".into()),
                ("service".into(), "s".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert!(query_pairs("").is_empty());
        assert_eq!(query_pairs("a=%2B")[0].1, "+");
    }

    fn head(text: &str) -> Result<Option<(Request, usize, usize)>, ReadError> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn heads() {
        let (request, head_len, body_len) =
            head("POST /x?y=1 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
                .unwrap()
                .unwrap();
        assert_eq!((request.path(), request.query()), ("/x", "y=1"));
        assert_eq!((head_len, body_len), (62, 3));
        assert!(request.wants_close());
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let http10 = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert!(http10.wants_close());
        for (bad, status) in [
            ("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            ("GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            ("GET\0 / HTTP/1.1\r\n\r\n", 400),
        ] {
            match head(bad) {
                Err(ReadError::Refused(s, _)) => assert_eq!(s, status, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
