//! Connection limits for both ports (gRPC and HTTP): at most `connections.max_per_port`
//! connections at once per port, connections that carry no request closed after
//! `connections.idle_timeout`, TLS handshakes cut after `connections.handshake_timeout`, so
//! that sockets nobody uses cannot take the file descriptors agents and people need.
//!
//! How it works. Each port has a [`Tracker`] that its accept loop goes through
//! ([`Tracker::accept`], [`Tracker::incoming`]). Every accepted socket is wrapped in a
//! [`Conn`], which knows when its connection was last *busy*: a request is busy from the
//! moment its headers arrive until its response body is sent or dropped (a [`Track`]
//! service around the routes counts them, so a long poll or an event stream keeps its
//! connection busy however quiet it is). A connection with no request under way is *idle*.
//! - An idle connection is closed once it has been idle for `idle_timeout`, whether or not
//!   its TLS handshake ever finished, and whatever keep-alive pings it answers.
//! - When a port is full, a new connection closes the connection that has been idle the
//!   longest (an idle socket, or a client between two requests) to make room; only when every
//!   connection is busy is the new one refused (closed at once). So a crowd of idle sockets
//!   can delay a good client by one round trip at most, and never takes a long poll away
//!   from an agent.
//! - The cap is lowered at start when the process may not open enough files for its full
//!   ports plus what the coordinator needs itself ([`RESERVED_FDS`]); the soft limit on open
//!   files is first raised to the hard one.
//!
//! Evicted and refused connections are counted and logged (a warning at most every ten
//! seconds per port), so that an admin sees a port under pressure.

use anyhow::bail;
use axum::http::{Request, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// File descriptors kept for everything but client connections (the store's connections,
/// log and TLS files, `git` and mail) when the cap is derived from the open-files limit.
pub const RESERVED_FDS: u64 = 64;

/// The `connections:` section of coordinator.yaml: limits that apply to each port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// At most this many connections at once on each port (gRPC, HTTP). Default 16384
    /// (room for the 10,000 idle agents labwire-bench measures, and clients); lowered at start
    /// when the open-files limit does not allow that many on every open port.
    #[serde(default = "default_max")]
    pub max_per_port: usize,
    /// How long a client has to finish its TLS handshake. Default `10s`.
    #[serde(default = "default_handshake", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection with no request under way for this long is closed. Default `2m`.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn default_max() -> usize {
    16384
}
fn default_handshake() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_secs(120)
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_per_port: default_max(),
            handshake_timeout: default_handshake(),
            idle_timeout: default_idle(),
        }
    }
}

impl ConnectionLimits {
    /// Checks the values; errors name the key and what is expected.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_per_port == 0 {
            bail!("connections.max_per_port must be at least 1 (got 0)");
        }
        for (key, v) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if v < Duration::from_secs(1) {
                bail!(
                    "connections.{key} must be at least 1s (got {})",
                    humantime::format_duration(v)
                );
            }
        }
        Ok(())
    }

    /// The cap applied to each of `ports` ports: `max_per_port`, or less when the process may
    /// open only `nofile` files (full ports plus [`RESERVED_FDS`]); never under 4.
    pub fn effective_max(&self, nofile: Option<u64>, ports: u64) -> usize {
        match nofile {
            Some(n) => {
                let budget = (n.saturating_sub(RESERVED_FDS) / ports.max(1)).max(4);
                self.max_per_port
                    .min(usize::try_from(budget).unwrap_or(usize::MAX))
            }
            None => self.max_per_port,
        }
    }
}

/// The open-files limit of this process, after raising the soft limit to the hard one
/// (once per process). `None` when it cannot be read.
pub fn open_files_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            return Some(hard);
        }
        Some(soft)
    })
}

/// What a tracker knows about one connection.
struct Entry {
    /// Requests under way.
    busy: AtomicUsize,
    /// When the last request ended (or the connection was accepted), in ms since `epoch`.
    idle_since: AtomicU64,
    /// The tracker's clock origin.
    epoch: Instant,
    /// Cancelled to close the connection.
    close: CancellationToken,
    /// Who authenticated on it (a lab), so that all its connections can be closed at once.
    owner: OnceLock<String>,
}

impl Entry {
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since.load(Ordering::Acquire)) + idle
    }
}

/// Marks a connection busy while it lives (one request under way).
pub struct Busy(Arc<Entry>);

