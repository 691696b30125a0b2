//! Serving connections: the warp filter through hyper's HTTP/1 server directly,
//! because warp's own server sets neither a header read timeout nor a limit on
//! connections.
//!
//! - At most `server.max_connections` connections are open: the accept loop
//!   takes a slot before it accepts, so further clients wait in the kernel's
//!   listen backlog rather than in our memory.
//! - A client has `server.header_timeout_secs` to send a request's headers
//!   (hyper's `header_read_timeout`, counted from the first read, so trickling
//!   bytes does not extend it; it also ends idle keep-alive connections), and
//!   `server.body_timeout_secs` from then on to send the body ([`DeadlineBody`]).
//!   Slow-header (slowloris) and slow-body clients get a 408 and are
//!   disconnected; hyper closes a slow-header connection without a word, so
//!   the 408 is written here, on the stream hyper leaves behind
//!   ([`LingeringIo::handing_over`]). An idle keep-alive connection is closed
//!   silently.
//! - Closing is lingering, as nginx does: when hyper closes a connection whose
//!   request body was not read (a 413, say), the rest of what the client sends
//!   is read and discarded for a bounded time and size ([`LingeringIo`]) before
//!   the socket closes. A client that writes its whole body before reading the
//!   answer (Python's urllib and requests do) then reads the 413 instead of a
//!   broken pipe or a connection reset.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use warp::Filter;

use crate::config::ServerSettings;

/// Limits on each connection and on how many are open.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request's headers (and longest keep-alive idle time).
    pub header_timeout: Duration,
    /// Time to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// Limits as configured in `server`.
    pub fn new(server: &ServerSettings) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            body_timeout: Duration::from_secs(server.body_timeout_secs),
            max_connections: server.max_connections,
        }
    }
}

/// The body was not complete by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(BoxError::from)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout(this.limit).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long, and how many bytes, a closing connection keeps reading and
/// discarding what its client still sends.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 256 * 1024 * 1024;

/// A TCP stream whose shutdown lingers: it half-closes the writing side (so
/// the answer is delivered and the client sees the end of it), then reads and
/// discards until the client closes too, [`LINGER_TIME`] has passed or
/// [`LINGER_BYTES`] were read. Closing with unread data instead makes the
/// kernel send a reset, which can destroy the answer before the client read it.
pub struct LingeringIo {
    /// `None` only once dropped (see [`LingeringIo::handing_over`]).
    stream: Option<tokio::net::TcpStream>,
    linger: Option<(Pin<Box<Sleep>>, u64)>,
    /// Bytes were read since the last answer was written: a request is
    /// being received.
    receiving: bool,
    handoff: Option<Handoff>,
}

/// Where a [`LingeringIo`] leaves its stream when dropped, with whether a
/// request was being received then.
pub type Handoff = Arc<std::sync::Mutex<Option<(tokio::net::TcpStream, bool)>>>;

impl LingeringIo {
    /// Wraps an accepted stream.
    pub fn new(stream: tokio::net::TcpStream) -> LingeringIo {
        LingeringIo {
            stream: Some(stream),
            linger: None,
            receiving: false,
            handoff: None,
        }
    }

    /// Leaves the stream in `handoff` when dropped instead of closing it.
    pub fn handing_over(mut self, handoff: Handoff) -> LingeringIo {
        self.handoff = Some(handoff);
        self
    }

    fn stream(&mut self) -> &mut tokio::net::TcpStream {
        self.stream.as_mut().expect("taken only when dropped")
    }
}

impl Drop for LingeringIo {
    fn drop(&mut self) {
        if let (Some(handoff), Some(stream)) = (&self.handoff, self.stream.take()) {
            *handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some((stream, self.receiving));
        }
    }
}

impl tokio::io::AsyncRead for LingeringIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = tokio::io::AsyncRead::poll_read(Pin::new(this.stream()), cx, buf);
        if buf.filled().len() > before {
            this.receiving = true;
        }
        read
    }
}

impl tokio::io::AsyncWrite for LingeringIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(this.stream()).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.receiving = false;
        }
        written
    }

    // Vectored writes forwarded, and said so: hyper copies every body chunk
    // into one flat buffer of its own when its IO cannot write vectored, so
    // a 12 MB `/api/progress` answer of 5,000 symbols cost another 16 MB of
    // heap (measured with heaptrack). With them it queues the chunks as they are.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(this.stream()).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.receiving = false;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            match Pin::new(this.stream()).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER_TIME)), 0));
        }
        let (deadline, read) = this.linger.as_mut().expect("set above");
        let stream = this.stream.as_mut().expect("taken only when dropped");
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *read >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match tokio::io::AsyncRead::poll_read(Pin::new(&mut *stream), cx, &mut buf) {
                // The client closed its side (or the socket failed): done.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *read += buf.filled().len() as u64,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Answers a client whose request headers did not arrive within `limit`
/// (hyper has given up on the connection): a 408 with the usual JSON error,
/// then a lingering close, so the client reads it rather than a reset.
async fn answer_header_timeout(stream: tokio::net::TcpStream, limit: Duration) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::json!({
        "error": format!("request headers not received within {limit:?}")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut io = LingeringIo::new(stream);
    let _ = tokio::time::timeout(LINGER_TIME * 2, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

/// Serves `filter` on `listener` within `limits` until `shutdown` resolves,
/// then lets open requests finish (at most 30 s).
pub async fn serve_filter<F, R>(
    listener: TcpListener,
    filter: F,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = warp::service(filter.clone());
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|body| DeadlineBody::new(body, body_timeout));
            // HEAD is GET without the body (load balancers and uptime checks
            // use it): every GET route answers it. hyper still knows the
            // request was HEAD and sends the headers only.
            if req.method() == hyper::Method::HEAD {
                *req.method_mut() = hyper::Method::GET;
            }
            tower_service::Service::call(&mut service.clone(), req)
        });
        let handoff = Handoff::default();
        let io = LingeringIo::new(stream).handing_over(handoff.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            ::metrics::gauge!("ohlcd_http_open_connections").increment(1.0);
            // Awaited on its own, so the connection (and its stream) is gone
            // before the handoff is looked at.
            let ended = conn.await;
            let left = handoff.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Err(e) = ended {
                if e.is_timeout() {
                    ::metrics::counter!("ohlcd_http_header_timeouts_total").increment(1);
                    if let Some((stream, true)) = left {
                        answer_header_timeout(stream, header_timeout).await;
                    }
                }
                tracing::debug!(target: "ohlcd::http", %peer, error = %e, "connection closed");
            }
            ::metrics::gauge!("ohlcd_http_open_connections").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open 30 s after shutdown began; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lingering_connection_tells_hyper_it_writes_vectored() {
        // Without it hyper copies every response body into one flat buffer
        // (47 MB of heap for the 12 MB /api/progress of 5000 symbols).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        let io = LingeringIo::new(accepted.unwrap().0);
        assert!(tokio::io::AsyncWrite::is_write_vectored(&io));
        assert!(hyper::rt::Write::is_write_vectored(&TokioIo::new(io)));
    }
}
