//! One accept loop for every listener (gRPC, HTTP, metrics), with the caps
//! and timeouts that keep a peer from holding the server hostage.
//!
//! - An accept error (EMFILE: out of file descriptors) is retried after a
//!   backoff that doubles from 5 ms to 1 s, never in a spin, and logged at
//!   most once per interval with how many it held back.
//! - At most `max_connections` are open per listener: one more is accepted
//!   and closed at once (the peer sees the connection end, not a hang),
//!   logged the same way. A connection holds its slot until it is dropped.
//! - The other limits ([`Limits`]) are applied by each protocol: HTTP/1's
//!   header and body read timeouts, HTTP/2's preface timeout (here, in
//!   [`Conn`]) and its streams per connection.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::log_every::LogEvery;

/// The caps and timeouts every listener applies, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most connections open at once per listener.
    pub max_connections: usize,
    /// How long an HTTP client has to send a request's head.
    pub header_read_timeout: Duration,
    /// How long an HTTP client has to send a request's body, once its head
    /// is in.
    pub body_read_timeout: Duration,
    /// How long a gRPC client has to send the HTTP/2 connection preface.
    pub http2_preface_timeout: Duration,
    /// The most concurrent streams (calls) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            http2_preface_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1024,
        }
    }
}

/// A listener that accepts within [`Limits::max_connections`].
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    failing: LogEvery,
    full: LogEvery,
}

/// An accepted connection and the slot it holds until dropped.
#[derive(Debug)]
pub struct Accepted {
    /// The connection, `TCP_NODELAY` set.
    pub stream: TcpStream,
    /// Who connected.
    pub peer: SocketAddr,
    /// The listener's slot this connection takes.
    pub slot: OwnedSemaphorePermit,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MOST: Duration = Duration::from_secs(1);

impl Listener {
    /// `name` says which listener in the log (`grpc`, `http`, `metrics`).
    pub fn new(inner: TcpListener, name: &'static str, limits: &Limits) -> Self {
        let max = limits.max_connections.max(1);
        Self {
            inner,
            name,
            slots: Arc::new(Semaphore::new(max)),
            max,
            failing: LogEvery::new(Duration::from_secs(10)),
            full: LogEvery::new(Duration::from_secs(10)),
        }
    }

    /// The next connection within the cap; accept errors are waited out.
    pub async fn accept(&self) -> Accepted {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        if let Some(held) = self.full.ready() {
                            tracing::warn!(listener = self.name, max_connections = self.max, also_refused = held, client.addr = %peer, "connection refused: the listener is at --max-connections (logged at most once every {:?})", self.full.every());
                        }
                        // Closed at once, so the peer does not wait.
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return Accepted { stream, peer, slot };
                }
                Err(e) => {
                    if let Some(held) = self.failing.ready() {
                        tracing::warn!(listener = self.name, error = %e, also_failed = held, retry_in = ?backoff, "accept failed; retrying with backoff (logged at most once every {:?})", self.failing.every());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MOST);
                }
            }
        }
    }

    /// The connections as tonic serves them, each with the HTTP/2 preface
    /// timeout.
    pub fn incoming(self, preface_timeout: Duration) -> impl Stream<Item = io::Result<Conn>> {
        futures_util::stream::unfold(self, move |listener| async move {
            let accepted = listener.accept().await;
            Some((Ok(Conn::new(accepted, preface_timeout)), listener))
        })
    }

    /// The connections as tonic serves them over TLS, each with the HTTP/2
    /// preface timeout (the TLS handshake included). A client that speaks
    /// plaintext to the TLS port is told so at once, instead of being left to
    /// retry its handshake until its deadline: a plaintext HTTP/2 client gets
    /// `FAILED_PRECONDITION` on every call, an HTTP/1 one a 400.
    pub fn incoming_tls(self, preface_timeout: Duration) -> impl Stream<Item = io::Result<Conn>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = self.accept() => accepted,
                    () = tx.closed() => return,
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let peeked =
                        tokio::time::timeout(preface_timeout, accepted.stream.peek(&mut first))
                            .await;
                    match peeked {
                        // A TLS record: the handshake is tonic's.
                        Ok(Ok(1)) if first[0] == 0x16 => {
                            let _ = tx.send(Conn::new(accepted, preface_timeout)).await;
                        }
                        Ok(Ok(1)) => refuse_plaintext(accepted.stream, first[0] == b'P').await,
                        // Closed, failed or silent: nothing to serve.
                        _ => {}
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
    }
}

/// Tells a plaintext client on the TLS port what went wrong: as gRPC when
/// it speaks HTTP/2 (`h2`), else as an HTTP/1.1 400. Bounded in time.
async fn refuse_plaintext(mut stream: TcpStream, h2: bool) {
    const WHY: &str =
        "this port serves gRPC over TLS: connect with TLS (grpcurl without -plaintext)";
    let refuse = async {
        if !h2 {
            use tokio::io::AsyncWriteExt as _;
            let body = format!("{WHY}\n");
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all((head + &body).as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
        let Ok(mut conn) = h2::server::handshake(stream).await else {
            return;
        };
        while let Some(Ok((_, mut respond))) = conn.accept().await {
            let answer = http::Response::builder()
                .header("content-type", "application/grpc")
                .header(
                    "grpc-status",
                    (tonic::Code::FailedPrecondition as i32).to_string(),
                )
                .header("grpc-message", WHY)
                .body(())
                .expect("a static response builds");
            let _ = respond.send_response(answer, true);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), refuse).await;
}

/// The HTTP/2 client preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// An accepted gRPC connection.
///
/// It does not claim vectored writes. h2 copies a DATA frame's payload into
/// its own write buffer only up to 256 bytes when the connection claims
/// vectored writes (1 KiB when it does not), and chains larger payloads as
/// separate buffers. A decision answer is 250–350 bytes, so on a vectored
/// connection every answer past the cliff costs its own write call and
/// flush: measured, a tonic server answering 255 bytes falls from ~100k to
/// ~60k calls/s on one core. Written as the plain stream, answers up to
/// 1 KiB are coalesced into one buffer and many leave in one `write`.
///
/// Until the client has sent the preface's bytes, a read fails once the
/// preface timeout passes, which ends the connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// The preface's deadline and how many of its bytes are still due.
    preface: Option<(Pin<Box<Sleep>>, usize)>,
}

impl Conn {
    fn new(accepted: Accepted, timeout: Duration) -> Self {
        Self {
            stream: accepted.stream,
            _slot: accepted.slot,
            preface: Some((Box::pin(tokio::time::sleep(timeout)), PREFACE_LEN)),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((deadline, _)) = &mut this.preface
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within --http2-preface-timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some((_, due))) = (&read, &mut this.preface) {
            *due = due.saturating_sub(buf.filled().len() - before);
            if *due == 0 {
                this.preface = None;
            }
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