impl Busy {
    fn start(e: Arc<Entry>) -> Busy {
        e.busy.fetch_add(1, Ordering::AcqRel);
        Busy(e)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = self.0.epoch.elapsed().as_millis() as u64;
        self.0.idle_since.store(ms, Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Evictions and refusals since the last warning.
struct Pressure {
    evicted: u64,
    refused: u64,
    next_warning: Instant,
}

/// The connections of one port and the limits on them.
pub struct Tracker {
    port: &'static str,
    max: usize,
    idle: Duration,
    epoch: Instant,
    conns: Mutex<HashMap<SocketAddr, Arc<Entry>>>,
    pressure: Mutex<Pressure>,
}

impl Tracker {
    /// A tracker for `port` (a name for logs: `gRPC`, `HTTP`) with `limits`, the cap lowered
    /// to what the open-files limit allows for `ports` ports (1 without the HTTP side, 2 with).
    pub fn new(port: &'static str, limits: &ConnectionLimits, ports: u64) -> Arc<Tracker> {
        let nofile = open_files_limit();
        let max = limits.effective_max(nofile, ports);
        if max < limits.max_per_port {
            tracing::warn!(
                port,
                max,
                configured = limits.max_per_port,
                open_files = nofile,
                "connections.max_per_port lowered to fit the open-files limit \
                 (raise LimitNOFILE to allow more)"
            );
        }
        tracing::info!(
            port,
            max,
            idle_timeout = %humantime::format_duration(limits.idle_timeout),
            handshake_timeout = %humantime::format_duration(limits.handshake_timeout),
            "connection limits"
        );
        Self::with_max(port, max, limits.idle_timeout)
    }

    /// A tracker with exactly `max` connections (no open-files check).
    pub fn with_max(port: &'static str, max: usize, idle: Duration) -> Arc<Tracker> {
        let epoch = Instant::now();
        Arc::new(Tracker {
            port,
            max: max.max(1),
            idle,
            epoch,
            conns: Mutex::new(HashMap::new()),
            pressure: Mutex::new(Pressure {
                evicted: 0,
                refused: 0,
                next_warning: epoch,
            }),
        })
    }

    /// The cap on this port.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open (and not being closed) now.
    pub fn open(&self) -> usize {
        lock(&self.conns)
            .values()
            .filter(|e| !e.close.is_cancelled())
            .count()
    }

    /// Takes a new connection from `peer` in: makes room by closing the connection idle the
    /// longest when the port is full; `None` when every connection is busy.
    fn admit(&self, peer: SocketAddr) -> Option<Arc<Entry>> {
        let mut conns = lock(&self.conns);
        let live = conns.values().filter(|e| !e.close.is_cancelled()).count();
        if live >= self.max {
            let victim = conns
                .values()
                .filter(|e| !e.close.is_cancelled() && e.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|e| e.idle_since.load(Ordering::Acquire));
            match victim {
                Some(v) => {
                    v.close.cancel();
                    self.note(true);
                }
                None => {
                    self.note(false);
                    return None;
                }
            }
        }
        let entry = Arc::new(Entry {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            epoch: self.epoch,
            close: CancellationToken::new(),
            owner: OnceLock::new(),
        });
        // A stale entry under the same address belongs to a socket already gone.
        if let Some(old) = conns.insert(peer, entry.clone()) {
            old.close.cancel();
        }
        Some(entry)
    }

    /// Counts an eviction (`true`) or a refusal and warns at most every ten seconds.
    fn note(&self, evicted: bool) {
        let mut p = lock(&self.pressure);
        if evicted {
            p.evicted += 1;
        } else {
            p.refused += 1;
        }
        let now = Instant::now();
        if now >= p.next_warning {
            tracing::warn!(
                port = self.port,
                max = self.max,
                closed_idle = p.evicted,
                refused = p.refused,
                "port full: closed idle connections to make room, refused new ones while all were busy \
                 (connections.max_per_port)"
            );
            p.evicted = 0;
            p.refused = 0;
            p.next_warning = now + Duration::from_secs(10);
        }
    }

    fn remove(&self, peer: &SocketAddr, entry: &Arc<Entry>) {
        let mut conns = lock(&self.conns);
        if conns.get(peer).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            conns.remove(peer);
        }
    }

    fn find(&self, peer: &SocketAddr) -> Option<Arc<Entry>> {
        lock(&self.conns).get(peer).cloned()
    }

    /// Notes that the connection from `peer` authenticated as `owner` (a lab). A connection
    /// keeps its first owner: TLS identifies the peer once per connection.
    pub fn mark_owner(&self, peer: SocketAddr, owner: &str) {
        if let Some(e) = lock(&self.conns).get(&peer)
            && e.owner.get().is_none()
        {
            let _ = e.owner.set(owner.to_string());
        }
    }

    /// Closes every connection that authenticated as `owner` (its lab was revoked): calls
    /// under way on them fail, and the peer must connect again. Returns how many.
    pub fn close_owned_by(&self, owner: &str) -> usize {
        let conns = lock(&self.conns);
        let mut n = 0;
        for e in conns.values() {
            if e.owner.get().is_some_and(|o| o == owner) && !e.close.is_cancelled() {
                e.close.cancel();
                n += 1;
            }
        }
        n
    }

    /// Accepts the next connection this port admits. Accept errors (out of file descriptors,
    /// say) are logged and retried after a short pause instead of spinning.
    pub async fn accept(self: &Arc<Self>, listener: &TcpListener) -> (Conn<TcpStream>, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    // Without TCP_NODELAY, Nagle's algorithm holds small responses back until
                    // the peer's delayed ACK: about 40 ms per call.
                    let _ = tcp.set_nodelay(true);
                    if let Some(entry) = self.admit(peer) {
                        return (self.wrap(tcp, peer, entry), peer);
                    }
                    // Refused: dropping the socket closes it.
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!(port = self.port, error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The admitted connections of `listener` as a stream, for tonic's
    /// `serve_with_incoming`; it never ends and never yields an error.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = io::Result<Conn<TcpStream>>> + Send + 'static {
        async_stream::stream! {
            loop {
                let (conn, _) = self.accept(&listener).await;
                yield Ok(conn);
            }
        }
    }

    /// A layer for tonic's server that marks the connection of each request busy (found by
    /// the peer address in the request's connection info).
    pub fn layer(self: &Arc<Self>) -> TrackLayer {
        TrackLayer(self.clone())
    }

    fn wrap<S>(self: &Arc<Self>, io: S, peer: SocketAddr, entry: Arc<Entry>) -> Conn<S> {
        let deadline = entry.idle_deadline(self.idle);
        Conn {
            io,
            peer,
            closed: Box::pin(entry.close.clone().cancelled_owned()),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            entry,
            tracker: self.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An accepted connection under its port's limits: reads and writes fail (and the connection
/// closes) once it is evicted or has been idle for the idle timeout.
pub struct Conn<S> {
    io: S,
    peer: SocketAddr,
    entry: Arc<Entry>,
    tracker: Arc<Tracker>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    timer: Pin<Box<Sleep>>,
}

impl<S> Conn<S> {
    /// `svc` with every request counted as this connection's (for servers that build one
    /// service per connection).
    pub fn track<T>(&self, svc: T) -> Track<T> {
        Track {
            inner: svc,
            at: Finder::Conn(self.entry.clone()),
        }
    }

    /// Fails once the connection is to close; wakes the task when that happens.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.entry.close.is_cancelled() || self.closed.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the coordinator (to make room under connections.max_per_port, or its lab was revoked)",
            ));
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = if self.entry.busy.load(Ordering::Acquire) > 0 {
                now + self.tracker.idle
            } else {
                let deadline = self.entry.idle_deadline(self.tracker.idle);
                if deadline <= now {
                    tracing::debug!(port = self.tracker.port, peer = %self.peer, "closing an idle connection");
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle for longer than connections.idle_timeout",
                    ));
                }
                deadline
            };
            self.timer.as_mut().reset(next);
        }
        Ok(())
    }

