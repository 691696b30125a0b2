//! A TCP proxy between the daemons and influxd that can misbehave on demand:
//! *stall* (hold every byte in both directions for a while, as a congested
//! or partitioned network does, without closing anything) and *reset* (the
//! next connections that carry response bytes get part of them, then a TCP
//! reset on both sides: a response cut halfway).
//!
//! It lives in the harness only; the daemons just see `influx.url` pointing
//! at it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Shared switches of the proxy.
#[derive(Debug)]
struct Control {
    /// Nothing is forwarded before this instant.
    stall_until: std::sync::Mutex<Option<Instant>>,
    /// Responses still to cut.
    resets_armed: AtomicU64,
    /// Responses cut so far.
    resets_done: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Seed of the per-connection generators (where a response is cut).
    seed: u64,
}

impl Control {
    fn stalled_until(&self) -> Option<Instant> {
        let until = *self.stall_until.lock().expect("not poisoned");
        until.filter(|u| *u > Instant::now())
    }

    /// Takes one armed reset, if any.
    fn take_reset(&self) -> bool {
        self.resets_armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The running proxy; stops accepting when dropped (open pipes end with
/// their connections).
pub(super) struct Proxy {
    /// `http://127.0.0.1:PORT`, what the daemons use as `influx.url`.
    pub url: String,
    control: Arc<Control>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream` (`host:port`).
    pub(super) async fn start(upstream: String, seed: u64) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("proxy: cannot bind")?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            stall_until: std::sync::Mutex::new(None),
            resets_armed: AtomicU64::new(0),
            resets_done: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            seed,
        });
        let ctl = control.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let n = ctl.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(pipe(client, upstream.clone(), ctl.clone(), n));
            }
        });
        Ok(Proxy {
            url: format!("http://{addr}"),
            control,
            accept,
        })
    }

    /// Holds every byte, both ways, on every connection for `d` (from now;
    /// a longer stall already running is kept).
    pub(super) fn stall(&self, d: Duration) {
        let mut until = self.control.stall_until.lock().expect("not poisoned");
        let new = Instant::now() + d;
        if until.is_none_or(|u| u < new) {
            *until = Some(new);
        }
    }

    /// Cuts the next `n` responses halfway with a reset.
    pub(super) fn arm_resets(&self, n: u64) {
        self.control.resets_armed.fetch_add(n, Ordering::SeqCst);
    }

    /// Ends any stall and disarms resets not yet done.
    pub(super) fn heal(&self) {
        *self.control.stall_until.lock().expect("not poisoned") = None;
        self.control.resets_armed.store(0, Ordering::SeqCst);
    }

    /// Responses cut so far.
    pub(super) fn resets_done(&self) -> u64 {
        self.control.resets_done.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub(super) fn connections(&self) -> u64 {
        self.control.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits out a stall, if one is on (looking again every 100 ms: a heal
/// ends it early).
async fn wait_stall(ctl: &Control) {
    while let Some(until) = ctl.stalled_until() {
        let step = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(step.min(Duration::from_millis(100))).await;
    }
}

/// Closes both sockets with a reset (SO_LINGER 0) instead of a FIN.
fn reset(client: TcpStream, upstream: TcpStream) {
    let _ = client.set_zero_linger();
    let _ = upstream.set_zero_linger();
}

/// Forwards one connection both ways until both sides are done.
async fn pipe(mut client: TcpStream, upstream: String, ctl: Arc<Control>, n: u64) {
    let mut server = match TcpStream::connect(&upstream).await {
        Ok(s) => s,
        Err(_) => {
            // influxd is down: the client sees its connection reset.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rng = ChaCha8Rng::seed_from_u64(ctl.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let (mut client_open, mut server_open) = (true, true);
    enum Event {
        Up(std::io::Result<usize>),
        Down(std::io::Result<usize>),
    }
    while client_open || server_open {
        let event = tokio::select! {
            r = client.read(&mut up), if client_open => Event::Up(r),
            r = server.read(&mut down), if server_open => Event::Down(r),
        };
        match event {
            Event::Up(Ok(0) | Err(_)) => {
                client_open = false;
                let _ = server.shutdown().await;
            }
            Event::Up(Ok(k)) => {
                wait_stall(&ctl).await;
                if server.write_all(&up[..k]).await.is_err() {
                    reset(client, server);
                    return;
                }
            }
            Event::Down(Ok(0) | Err(_)) => {
                server_open = false;
                let _ = client.shutdown().await;
            }
            Event::Down(Ok(k)) => {
                wait_stall(&ctl).await;
                if ctl.take_reset() {
                    // Part of what the server sent, never all of it.
                    let part = rng.random_range(0..k);
                    let _ = client.write_all(&down[..part]).await;
                    let _ = client.flush().await;
                    ctl.resets_done.fetch_add(1, Ordering::Relaxed);
                    reset(client, server);
                    return;
                }
                if client.write_all(&down[..k]).await.is_err() {
                    reset(client, server);
                    return;
                }
            }
        }
    }
}

/// `host:port` of an `http://host:port` URL.
pub(super) fn authority(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let addr: SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("not host:port: {rest}"))?;
    Ok(addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every connection's first bytes with
    /// `size` bytes of `x`, then closes.
    async fn upstream(size: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(&vec![b'x'; size]).await;
                });
            }
        });
        addr
    }

    async fn exchange(proxy: &Proxy) -> (usize, std::io::Result<()>) {
        let mut conn = TcpStream::connect(authority(&proxy.url).unwrap())
            .await
            .unwrap();
        conn.write_all(b"GET").await.unwrap();
        let mut got = Vec::new();
        let end = conn.read_to_end(&mut got).await.map(|_| ());
        (got.len(), end)
    }

    #[tokio::test]
    async fn a_reset_cuts_a_response_partway_and_only_the_armed_ones() {
        let proxy = Proxy::start(upstream(10_000).await, 1).await.unwrap();
        assert_eq!(exchange(&proxy).await.0, 10_000);
        proxy.arm_resets(1);
        let (got, end) = exchange(&proxy).await;
        assert!(got < 10_000, "{got} bytes came through");
        assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(proxy.resets_done(), 1);
        assert_eq!(exchange(&proxy).await.0, 10_000);
    }

    #[tokio::test]
    async fn a_stall_holds_every_byte_until_it_ends() {
        let proxy = Proxy::start(upstream(100).await, 1).await.unwrap();
        proxy.stall(Duration::from_secs(600));
        let mut conn = TcpStream::connect(authority(&proxy.url).unwrap())
            .await
            .unwrap();
        conn.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 100];
        let early = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        assert!(early.is_err(), "bytes came through a stall: {early:?}");
        proxy.heal();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100);
    }
}
