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
    /// is called on, with what the peer sent while it was detached read
    /// first, as far as one read takes it: plaintext is appended to
    /// `arrived`, TLS records are decrypted and left in rustls for the first
    /// read.
    ///
    /// Registering reports whatever the socket is still ready for, so
    /// nothing is missed either way; but that report reaches the session
    /// only when the runtime next polls its reactor, and then the session
    /// waits its turn behind every task queued before it. A client sends
    /// its first request as soon as it has the `101`, which is usually
    /// before its session starts: reading it here answers it on the
    /// session's first turn instead of its second.
    pub fn attach(self, arrived: &mut BytesMut) -> io::Result<Transport> {
        let Detached { tcp, tls } = self;
        let tls = match tls {
            None => {
                read_arrived(&tcp, arrived)?;
                None
            }
            Some((mut tls, mut plaintext)) => {
                // Not while plaintext waits: rustls takes no more records
                // then (and refuses to past 16 KiB of it).
                if tls.wants_read() {
                    plaintext = decrypt_arrived(&tcp, &mut tls)?;
                }
                Some((tls, plaintext))
            }
        };
        let tcp = TcpStream::from_std(tcp)?;
        Ok(match tls {
            None => Transport::Plain(tcp),
            Some((tls, plaintext)) => Transport::Tls(Box::new(TlsTransport {
                tcp,
                tls: *tls,
                plaintext,
            })),
        })
    }
}

/// Most bytes a detached socket's first read takes: a request or a few. The
/// rest waits in the socket, and registering reports it.
const FIRST_READ_BYTES: usize = 4096;

