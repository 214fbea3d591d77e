//! The socket a session writes to: plain TCP, or TCP with a rustls server
//! connection on top. Both offer the same readiness-based calls
//! (`readable`/`try_read_buf`, `writable`/`try_write`), so the session loop is
//! one piece of code and a plain connection pays nothing for TLS.
//!
//! TLS output is bounded: rustls takes new plaintext only once the records of
//! the previous write have reached the socket, and at most
//! [`TLS_BUFFER_LIMIT`] of it at a time.

use std::io::{self, Read as _, Write as _};
use std::task::{Context, Poll};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Most plaintext rustls holds for sending.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A client connection.
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsTransport>),
}

/// A connection registered with no runtime: see [`Transport::detach`].
#[derive(Debug)]
pub struct Detached {
    tcp: std::net::TcpStream,
    /// A TLS connection's session, and the decrypted bytes it holds unread.
    tls: Option<(Box<ServerConnection>, usize)>,
}

impl Detached {
    /// The connection again, registered with the reactor of the runtime this
    /// is called on. Registering reports whatever the socket is ready for
    /// already, so nothing that arrived while it was detached is missed.
    pub fn attach(self) -> io::Result<Transport> {
        let tcp = TcpStream::from_std(self.tcp)?;
        Ok(match self.tls {
            None => Transport::Plain(tcp),
            Some((tls, plaintext)) => Transport::Tls(Box::new(TlsTransport {
                tcp,
                tls: *tls,
                plaintext,
            })),
        })
    }
}

/// TCP carrying a TLS session whose handshake is done.
#[derive(Debug)]
pub struct TlsTransport {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Decrypted bytes rustls holds that the session has not read yet.
    plaintext: usize,
}

impl Transport {
    /// A TLS transport from a handshaken connection (e.g. `tokio_rustls`'s
    /// `TlsStream::into_inner`).
    pub fn tls(tcp: TcpStream, mut tls: ServerConnection) -> Self {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        // Plaintext the HTTP layer did not read is still inside rustls.
        let plaintext = tls
            .process_new_packets()
            .map_or(0, |state| state.plaintext_bytes_to_read());
        Self::Tls(Box::new(TlsTransport {
            tcp,
            tls,
            plaintext,
        }))
    }

    /// Takes the socket off the reactor of the runtime that registered it, to
    /// be [attached](Detached::attach) to another's. A socket's readiness
    /// comes from the runtime it is registered with, whichever polls it; a
    /// session that runs elsewhere than its handshake (see
    /// `server::run_fronted`) takes its socket along so that its events wake
    /// it on its own thread.
    pub fn detach(self) -> io::Result<Detached> {
        Ok(match self {
            Transport::Plain(tcp) => Detached {
                tcp: tcp.into_std()?,
                tls: None,
            },
            Transport::Tls(tls) => {
                let TlsTransport {
                    tcp,
                    tls,
                    plaintext,
                } = *tls;
                Detached {
                    tcp: tcp.into_std()?,
                    tls: Some((Box::new(tls), plaintext)),
                }
            }
        })
    }

