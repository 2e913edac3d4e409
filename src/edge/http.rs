//! The per-connection HTTP loop, for plain and TLS streams alike.
//!
//! We implement pingora's `HttpServerApp` by hand (not `ServeHttp`, which buffers
//! whole bodies) so request bodies stream into the store and blobs stream out of it.
//! One request: read the header (within a deadline), hand the body to [`Api::handle`]
//! as a `ByteSource`, write the response with an exact `Content-Length`, then offer
//! the connection back for keep-alive. Pipelined HTTP/1.1 requests are answered in
//! order. A head that cannot be served gets its 4xx/5xx from `refuse`, then a close.

use super::access::{self, Completed};
use super::refuse::{
    answer_and_close, head_over_limits, malformed_head_answer, status_for_parse_error,
};
use crate::api::{Api, Body, Request, Response};
use crate::config::Limits;
use crate::metrics;
use crate::store::{ByteSource, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

/// Chunks read ahead of the network, so the disk read of the next chunk overlaps
/// sending this one. Memory per download stays at a few store chunks.
const READ_AHEAD: usize = 1;
/// After answering a request whose body was not read (refused early), keep reading and
/// discarding it for at most this long and this many bytes before closing: closing with
/// unread data makes the kernel reset the connection, and a client still sending its
/// body would never see our answer (RFC 9112 §9.6, "lingering close").
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

pub struct HttpApp {
    api: Arc<Api>,
    limits: Limits,
    options: HttpServerOptions,
    /// One access-log line per request (`log.access`).
    access_log: bool,
}

/// Marks a connection that has served a request, so the next head on it gets the
/// keep-alive idle time on top of the head deadline.
struct Reused;

impl HttpApp {
    /// The app for HTTP/1.x connections, and for HTTP/2 chosen by TLS ALPN.
    pub fn new(api: Arc<Api>, limits: Limits, access_log: bool) -> HttpApp {
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(Duration::from_secs(limits.keepalive_secs));
        HttpApp {
            api,
            limits,
            options,
            access_log,
        }
    }

    /// The same app for plain connections that sent the HTTP/2 preface (h2c with
    /// prior knowledge). Only the listener decides this, with a deadline: pingora's
    /// own check waits for 24 bytes, which a short HTTP/1 request never sends.
    pub fn with_h2c(&self) -> HttpApp {
        let mut options = self.options.clone();
        options.h2c = true;
        HttpApp {
            api: self.api.clone(),
            limits: self.limits.clone(),
            options,
            access_log: self.access_log,
        }
    }

    /// Reads the next request head within its deadline. `None`: the connection is
    /// done (closed, idle, or answered here because the head could not be served).
    async fn read_head(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ServerSession> {
        let reused = session.take_connection_user_context().is_some();
        let mut deadline = self.limits.header_timeout;
        if reused {
            deadline += Duration::from_secs(self.limits.keepalive_secs);
        }
        session.set_pipelining_enabled(true);
        let read = tokio::time::timeout(deadline, session.read_request());
        // An idle kept-alive connection closes when the server shuts down, so the
        // drain does not wait out its idle time.
        let mut shutdown = shutdown.clone();
        let stopping = async {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let outcome = if reused {
            tokio::select! {
                outcome = read => outcome,
                () = stopping => return None,
            }
        } else {
            read.await
        };
        let status = match outcome {
            Ok(Ok(true)) => {
                let header = session.req_header();
                let head_len = session
                    .as_http1()
                    .map_or(0, |h1| h1.get_headers_raw_bytes().len());
                match head_over_limits(header.raw_path().len(), head_len) {
                    None => return Some(session),
                    Some(status) => status,
                }
            }
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                // The error's context holds the raw head (credentials too): log its kind only.
                let status = status_for_parse_error(&e);
                tracing::debug!(error = ?e.etype, ?status, "request head refused");
                status?
            }
            // A silent reused connection is just idle; a first head that never ends is not.
            Err(_) if reused => return None,
            Err(_) => 408,
        };
        metrics::get()
            .refused_heads
            .with_label_values(&[&status.to_string()])
            .inc();
        if let ServerSession::H1(h1) = session {
            answer_and_close(h1.into_inner(), malformed_head_answer(status).as_bytes()).await;
        }
        None
    }
}

/// A request being answered, in `portcullis_http_requests_in_flight`.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        metrics::get().requests_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::get().requests_in_flight.dec();
    }
}

/// The request body as a `ByteSource`. `Expect: 100-continue` is answered only when a
/// handler starts reading, so a request refused early never makes the client send its body.
struct RequestBody<'a> {
    session: &'a mut ServerSession,
    expect_continue: bool,
    /// Bytes read so far, against `limit` (limits.max_body_bytes).
    read: u64,
    limit: u64,
    /// `Content-Length` already says the body is over the limit: refuse before
    /// `100 Continue`, so the client never sends it.
    declared_too_large: bool,
}

#[async_trait]
impl ByteSource for RequestBody<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        let too_large = StoreError::TooLarge { limit: self.limit };
        if self.declared_too_large {
            return Err(too_large);
        }
        if self.expect_continue {
            self.expect_continue = false;
            self.session
                .write_continue_response()
                .await
                .map_err(|e| StoreError::ClientBody(e.to_string()))?;
        }
        let chunk = self
            .session
            .read_request_body()
            .await
            .map_err(|e| StoreError::ClientBody(e.to_string()))?;
        self.read += chunk.as_ref().map_or(0, |c| c.len() as u64);
        if self.read > self.limit {
            return Err(too_large);
        }
        Ok(chunk)
    }
}

