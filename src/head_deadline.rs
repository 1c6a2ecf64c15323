//! The request-head deadline: a client must send a whole request head within
//! `server.request_header_timeout_seconds` of its first byte (of the accept, for a
//! connection's first request), or its connection is answered 408 and closed. Pingora bounds
//! each read of a head (60 s) but not the head as a whole, so a slow-loris client trickling a
//! byte every few seconds would hold a connection and its buffers for ever.
//!
//! Every accepted connection's stream is wrapped ([`HeadGuard`]) by a thin app around
//! Pingora's HTTP proxy ([`Guarded`]); the proxy tells the stream's [`HeadClock`] when a head
//! was read (`request_filter`) and when a request ended (`logging`), and the stream arms the
//! deadline while a head is being read. Bodies have their own limit (the body idle timeout).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a connection is between requests, as the proxy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// A head is being read: the deadline runs.
    Head = 0,
    /// A head was read; the request (its body, its answer, an upgraded tunnel) goes on
    /// without a head deadline.
    Request = 1,
    /// A request ended; the next head's deadline starts with its first byte.
    Idle = 2,
}

/// The phase of one connection, shared between its stream and the proxy's phases.
#[derive(Debug)]
pub struct HeadClock(AtomicU8);

impl HeadClock {
    fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Head,
            1 => Phase::Request,
            _ => Phase::Idle,
        }
    }

    fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::Release);
    }

    /// The head of the current request was read whole.
    pub fn head_read(&self) {
        self.set(Phase::Request);
    }

    /// The current request ended; a next one may follow on the connection.
    pub fn request_done(&self) {
        self.set(Phase::Idle);
    }

    /// The clock of the connection a Pingora session runs on, when it is guarded.
    pub fn of(session: &pingora::protocols::http::ServerSession) -> Option<&HeadClock> {
        let stream = session.stream()?;
        stream
            .as_any()
            .downcast_ref::<HeadGuard>()
            .map(|g| g.clock.as_ref())
    }
}

/// What a connection cut at its head deadline is answered, and where it is counted.
#[derive(Clone)]
pub struct Timeout {
    pub limit: Duration,
    /// The answer written before closing (best effort: a client that reads nothing gets none).
    pub answer: Arc<[u8]>,
    pub counter: prometheus::IntCounter,
}

/// A client connection with a request-head deadline.
pub struct HeadGuard {
    inner: Stream,
    clock: Arc<HeadClock>,
    timeout: Timeout,
    /// The running deadline of the head being read, once armed.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HeadGuard {
    /// Wraps a just-accepted connection: its first head's deadline runs from now.
    pub fn new(inner: Stream, timeout: Timeout) -> HeadGuard {
        let sleep = Some(Box::pin(tokio::time::sleep(timeout.limit)));
        HeadGuard {
            inner,
            clock: Arc::new(HeadClock(AtomicU8::new(Phase::Head as u8))),
            timeout,
            sleep,
        }
    }
}

impl fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .field("phase", &self.clock.phase())
            .finish()
    }
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match this.clock.phase() {
            Phase::Request => {
                this.sleep = None;
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            Phase::Idle => {
                this.sleep = None;
                let before = buf.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    // The first byte of the next head: its deadline starts now.
                    this.clock.set(Phase::Head);
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.timeout.limit)));
                }
                return r;
            }
            Phase::Head => {}
        }
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.timeout.limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timeout.counter.inc();
            log::info!("request head not received whole in time: connection closed with 408");
            // Best effort, without waiting: the socket's buffer takes a few hundred bytes.
            let _ = Pin::new(&mut this.inner).poll_write(cx, &this.timeout.answer);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head timeout",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeadGuard {
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
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// A Pingora app whose connections get a request-head deadline.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub timeout: Timeout,
}

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back already wrapped.
        let stream: Stream = if session.as_any().is::<HeadGuard>() {
            session
        } else {
            Box::new(HeadGuard::new(session, self.timeout.clone()))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