    /// Ready when a read may make progress; registers `cx` to be woken when
    /// it may, without a waiter list (one task owns the connection).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(tcp) => tcp.poll_read_ready(cx),
            Transport::Tls(t) if t.plaintext > 0 => Poll::Ready(Ok(())),
            Transport::Tls(t) => t.tcp.poll_read_ready(cx),
        }
    }

    /// Ready when a write may make progress; see [`Transport::poll_read_ready`].
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(tcp) => tcp.poll_write_ready(cx),
            Transport::Tls(t) => t.tcp.poll_write_ready(cx),
        }
    }

    /// Waits until a read may make progress.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.readable().await,
            Transport::Tls(t) if t.plaintext > 0 => Ok(()),
            Transport::Tls(t) => t.tcp.readable().await,
        }
    }

    /// Waits until a write may make progress.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.writable().await,
            Transport::Tls(t) => t.tcp.writable().await,
        }
    }

    /// Whether encrypted output is waiting for the socket.
    pub fn has_pending_output(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Reads what is available into `buf`; `Ok(0)` at the end of the stream.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.try_read_buf(buf),
            Transport::Tls(t) => {
                let mut chunk = [0u8; 8192];
                let n = t.try_read(&mut chunk)?;
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    /// Reads what is available into `buf`; `Ok(0)` at the end of the stream.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.try_read(buf),
            Transport::Tls(t) => t.try_read(buf),
        }
    }

    /// Writes what the socket takes now without blocking.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.try_write(buf),
            Transport::Tls(t) => t.try_write(buf),
        }
    }

    /// Sends encrypted output rustls still holds, as far as the socket takes it.
    pub fn try_flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_records(),
        }
    }

    /// Writes all of `buf` and any pending encrypted output, waiting for the
    /// socket as needed.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if let Transport::Plain(tcp) = self {
            return tcp.write_all(buf).await;
        }
        loop {
            let progress = if buf.is_empty() {
                self.try_flush().map(|()| 0)
            } else {
                self.try_write(buf)
            };
            match progress {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if buf.is_empty() && !self.has_pending_output() {
                return Ok(());
            }
            self.writable().await?;
        }
    }

    /// Ends the sending side: TLS `close_notify`, then TCP FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        if let Transport::Tls(t) = self {
            t.tls.send_close_notify();
        }
        self.write_all(&[]).await?;
        match self {
            Transport::Plain(tcp) => tcp.shutdown().await,
            Transport::Tls(t) => t.tcp.shutdown().await,
        }
    }
}

/// `std::io` adapters over tokio's non-blocking `try_` calls, for rustls.
struct SyncTcp<'a>(&'a TcpStream);

impl io::Read for SyncTcp<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for SyncTcp<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsTransport {
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plaintext > 0 {
                let n = self.tls.reader().read(buf)?;
                self.plaintext -= n.min(self.plaintext);
                return Ok(n);
            }
            if self.tls.read_tls(&mut SyncTcp(&self.tcp))? == 0 {
                return Ok(0);
            }
            let state = self
                .tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.plaintext = state.plaintext_bytes_to_read();
            // Alerts and key updates may want an answer.
            match self.flush_records() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            if self.plaintext == 0 && state.peer_has_closed() {
                return Ok(0);
            }
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(buf)?;
        match self.flush_records() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ if n == 0 && !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(n),
        }
    }

    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut SyncTcp(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GUARD: Duration = Duration::from_secs(60);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_detached_connection_outlives_its_first_runtime_and_misses_nothing() {
        let first = runtime();
        let (detached, mut peer) = first.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let peer = std::net::TcpStream::connect(address).expect("connect");
            let (tcp, _) = listener.accept().await.expect("accept");
            // Polled on this runtime, as the handshake leaves it.
            tcp.writable().await.expect("writable");
            let detached = Transport::Plain(tcp).detach().expect("detaches");
            (detached, peer)
        });
        // The reactor it was registered with is gone.
        drop(first);
        peer.write_all(b"ping").expect("peer writes");

        runtime().block_on(async {
            let mut transport = detached.attach().expect("attaches");
            let mut received = BytesMut::with_capacity(16);
            let read = async {
                while received.len() < 4 {
                    transport.readable().await?;
                    match transport.try_read_buf(&mut received) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok::<_, io::Error>(())
            };
            tokio::time::timeout(GUARD, read)
                .await
                .expect("what arrived while detached is reported")
                .expect("reads");
            assert_eq!(&received[..], b"ping");
            transport.write_all(b"pong").await.expect("writes");
        });
        peer.set_read_timeout(Some(GUARD)).expect("timeout");
        let mut answer = [0; 4];
        peer.read_exact(&mut answer).expect("peer reads");
        assert_eq!(&answer, b"pong");
    }
}