    fn closing(&self) -> io::Result<()> {
        if self.entry.close.is_cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the coordinator (to make room under connections.max_per_port, or its lab was revoked)",
            ));
        }
        Ok(())
    }
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.tracker.remove(&self.peer, &self.entry);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.closing() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.closing() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.io.local_addr().ok(),
            remote_addr: Some(self.peer),
        }
    }
}

/// How a [`Track`] finds the connection of a request.
#[derive(Clone)]
enum Finder {
    /// One service per connection: that connection.
    Conn(Arc<Entry>),
    /// One service for all: by the peer address in the request's connection info.
    Peer(Arc<Tracker>),
}

/// A service that marks the connection of each request busy from its headers until its
/// response body is sent or dropped.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    at: Finder,
}

/// The layer form of [`Track`], for tonic (see [`Tracker::layer`]).
#[derive(Clone)]
pub struct TrackLayer(Arc<Tracker>);

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            at: Finder::Peer(self.0.clone()),
        }
    }
}

/// The peer address tonic put in a request's extensions (TLS or plain TCP).
fn peer_of<B>(req: &Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr)
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr))
}

impl<S, B, R> tower_service::Service<Request<B>> for Track<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body + Unpin,
{
    type Response = Response<Tracked<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let entry = match &self.at {
            Finder::Conn(e) => Some(e.clone()),
            Finder::Peer(t) => peer_of(&req).and_then(|p| t.find(&p)),
        };
        let busy = entry.map(Busy::start);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| Tracked { body, _busy: busy }))
        })
    }
}

