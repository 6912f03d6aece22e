//! Listening sockets for the OTLP and query servers: TCP, optionally TLS or mTLS, with the
//! peer's identity attached to every request as a [`Peer`].
//!
//! One accept loop serves tonic (as a stream of connections) and axum (as its `Listener`).
//! TLS handshakes run in tasks of their own, so a slow or silent client never holds up the
//! next connection.

mod identity;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub use identity::client_identity;
pub use tls::TlsServer;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// A client that has not finished its TLS handshake within this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection: in every request's extensions (tonic's connect
/// info; axum's `ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The verified client certificate's identity (see [`client_identity`]).
    pub client_identity: Option<String>,
    /// The listener is mTLS: requests without a client certificate are refused.
    pub client_certificate_required: bool,
}

impl Peer {
    /// `mtls:<identity>` for a verified client certificate, nothing when the listener does not
    /// ask for one, refused when it asks and none came.
    pub fn principal(&self) -> Result<Option<String>> {
        match (&self.client_identity, self.client_certificate_required) {
            (Some(identity), _) => Ok(Some(format!("mtls:{identity}"))),
            (None, false) => Ok(None),
            (None, true) => Err(Error::Unauthenticated(
                "this listener requires a client certificate (mTLS) signed by its client CA".into(),
            )),
        }
    }

    /// The peer of a request, wherever the server put it.
    pub fn of(extensions: &http::Extensions) -> Option<&Peer> {
        extensions
            .get::<axum::extract::ConnectInfo<Peer>>()
            .map(|info| &info.0)
            .or_else(|| extensions.get::<Peer>())
    }
}

/// An accepted connection, plain or TLS.
pub struct Connection {
    stream: Stream,
    peer: Peer,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connection {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// Binds `address`, with TLS when `tls` is set (`alpn`: the application protocol offered).
pub async fn bind(address: SocketAddr, tls: Option<&TlsConfig>, alpn: &[u8]) -> Result<Incoming> {
    let tls = tls
        .map(|config| TlsServer::load(config, &[alpn]))
        .transpose()?;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(format!("binding {address}"), e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::io(format!("reading the address bound for {address}"), e))?;
    if let Some(tls) = &tls {
        tls.spawn_reloader();
    }
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, sender));
    Ok(Incoming {
        receiver,
        local_addr,
    })
}

/// Connections ready to serve (handshake done), in arrival order of handshake completion.
pub struct Incoming {
    receiver: mpsc::Receiver<Connection>,
    local_addr: SocketAddr,
}

impl Incoming {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    sender: mpsc::Sender<Connection>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // The server is gone: stop listening.
            () = sender.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // OTLP requests are latency-bound.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            let peer = Peer {
                remote,
                client_identity: None,
                client_certificate_required: false,
            };
            let connection = Connection {
                stream: Stream::Plain(tcp),
                peer,
            };
            if sender.send(connection).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = tls.acceptor();
        let client_certificate_required = tls.requires_client_certificate();
        let sender = sender.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%remote, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let client_identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| client_identity(leaf.as_ref()));
            let peer = Peer {
                remote,
                client_identity,
                client_certificate_required,
            };
            let _ = sender
                .send(Connection {
                    stream: Stream::Tls(Box::new(stream)),
                    peer,
                })
                .await;
        });
    }
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Connection;
    type Addr = Peer;

    async fn accept(&mut self) -> (Connection, Peer) {
        match self.receiver.recv().await {
            Some(connection) => {
                let peer = connection.peer.clone();
                (connection, peer)
            }
            // The accept loop ended (it only does when this side is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            remote: self.local_addr,
            client_identity: None,
            client_certificate_required: false,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Peer {
        stream.remote_addr().clone()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
