//! The request and response shapes handlers see: plain data, no server types, so the
//! edge can change without touching handlers.

use super::errors::{ApiError, ErrorCode};
use crate::store::ByteSource;
use bytes::{Bytes, BytesMut};

/// A request as handlers see it; the body arrives separately as a `ByteSource`.
pub struct Request {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    /// Arrived over TLS (for absolute URLs, such as those in notification events).
    pub secure: bool,
}

impl Request {
    /// A header's value if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_head(&self) -> bool {
        self.method == http::Method::HEAD
    }
}

pub enum Body {
    Empty,
    Bytes(Bytes),
    /// A streamed blob (or a range of it) of exactly `len` bytes.
    Stream {
        source: Box<dyn ByteSource>,
        len: u64,
    },
    /// The answer to a HEAD: no bytes, but `Content-Length` says what a GET would send.
    HeadOf(u64),
}

impl Body {
    pub fn content_length(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Stream { len, .. } | Body::HeadOf(len) => *len,
        }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }

    /// A JSON body, or for HEAD just its length.
    pub fn json(self, value: &serde_json::Value, content_type: &str, head: bool) -> Response {
        let bytes = Bytes::from(value.to_string());
        let body = if head {
            Body::HeadOf(bytes.len() as u64)
        } else {
            Body::Bytes(bytes)
        };
        self.header("Content-Type", content_type).body(body)
    }
}

/// Reads a whole body that must stay small (a manifest, a form, a JSON document):
/// refused with 413 as soon as it passes `limit`, declared or not.
pub async fn read_limited(
    req: &Request,
    body: &mut dyn ByteSource,
    limit: usize,
    what: &str,
) -> Result<BytesMut, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("{what} are limited to {limit} bytes"),
        )
    };
    let declared = req
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = body.next_chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
