//! A deadline for the HTTP/2 connection preface on TLS connections that chose `h2`.
//!
//! pingora runs the h2 handshake without a time limit, and the handshake waits for the
//! client's 24-byte preface: a client that negotiates `h2` by ALPN and then sends
//! nothing would hold its connection for ever. This wrapper fails the reads with
//! `TimedOut` once the deadline passes before the preface has arrived; after that it
//! only forwards. (Plain h2c needs none of this: the listener reads the preface itself
//! before it hands the connection on.)

use super::sniff::H2_PREFACE;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct PrefaceDeadline {
    inner: Stream,
    /// Until the preface has been read; `None` afterwards.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl PrefaceDeadline {
    pub fn new(inner: Stream, deadline: Instant) -> PrefaceDeadline {
        PrefaceDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            read: 0,
        }
    }
}

impl AsyncRead for PrefaceDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if result.is_ready() {
                this.read += buf.filled().len() - before;
                if this.read >= H2_PREFACE.len() {
                    this.deadline = None;
                }
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no HTTP/2 preface before the deadline",
                )));
            }
        }
        result
    }
}

impl AsyncWrite for PrefaceDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PrefaceDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for PrefaceDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for PrefaceDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for PrefaceDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for PrefaceDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for PrefaceDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

impl Peek for PrefaceDeadline {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn silent_client_times_out_and_a_prompt_one_never_does() {
        tokio::time::pause();
        let (client, server) = tokio::io::duplex(1024);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = PrefaceDeadline::new(Box::new(server), deadline);
        let mut buf = [0u8; 64];
        let silent = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(silent.kind(), std::io::ErrorKind::TimedOut);

        let (mut client2, server2) = tokio::io::duplex(1024);
        let mut stream =
            PrefaceDeadline::new(Box::new(server2), Instant::now() + Duration::from_secs(5));
        client2.write_all(H2_PREFACE).await.unwrap();
        let mut preface = vec![0u8; H2_PREFACE.len()];
        stream.read_exact(&mut preface).await.unwrap();
        // Past the deadline, a connection that sent its preface still reads.
        tokio::time::advance(Duration::from_secs(60)).await;
        client2.write_all(b"more").await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"more");
        drop(client);
    }
}
