//! A request body that must arrive by a deadline: a client that sends a
//! head and then nothing (or a trickle) cannot hold a connection forever.

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn StdError + Send + Sync>;

/// `B`, failing with [`TimedOut`] once its deadline passes. The timer is
/// armed only if the body has to be waited for, so a body that arrived with
/// its head costs one clock read.
pub struct Deadline<B> {
    inner: B,
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The body was not sent in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not sent in time")]
pub struct TimedOut;

/// Whether `e` (or what it wraps) is a [`TimedOut`].
pub fn passed(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<TimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl<B> Deadline<B> {
    /// `inner`, due within `timeout` from now.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            at: Instant::now() + timeout,
            timer: None,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = this.at;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(TimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