fn request_of(session: &ServerSession) -> Request {
    let header = session.req_header();
    let mut headers = header.headers.clone();
    // HTTP/2 carries the host in `:authority`; handlers see it as `Host` either way.
    if !headers.contains_key(http::header::HOST) {
        let authority = header.uri.authority().map(|a| a.as_str());
        if let Some(host) = authority.and_then(|a| http::HeaderValue::from_str(a).ok()) {
            headers.insert(http::header::HOST, host);
        }
    }
    Request {
        method: header.method.clone(),
        path: header.uri.path().to_string(),
        query: header.uri.query().map(str::to_string),
        headers,
        secure: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
    }
}

/// Reads a blob's chunks in a task of its own, `READ_AHEAD` chunks ahead of the
/// consumer. The task stops when the consumer goes away (client disconnected).
fn read_ahead(
    mut source: Box<dyn ByteSource>,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        loop {
            let chunk = match source.next_chunk().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    receiver
}

/// Writes status, headers and body, counting body bytes in `sent`. An error means
/// the connection is unusable.
async fn write_response(
    session: &mut ServerSession,
    response: Response,
    head: bool,
    sent: &mut u64,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(response.status, Some(response.headers.len() + 1))?;
    for (name, value) in response.headers {
        header.append_header(name, value)?;
    }
    // 204 must not carry a Content-Length (RFC 9110 §8.6).
    if response.status != 204 {
        header.insert_header("Content-Length", response.body.content_length())?;
    }
    session.write_response_header(Box::new(header)).await?;
    match response.body {
        Body::Empty | Body::HeadOf(_) => {}
        Body::Bytes(_) if head => {}
        Body::Bytes(bytes) => {
            let len = bytes.len() as u64;
            session.write_response_body(bytes, true).await?;
            *sent = len;
        }
        Body::Stream { .. } if head => {}
        Body::Stream { source, len } => {
            let mut chunks = read_ahead(source);
            let mut remaining = len;
            while remaining > 0 {
                let chunk = match chunks.recv().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        return Err(pingora::Error::because(
                            pingora::ErrorType::ReadError,
                            "reading blob from store",
                            e,
                        ))
                    }
                    None => {
                        return pingora::Error::e_explain(
                            pingora::ErrorType::ReadError,
                            "blob reader stopped early",
                        )
                    }
                };
                let len = chunk.len() as u64;
                remaining -= len;
                session.write_response_body(chunk, remaining == 0).await?;
                *sent += len;
            }
        }
    }
    Ok(())
}

/// Discards the unread rest of a refused request body (bounded), then keeps the
/// connection only if the body really ended.
async fn linger(session: &mut ServerSession, continue_pending: bool) {
    // A client waiting for the `100 Continue` we never sent has nothing in flight.
    if !continue_pending {
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        let mut drained = 0;
        while drained < LINGER_BYTES && !session.is_body_done() {
            match tokio::time::timeout_at(deadline, session.read_request_body()).await {
                Ok(Ok(Some(chunk))) => drained += chunk.len(),
                _ => break,
            }
        }
    }
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
}

#[async_trait]
impl HttpServerApp for HttpApp {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let mut session = self.read_head(session, shutdown).await?;
        // The parser has applied the client's wish (HTTP/1.0 closes unless it asked
        // for keep-alive; `Connection: close`); only the idle time is ours to set.
        let keepalive = (session.get_keepalive().is_some() && !*shutdown.borrow())
            .then_some(self.limits.keepalive_secs);
        session.set_keepalive(keepalive);
        // A body the handler did not read is drained after the answer (`linger`), which
        // keeps the connection when the body ends in time: pipelined requests behind
        // it are not lost to pingora's close-if-unread default.
        session.set_close_on_response_before_downstream_finish(false);
        session.set_read_timeout(Some(self.limits.read_timeout));
        session.set_write_timeout(Some(self.limits.write_timeout));
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());

        let started = std::time::Instant::now();
        let _in_flight = InFlight::start();
        let req = request_of(&session);
        let expect_continue = req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let limit = self.limits.max_body_bytes;
        let declared = req
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok());
        let mut body = RequestBody {
            session: &mut session,
            expect_continue,
            read: 0,
            limit,
            declared_too_large: declared.is_some_and(|n| n > limit),
        };
        let (response, note) = metrics::noted(self.api.handle(&req, client, &mut body)).await;
        let (continue_pending, received) = (body.expect_continue, body.read);
        let status = response.status;
        if continue_pending && !session.is_body_done() {
            // The client holds its body back until `100 Continue`, which it will not get:
            // say now that the connection closes after this answer.
            session.set_keepalive(None);
        }
        let mut sent = 0;
        let written = write_response(&mut session, response, req.is_head(), &mut sent).await;
        if let Err(e) = &written {
            tracing::debug!(error = %e, method = %req.method, path = %req.path, "writing response failed");
        } else if !session.is_body_done() {
            linger(&mut session, continue_pending).await;
        }
        let completed = Completed {
            method: &req.method,
            path: &req.path,
            query: req.query.as_deref(),
            client,
            user_agent: req.header("user-agent"),
            status,
            received,
            sent,
            elapsed: started.elapsed(),
            broken: written.is_err(),
            note,
        };
        access::record(&completed, self.access_log);
        if written.is_err() {
            return None;
        }
        let mut persistent = HttpPersistentSettings::for_session(&session);
        persistent.set_user_context(Box::new(Reused));
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(e) => {
                tracing::debug!(error = %e, "finishing response failed");
                None
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}
