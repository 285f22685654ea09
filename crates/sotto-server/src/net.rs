//! Connection hygiene below HTTP: every accepted connection (plain or TLS) is closed when no byte
//! moves either way for a while ([`READ_IDLE`] by default, `Config::read_idle`). That ends idle
//! keep-alive connections, half-open ones whose peer vanished, and requests whose headers or body
//! never finish, while a slow but moving upload or download goes on. Push connections stay up: the
//! server pings them every 30 s and live clients answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a connection may stay silent.
pub const READ_IDLE: Duration = Duration::from_secs(120);

/// A stream whose reads fail with `TimedOut` once `idle` passed without a byte read or written.
#[derive(Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let idle = self.idle;
        self.deadline.as_mut().reset(Instant::now() + idle);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.moved();
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.moved();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A listener whose connections close after a stretch of silence (see the module docs).
#[derive(Debug)]
pub struct IdleListener<L> {
    inner: L,
    idle: Duration,
}

impl<L> IdleListener<L> {
    /// Wraps `inner`; connections close after `idle` without incoming bytes.
    pub fn new(inner: L, idle: Duration) -> Self {
        Self { inner, idle }
    }
}

impl<L: Listener<Addr = SocketAddr>> Listener for IdleListener<L> {
    type Io = IdleTimeout<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (IdleTimeout::new(io, self.idle), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl<L: Listener<Addr = SocketAddr>> Connected<IncomingStream<'_, IdleListener<L>>>
    for crate::Peer
{
    fn connect_info(s: IncomingStream<'_, IdleListener<L>>) -> Self {
        crate::Peer(*s.remote_addr())
    }
}

/// Request bodies larger than this are read to their end (up to [`LINGER_BYTES`]) when the
/// answer is a refusal; smaller ones arrive with their headers anyway.
const LINGER_FROM: u64 = 64 * 1024;
/// How much of a refused request's body is read and dropped before the connection may close.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// How long reading a refused request's body may take.
const LINGER_TIME: Duration = Duration::from_secs(10);

/// A request body the middleware can take back after the handler is done with it.
struct Shared(std::sync::Arc<std::sync::Mutex<Option<axum::body::Body>>>);

impl axum::body::HttpBody for Shared {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let Ok(mut guard) = self.0.lock() else {
            return Poll::Ready(None);
        };
        match guard.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.0.lock() {
            Ok(g) => g.as_ref().map(|b| b.size_hint()).unwrap_or_default(),
            Err(_) => http_body::SizeHint::default(),
        }
    }
}

/// A lingering close for refusals: when a handler refuses a request with a large body it has not
/// read (a 401 before an upload, a 413), the rest of the body is read and dropped (up to
/// [`LINGER_BYTES`], within [`LINGER_TIME`]) before the answer goes. Closing with unread bytes
/// in the socket makes the kernel reset the connection, and the client would see a broken pipe
/// instead of its 401. A client that sent `Expect: 100-continue` has sent no body yet and gets
/// its answer at once.
pub async fn linger(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::body::HttpBody as _;
    let large = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n > LINGER_FROM);
    let expects = req.headers().contains_key(axum::http::header::EXPECT);
    if !large || expects || req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
    let req =
        axum::extract::Request::from_parts(parts, axum::body::Body::new(Shared(slot.clone())));
    let resp = next.run(req).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        let rest = slot.lock().ok().and_then(|mut g| g.take());
        if let Some(body) = rest {
            let mut stream = body.into_data_stream();
            let drain = async {
                use futures_util::StreamExt as _;
                let mut seen = 0u64;
                while let Some(Ok(chunk)) = stream.next().await {
                    seen += chunk.len() as u64;
                    if seen > LINGER_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        }
    }
    resp
}
