//! A connection whose writes fail once its peer has taken nothing for a while (nginx's
//! `send_timeout`).
//!
//! A client that keeps its connection open but stops reading fills its socket buffers, and the
//! server's writes wait forever: TCP keepalive does not end it (the peer still acknowledges, with
//! a zero window), and the edge's answers streamed from an origin would hold the client's
//! connection, an origin connection and two shares of the node's descriptor plan for as long as
//! the client likes. Wrapped in [`SendTimeout`], a write (or flush) that makes no progress for
//! the timeout fails with `TimedOut`, and hyper closes the connection. A slow reader is not cut:
//! each write that moves any bytes starts the wait again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, whose writes fail after `timeout` without progress.
///
/// Contract: the caller polls a pending write side again until it is ready (as hyper does: the
/// timer wakes it by the deadline too), so an armed timer always belongs to the stall at hand.
/// Progress is a call that returned ready: under TLS, which may take bytes and still answer
/// pending while its own buffer drains, a reader slower than about the TLS buffer (~64 KiB) per
/// timeout can be cut although it reads.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    /// One timer for the connection's life, reset when a stall begins.
    stall: Pin<Box<tokio::time::Sleep>>,
    /// Whether a write, flush or shutdown is waiting since `stall` was last reset.
    stalled: bool,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            timeout,
            stall: Box::pin(tokio::time::sleep(timeout)),
            stalled: false,
        }
    }

    /// `attempt`'s result, or, when it is still pending once the wait ran out, the timeout.
    fn watch<T>(&mut self, cx: &mut Context<'_>, attempt: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(result) => {
                self.stalled = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                if !self.stalled {
                    self.stalled = true;
                    self.stall.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                match self.stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took nothing for {timeout:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_fails_the_write_after_the_timeout() {
        // A 1 KiB pipe: the peer's socket buffers, full once it stops reading.
        let (near, _far) = tokio::io::duplex(1024);
        let mut conn = SendTimeout::new(near, TIMEOUT);
        conn.write_all(&[7; 1024]).await.expect("fits the buffer");
        let started = tokio::time::Instant::now();
        let error = conn.write_all(&[7; 1]).await.expect_err("the peer reads nothing");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(1024);
        // Takes 512 bytes every 40 s: slower than the writer, never still for the timeout.
        let reader = tokio::spawn(async move {
            let mut taken = 0;
            let mut chunk = [0u8; 512];
            while taken < 8 * 1024 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                taken += far.read(&mut chunk).await.expect("read");
            }
            taken
        });
        let mut conn = SendTimeout::new(near, TIMEOUT);
        conn.write_all(&[7; 8 * 1024])
            .await
            .expect("every write made progress in time");
        assert_eq!(reader.await.expect("reader"), 8 * 1024);
    }
}
