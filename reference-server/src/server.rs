//! The accept loop: TLS (WS-AUTH-6), a cap on open connections, a
//! handshake timeout, and graceful shutdown (WS-CONN-5).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::cluster::postgres::PgCluster;
use crate::cluster::{self, Cluster, Inbound};
use crate::config::{Config, Database};
use crate::http::{router, RemoteAddr};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{DeliveryPolicy, Store};
use crate::{delivery, tls};

/// A server started by [`start`]: where it listens, and how to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Starts a graceful shutdown: every socket is closed with 1012.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// Waits until the server has stopped (after [`shutdown`](Self::shutdown)).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

pub fn delivery_policy(config: &Config) -> DeliveryPolicy {
    DeliveryPolicy {
        ack_timeout_ms: config.ack_timeout.as_millis() as i64,
        max_attempts: config.max_attempts,
        backoff_base_ms: config.backoff_base.as_millis() as i64,
        backoff_cap_ms: config.backoff_cap.as_millis() as i64,
        max_pending: config.max_pending,
    }
}

/// Where state lives and how the other instances are reached.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub cluster: Arc<dyn Cluster>,
    /// Messages from other instances (PostgreSQL only).
    pub inbox: Option<tokio::sync::mpsc::UnboundedReceiver<Inbound>>,
}

/// Opens the store the configuration names and, on PostgreSQL, joins the
/// cluster of instances sharing it as `instance` (tasks end with `shutdown`).
pub async fn open_backend(
    config: &Config,
    instance: String,
    shutdown: &CancellationToken,
) -> anyhow::Result<Backend> {
    match config.validate()? {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(&path, delivery_policy(config))
                .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
            Ok(Backend {
                store: Arc::new(store),
                cluster: Arc::new(cluster::Local::new(instance)),
                inbox: None,
            })
        }
        Database::Postgres(url) => {
            let shown = crate::config::redact_url(&url);
            let ca = config.database_ca_cert.as_deref();
            let store = PgStore::open_with_ca(&url, ca, delivery_policy(config))
                .await
                .with_context(|| format!("cannot open the PostgreSQL database {shown}"))?;
            let (cluster, inbox) = PgCluster::start(store.db().clone(), instance, shutdown.clone())
                .await
                .with_context(|| format!("cannot join the cluster on {shown}"))?;
            Ok(Backend {
                store: Arc::new(store),
                cluster,
                inbox: Some(inbox),
            })
        }
    }
}

/// The accept queue asked of the kernel (it caps this at
/// `net.core.somaxconn`). The usual 128 overflows when thousands of agents
/// come back at once after a deploy, and every dropped SYN costs its agent
/// a one-second retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with a deep accept queue ([`LISTEN_BACKLOG`]).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts serving on `listener` in the background.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let shutdown = CancellationToken::new();
    let backend = open_backend(&config, config.instance_name(addr.port()), &shutdown).await?;
    let state = Arc::new(AppState::new(
        config,
        backend.store,
        backend.cluster,
        shutdown,
    ));
    tokio::spawn(delivery::run_sweeper(state.clone()));
    if let Some(inbox) = backend.inbox {
        tokio::spawn(cluster::run_inbox(state.clone(), inbox));
    }
    let task = tokio::spawn(accept_loop(state.clone(), listener, tls));
    Ok(RunningServer { addr, state, task })
}

async fn accept_loop(state: Arc<AppState>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let config = &state.config;
    let app = router(state.clone());
    let permits = Arc::new(Semaphore::new(config.max_connections));
    // HTTP connections (before any upgrade), so shutdown can wait for them.
    let connections = TaskTracker::new();
    // HTTP/1.1 only: WebSocket upgrades are HTTP/1.1, and hyper's header
    // read timeout (the handshake timeout) starts with the connection.
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout);
    let http = Arc::new(http);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            Metrics::count(&state.metrics.connection_failures, "reason", "capacity");
            tokio::spawn(refuse_over_capacity(tcp));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let io = Counted {
            io: tcp,
            _permit: permit,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(RemoteAddr(remote));
            app.clone().oneshot(request)
        });
        let (http, shutdown, tls) = (http.clone(), state.shutdown.clone(), tls.clone());
        let handshake_timeout = config.handshake_timeout;
        connections.spawn(async move {
            match tls {
                None => serve(&http, shutdown, io, service).await,
                Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(io)).await {
                    Ok(Ok(stream)) => serve(&http, shutdown, stream, service).await,
                    Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    info!("shutting down: closing agent sockets with 1012");
    let grace = state.config.shutdown_grace;
    state.sessions.close();
    connections.close();
    let drained = tokio::time::timeout(grace, async {
        tokio::join!(connections.wait(), state.sessions.wait());
    })
    .await;
    if drained.is_err() {
        warn!("shutdown grace of {grace:?} passed with connections still open");
    }
}

/// Serves one HTTP/1.1 connection; on shutdown, finishes the request in
/// hand and closes.
async fn serve<IO, S>(http: &http1::Builder, shutdown: CancellationToken, io: IO, service: S)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
    }
}

/// Over the connection cap: a short 503 instead of a silent reset.
async fn refuse_over_capacity(mut tcp: TcpStream) {
    let body = r#"{"error":"over_capacity","message":"the server is at its connection limit"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
}

/// A socket that holds one of the connection-cap permits until it is dropped,
/// also after it was upgraded to a WebSocket.
struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reconnect storm finds a deep accept queue: 600 handshakes complete
    /// while nothing accepts them (with the usual 128, the rest would wait
    /// on SYN retransmits).
    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_of_connects() {
        let listener = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..600)
            .map(|_| tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr)));
        let results = futures_util::future::join_all(connects).await;
        let established = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(established, 600);
        drop(listener);
    }
}
