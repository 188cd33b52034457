//! The accepted TCP stream, as HTTP/2 should write to it.
//!
//! h2 copies a DATA frame's payload into its own write buffer only up to
//! 256 bytes when the connection claims vectored writes (1 KiB when it does
//! not), and chains larger payloads as separate buffers. A decision answer
//! is 250–350 bytes, so on a vectored connection every answer past the
//! cliff costs its own write call and flush: measured, a tonic server
//! answering 255 bytes falls from ~100k to ~60k calls/s on one core. This
//! wrapper writes as the plain stream does but does not claim vectored
//! writes, so answers up to 1 KiB are coalesced into one buffer and many
//! answers leave in one `write`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP connection that does not claim vectored writes.
#[derive(Debug)]
pub struct Conn(pub TcpStream);

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}
