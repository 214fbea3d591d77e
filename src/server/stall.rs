//! A bound on how long an HTTP connection's writes may make no progress.
//! hyper has no write timeout, and the head timeout covers only requests, so
//! a client that asks for responses and never reads them (pipelined requests
//! for the dashboard script, say) would hold its socket and buffers forever,
//! under no connection limit.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::waiting::WaitingSlot;
use crate::metrics::Metrics;

/// A connection's stream whose writes fail once one has waited `limit`
/// without any progress; any byte written starts the wait over. Reads pass
/// through.
pub(crate) struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Cancelled when the bound is passed, so that a response stream on this
    /// connection ends for the right reason.
    stalled: CancellationToken,
    metrics: Arc<Metrics>,
    /// Told whenever a flush is through, so that a connection whose
    /// response is done waits for its next request only once it is sent.
    waiting: Arc<WaitingSlot>,
}

impl<S> WriteStall<S> {
    pub fn new(
        inner: S,
        limit: Duration,
        stalled: CancellationToken,
        metrics: Arc<Metrics>,
        waiting: Arc<WaitingSlot>,
    ) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
            stalled,
            metrics,
            waiting,
        }
    }

    /// The stream, for a session after an upgrade (it has its own timers).
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.deadline = None;
            return poll;
        }
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.deadline = None;
        if !self.stalled.is_cancelled() {
            self.metrics.http_stalled.fetch_add(1, Relaxed);
            self.stalled.cancel();
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took none of its response",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            self.waiting.sent();
        }
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}
