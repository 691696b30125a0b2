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
//!   Slow-header (slowloris) and slow-body clients are disconnected.

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
            let req = req.map(|body| DeadlineBody::new(body, body_timeout));
            tower_service::Service::call(&mut service.clone(), req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            ::metrics::gauge!("ohlcd_http_open_connections").increment(1.0);
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    ::metrics::counter!("ohlcd_http_header_timeouts_total").increment(1);
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
