//! The one HTTP(S) accept loop, for the web reader and the admin API: an
//! axum `Router` served over plain TCP or rustls, one task per connection,
//! with a cap on open connections and a deadline for request headers.
//!
//! Why not `axum::serve`: it has no connection limit, and the web side is
//! reachable by anyone who can reach the relay (mini-redis's listener shape:
//! a permit is taken *before* `accept`, so at the cap new connections wait
//! in the kernel's backlog instead of costing a task and a buffer each).
//! The same loop serves the admin API's local Unix socket, where the peer
//! is who the kernel says connected (uid, gid, pid) instead of an address.
//! Imports no stage.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

/// Where connections come from, and what each request is told about
/// its peer (put into the request's extensions for the handlers).
pub trait Incoming: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Peer: Clone + Send + Sync + 'static;
    fn next(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Incoming for TcpListener {
    type Stream = TcpStream;
    type Peer = ConnectInfo<SocketAddr>;
    async fn next(&self) -> std::io::Result<(TcpStream, ConnectInfo<SocketAddr>)> {
        let (stream, addr) = self.accept().await?;
        Ok((stream, ConnectInfo(addr)))
    }
}

/// The process at the other end of a Unix socket, as the kernel reports
/// it (`SO_PEERCRED`): it cannot be forged by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPeer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Incoming for UnixListener {
    type Stream = UnixStream;
    type Peer = LocalPeer;
    async fn next(&self) -> std::io::Result<(UnixStream, LocalPeer)> {
        let (stream, _) = self.accept().await?;
        let cred = stream.peer_cred()?;
        Ok((
            stream,
            LocalPeer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
        ))
    }
}

/// A client gets this long for its TLS handshake and for each request's
/// headers (slowloris).
const HANDSHAKE_AND_HEADERS: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `shutdown` turns true, at most
/// `max_connections` at a time. `name` is for the log ("web", "admin").
pub async fn serve<L: Incoming>(
    name: &'static str,
    listener: L,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut warned_full = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !warned_full {
                    tracing::warn!(
                        listener = name,
                        max_connections,
                        "http: connection limit reached; new connections wait"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.expect("semaphore open"),
                    _ = stopped(&mut shutdown) => return,
                }
            }
        };
        if slots.available_permits() > max_connections / 2 {
            warned_full = false;
        }
        let accepted = tokio::select! {
            accepted = listener.next() => accepted,
            _ = stopped(&mut shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(listener = name, error = %err, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tls = tls.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, app, shutdown).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_AND_HEADERS, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_connection(stream, peer, app, shutdown).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<S, P>(
    stream: S,
    peer: P,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_AND_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped(&mut shutdown) => {
            // Finish the request in progress, then close.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}

/// Resolves once `shutdown` is true (the `Ref` it borrows is not `Send`,
/// so it must not live in a `select!` output).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