/// A response body that keeps its connection busy until it is sent or dropped.
pub struct Tracked<B> {
    body: B,
    _busy: Option<Busy>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_cap_fits_the_open_files_limit() {
        let l = ConnectionLimits::default();
        assert_eq!(l.effective_max(None, 2), 16384);
        assert_eq!(l.effective_max(Some(1 << 20), 2), 16384);
        assert_eq!(l.effective_max(Some(20_000), 1), 16384);
        assert_eq!(l.effective_max(Some(20_000), 2), 9968);
        assert_eq!(l.effective_max(Some(128), 2), 32);
        assert_eq!(l.effective_max(Some(128), 1), 64);
        assert_eq!(l.effective_max(Some(10), 2), 4);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut l = ConnectionLimits {
            max_per_port: 0,
            ..Default::default()
        };
        let e = l.validate().unwrap_err().to_string();
        assert!(e.contains("connections.max_per_port"), "{e}");
        l.max_per_port = 5;
        l.idle_timeout = Duration::from_millis(10);
        let e = l.validate().unwrap_err().to_string();
        assert!(
            e.contains("connections.idle_timeout") && e.contains("10ms"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_port_closes_the_longest_idle_connection() {
        let t = Tracker::with_max("test", 2, Duration::from_secs(60));
        let a = t.admit(addr(1)).expect("room");
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = t.admit(addr(2)).expect("room");
        // `a` has been idle the longest: it makes room for `c`.
        let c = t.admit(addr(3)).expect("room made");
        assert!(a.close.is_cancelled() && !b.close.is_cancelled());
        assert_eq!(t.open(), 2);
        // Busy connections are never closed to make room: with both busy, `d` is refused.
        let _busy_b = Busy::start(b.clone());
        let _busy_c = Busy::start(c.clone());
        assert!(t.admit(addr(4)).is_none());
        assert_eq!(t.open(), 2);
        // A request that ended makes its connection idle again, and evictable.
        drop(_busy_c);
        assert!(t.admit(addr(4)).is_some());
        assert!(c.close.is_cancelled() && !b.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_after_the_idle_timeout() {
        let t = Tracker::with_max("test", 8, Duration::from_secs(30));
        let (client, server) = tokio::io::duplex(64);
        let entry = t.admit(addr(1)).expect("room");
        let mut conn = t.wrap(server, addr(1), entry.clone());
        let mut client = client;
        // Busy for a minute: the timeout does not apply.
        let busy = Busy::start(entry);
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = conn.read(&mut buf).await?;
            assert_eq!(&buf[..n], b"hi");
            // Then idle: the next read fails after the idle timeout.
            let started = Instant::now();
            let e = conn.read(&mut buf).await.unwrap_err();
            Ok::<_, io::Error>((e.kind(), started.elapsed()))
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"hi").await.expect("write");
        drop(busy);
        let (kind, after) = read.await.expect("join").expect("first read");
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(after <= Duration::from_secs(31), "{after:?}");
        assert_eq!(t.open(), 0, "a closed connection leaves the tracker");
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_fails_its_pending_read() {
        let t = Tracker::with_max("test", 1, Duration::from_secs(300));
        let (_client, server) = tokio::io::duplex(64);
        let entry = t.admit(addr(1)).expect("room");
        let mut conn = t.wrap(server, addr(1), entry);
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            conn.read(&mut buf).await.unwrap_err().kind()
        });
        tokio::task::yield_now().await;
        assert!(t.admit(addr(2)).is_some());
        assert_eq!(read.await.expect("join"), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_owner_loses_every_connection_at_once() {
        let t = Tracker::with_max("test", 8, Duration::from_secs(300));
        let (_client, server) = tokio::io::duplex(64);
        let entry = t.admit(addr(1)).expect("room");
        let other = t.admit(addr(2)).expect("room");
        let mut conn = t.wrap(server, addr(1), entry.clone());
        t.mark_owner(addr(1), "lab-a");
        // A connection keeps its first owner.
        t.mark_owner(addr(1), "lab-b");
        t.mark_owner(addr(2), "lab-b");
        let _busy = Busy::start(entry);
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            conn.read(&mut buf).await.unwrap_err().kind()
        });
        tokio::task::yield_now().await;
        assert_eq!(t.close_owned_by("lab-a"), 1);
        assert_eq!(read.await.expect("join"), io::ErrorKind::ConnectionAborted);
        assert!(
            !other.close.is_cancelled(),
            "another lab's connection stays"
        );
        assert_eq!(t.close_owned_by("lab-a"), 0);
    }
}