/// One non-blocking read of what is waiting on a detached socket. The end of
/// the stream is left for the session to find: it reads as the end again.
fn read_arrived(mut tcp: &std::net::TcpStream, arrived: &mut BytesMut) -> io::Result<()> {
    let mut chunk = [0u8; FIRST_READ_BYTES];
    match tcp.read(&mut chunk) {
        Ok(n) => arrived.extend_from_slice(&chunk[..n]),
        Err(e) if nothing_yet(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// One non-blocking read of TLS records from a detached socket, decrypted;
/// the plaintext rustls then holds. A record only partly arrived is
/// completed by the session's reads.
fn decrypt_arrived(mut tcp: &std::net::TcpStream, tls: &mut ServerConnection) -> io::Result<usize> {
    match receive_records(tls, tcp) {
        Ok(state) => Ok(state.map_or(0, |state| state.plaintext_bytes_to_read())),
        Err(e) if nothing_yet(&e) => Ok(0),
        Err(e) => {
            // An alert rustls queued for the peer (a bad record), sent on a
            // best-effort basis as the connection ends here.
            let _ = tls.write_tls(&mut tcp);
            Err(e)
        }
    }
}

/// Reads TLS records from `socket` once and decrypts them: rustls's state
/// after, or `None` at the end of the stream.
fn receive_records(
    tls: &mut ServerConnection,
    mut socket: impl io::Read,
) -> io::Result<Option<rustls::IoState>> {
    if tls.read_tls(&mut socket)? == 0 {
        return Ok(None);
    }
    let state = tls
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(state))
}

/// Whether a non-blocking read found nothing yet. An interrupted read is not
/// retried: registering reports whatever it would have read.
fn nothing_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
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
            Transport::Tls(t) if t.has_input() => Poll::Ready(Ok(())),
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
            Transport::Tls(t) if t.has_input() => Ok(()),
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
    /// Whether a read returns at once, without the socket: decrypted bytes
    /// wait in rustls, or the peer's `close_notify` was read already (by
    /// [`Detached::attach`], say), which no socket event would report again.
    fn has_input(&self) -> bool {
        self.plaintext > 0 || !self.tls.wants_read()
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plaintext > 0 {
                let n = self.tls.reader().read(buf)?;
                self.plaintext -= n.min(self.plaintext);
                return Ok(n);
            }
            let Some(state) = receive_records(&mut self.tls, SyncTcp(&self.tcp))? else {
                return Ok(0);
            };
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

    /// Waits until `n` bytes are waiting on the detached socket, as they
    /// would once a client's request has crossed loopback.
    fn until_waiting(detached: &Detached, n: usize) {
        until_peeked(detached, n, "bytes never arrived", |got| got >= n);
    }

    /// Waits until peeking at most `len` bytes of the detached socket gives
    /// a count that is `done`.
    fn until_peeked(detached: &Detached, len: usize, what: &str, done: impl Fn(usize) -> bool) {
        let mut peeked = vec![0u8; len];
        let deadline = std::time::Instant::now() + GUARD;
        while !detached.tcp.peek(&mut peeked).is_ok_and(&done) {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A plain connection accepted and polled on a runtime that is then
    /// dropped, as the HTTP thread leaves it, and its peer.
    fn detached_plain() -> (Detached, std::net::TcpStream) {
        let first = runtime();
        let pair = first.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let peer = std::net::TcpStream::connect(address).expect("connect");
            let (tcp, _) = listener.accept().await.expect("accept");
            tcp.writable().await.expect("writable");
            let detached = Transport::Plain(tcp).detach().expect("detaches");
            (detached, peer)
        });
        // The reactor it was registered with is gone.
        drop(first);
        pair
    }

    /// Reads until `received` holds `n` bytes, waiting for readiness.
    async fn read_until(transport: &mut Transport, received: &mut BytesMut, n: usize) {
        let read = async {
            while received.len() < n {
                transport.readable().await?;
                match transport.try_read_buf(received) {
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
            .expect("readiness is reported")
            .expect("reads");
    }

    #[test]
    fn a_detached_connection_outlives_its_first_runtime_and_reads_what_arrived_meanwhile() {
        let (detached, mut peer) = detached_plain();
        peer.write_all(b"ping").expect("peer writes");
        until_waiting(&detached, 4);

        runtime().block_on(async {
            let mut arrived = BytesMut::from(&b"GET"[..]);
            let mut transport = detached.attach(&mut arrived).expect("attaches");
            // Read on attaching, before any readiness could be reported.
            assert_eq!(&arrived[..], b"GETping");
            peer.write_all(b"more").expect("peer writes");
            let mut received = BytesMut::new();
            read_until(&mut transport, &mut received, 4).await;
            assert_eq!(&received[..], b"more");
            transport.write_all(b"pong").await.expect("writes");
        });
        peer.set_read_timeout(Some(GUARD)).expect("timeout");
        let mut answer = [0; 4];
        peer.read_exact(&mut answer).expect("peer reads");
        assert_eq!(&answer, b"pong");
    }

    #[test]
    fn a_detached_connection_the_peer_closed_reads_as_closed() {
        let (detached, peer) = detached_plain();
        drop(peer);
        // The end of the stream is there before attaching: the first read
        // finds it and leaves it for the session.
        until_peeked(&detached, 1, "no FIN", |got| got == 0);
        runtime().block_on(async {
            let mut arrived = BytesMut::new();
            let mut transport = detached.attach(&mut arrived).expect("attaches");
            assert!(arrived.is_empty());
            let read = async {
                transport.readable().await?;
                transport.try_read(&mut [0u8; 16])
            };
            let read = tokio::time::timeout(GUARD, read).await.expect("reported");
            assert_eq!(read.expect("reads the end"), 0);
        });
    }

    /// A TLS connection whose handshake is done over blocking sockets: the
    /// server's side, non-blocking and detached, and the client's.
    fn detached_tls() -> (Detached, rustls::ClientConnection, std::net::TcpStream) {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("root");
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(std::sync::Arc::new(client_config), name)
            .expect("client");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (mut tcp, _) = listener.accept().expect("accept");
        let mut server = ServerConnection::new(std::sync::Arc::new(server_config)).expect("server");
        let client_side = std::thread::spawn(move || {
            while client.is_handshaking() {
                client.complete_io(&mut peer).expect("client handshake");
            }
            (client, peer)
        });
        while server.is_handshaking() {
            server.complete_io(&mut tcp).expect("server handshake");
        }
        while server.wants_write() {
            server.write_tls(&mut tcp).expect("session tickets");
        }
        let (client, peer) = client_side.join().expect("client thread");
        tcp.set_nonblocking(true).expect("non-blocking");
        let detached = Detached {
            tcp,
            tls: Some((Box::new(server), 0)),
        };
        (detached, client, peer)
    }

    /// Encrypts `plaintext` into the records the client would send.
    fn records(client: &mut rustls::ClientConnection, plaintext: &[u8]) -> Vec<u8> {
        client.writer().write_all(plaintext).expect("encrypts");
        pending_records(client)
    }

    /// The records the client has queued to send.
    fn pending_records(client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).expect("records");
        }
        records
    }

    /// Reads the transport until `n` plaintext bytes are in, waiting for
    /// readiness as a session does.
    async fn read_plaintext(transport: &mut Transport, n: usize) -> Vec<u8> {
        let mut received = BytesMut::new();
        read_until(transport, &mut received, n).await;
        received.to_vec()
    }

    /// Whether a read would return at once.
    async fn ready_at_once(transport: &Transport) -> bool {
        let ready = std::future::poll_fn(|cx| Poll::Ready(transport.poll_read_ready(cx))).await;
        matches!(ready, Poll::Ready(Ok(())))
    }

    #[test]
    fn a_detached_tls_connection_decrypts_what_arrived_meanwhile() {
        let (detached, mut client, mut peer) = detached_tls();
        let sent = records(&mut client, b"ping");
        peer.write_all(&sent).expect("peer writes");
        until_waiting(&detached, sent.len());

        runtime().block_on(async {
            let mut arrived = BytesMut::new();
            let mut transport = detached.attach(&mut arrived).expect("attaches");
            assert!(arrived.is_empty(), "TLS plaintext stays in rustls");
            // Decrypted on attaching, so no readiness is needed.
            assert!(ready_at_once(&transport).await);
            let mut received = [0u8; 16];
            let n = transport.try_read(&mut received).expect("reads");
            assert_eq!(&received[..n], b"ping");
            transport.write_all(b"pong").await.expect("writes");
        });
        let mut peer = rustls::StreamOwned::new(client, peer);
        peer.sock.set_read_timeout(Some(GUARD)).expect("timeout");
        let mut answer = [0; 4];
        peer.read_exact(&mut answer).expect("peer reads");
        assert_eq!(&answer, b"pong");
    }

    #[test]
    fn a_forged_tls_record_found_on_attaching_fails_the_attach() {
        let (detached, _client, mut peer) = detached_tls();
        // Application data whose authentication cannot check out.
        let forged = [&[0x17, 0x03, 0x03, 0x00, 0x20][..], &[0xab; 0x20]].concat();
        peer.write_all(&forged).expect("peer writes");
        until_waiting(&detached, forged.len());

        runtime().block_on(async {
            let mut arrived = BytesMut::new();
            let error = detached.attach(&mut arrived).expect_err("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        });
    }

    #[test]
    fn a_tls_record_split_by_attaching_is_completed_by_the_next_read() {
        let (detached, mut client, mut peer) = detached_tls();
        let sent = records(&mut client, b"split in two");
        let (first, second) = sent.split_at(sent.len() / 2);
        peer.write_all(first).expect("peer writes");
        until_waiting(&detached, first.len());

        runtime().block_on(async {
            let mut arrived = BytesMut::new();
            let mut transport = detached.attach(&mut arrived).expect("attaches");
            assert!(
                !ready_at_once(&transport).await,
                "half a record is no input"
            );
            peer.write_all(second).expect("peer writes");
            assert_eq!(read_plaintext(&mut transport, 12).await, b"split in two");
        });
    }

    #[test]
    fn a_detached_tls_connection_holding_all_the_plaintext_rustls_takes_attaches() {
        let (mut detached, mut client, mut peer) = detached_tls();
        let message: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let sent = records(&mut client, &message);
        let writer = std::thread::spawn(move || {
            peer.write_all(&sent).expect("peer writes");
            peer
        });
        // Records read and decrypted, unread, until rustls refuses to take
        // more (past 16 KiB of plaintext): the most a connection can hold
        // when it is handed over.
        let mut plaintext = 0;
        if let Some((tls, held)) = detached.tls.as_mut() {
            let deadline = std::time::Instant::now() + GUARD;
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "records never arrived"
                );
                match tls.read_tls(&mut &detached.tcp) {
                    Ok(0) => panic!("the peer closed"),
                    Ok(_) => {
                        let state = tls.process_new_packets().expect("records");
                        plaintext = state.plaintext_bytes_to_read();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => break,
                }
            }
            *held = plaintext;
        }
        assert!(plaintext > 16 * 1024, "{plaintext}");

        runtime().block_on(async {
            let mut arrived = BytesMut::new();
            let mut transport = detached.attach(&mut arrived).expect("attaches");
            let received = read_plaintext(&mut transport, message.len()).await;
            assert_eq!(received, message);
        });
        writer.join().expect("writer");
    }

    #[test]
    fn a_close_notify_read_on_attaching_reads_as_closed_without_a_fin() {
        let (detached, mut client, mut peer) = detached_tls();
        client.send_close_notify();
        let sent = pending_records(&mut client);
        // The TCP connection stays open, waiting for our close_notify.
        peer.write_all(&sent).expect("peer writes");
        until_waiting(&detached, sent.len());

        runtime().block_on(async {
            let mut arrived = BytesMut::new();
            let mut transport = detached.attach(&mut arrived).expect("attaches");
            assert!(
                ready_at_once(&transport).await,
                "no socket event would report it"
            );
            assert_eq!(transport.try_read(&mut [0u8; 16]).expect("reads"), 0);
        });
        drop(peer);
    }
}
