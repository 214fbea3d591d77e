//! A small protocol v1 client: `tickwire subscribe`. It prints every message
//! the server sends, one JSON object per line, so it pipes into `jq` and serves
//! as a demo, a smoke test and a reference for client authors.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// What to subscribe to and when to stop.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// `ws://host:port/ws` (the `/ws` path is added when missing).
    pub url: String,
    pub symbols: Vec<String>,
    /// Subscribe to the `book` channel at this depth instead of `ticker`.
    pub book_depth: Option<usize>,
    /// Stop after this many data messages (`ticker`, or `book` with a depth).
    pub count: Option<u64>,
    /// Ask the server to send each symbol at most this often.
    pub max_rate_hz: Option<f64>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// A PEM file of certificates to trust for `wss://`, besides the public roots.
    pub ca_file: Option<PathBuf>,
}

/// Why TLS for a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read CA certificates from {}: {error}", path.display())]
    CaFile {
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error("{}: not a usable CA certificate: {error}", path.display())]
    BadCa { path: PathBuf, error: rustls::Error },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("TLS setup: {0}")]
    Rustls(rustls::Error),
}

/// TLS for connecting out (`wss://` servers, venues): the public web roots,
/// plus the certificates in `ca_file` (PEM) for a private CA or a
/// self-signed server certificate.
pub fn tls_client_config(
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject as _;
        let certificates = crate::files::read_settings_bytes(path)
            .map_err(rustls_pki_types::pem::Error::Io)
            .and_then(|pem| {
                rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|error| ClientTlsError::CaFile {
                path: path.to_owned(),
                error,
            })?;
        if certificates.is_empty() {
            return Err(ClientTlsError::NoCertificate(path.to_owned()));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| ClientTlsError::BadCa {
                    path: path.to_owned(),
                    error,
                })?;
        }
    }
    // The one crypto provider in the tree, named explicitly.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientTlsError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// A WebSocket connection to `url` with this crate's settings (see
/// [`websocket_config`]), TLS through `tls` for `wss://`.
pub async fn connect(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tungstenite::Error> {
    let connector = Connector::Rustls(tls.clone());
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(websocket_config()),
        true,
        Some(connector),
    )
    .await?;
    Ok(socket)
}

/// [`connect`] from the local address `source` (a port is still picked by
/// the system), or from whatever address the system picks when `None`.
///
/// Connections from one address to one server must each have a port of
/// their own, and Linux looks for a free one by trying them in turn: with
/// many thousands open it tries thousands per `connect()`. Spreading a load
/// generator's connections over several source addresses keeps each search
/// short (see `tickwire bench --source-addresses`).
pub async fn connect_from(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tungstenite::Error> {
    let Some(source) = source else {
        return connect(url, tls).await;
    };
    let request = url.into_client_request()?;
    let (host, port) = url::Url::parse(url)
        .ok()
        .as_ref()
        .and_then(server_host_port)
        .ok_or(tungstenite::Error::Url(UrlError::NoHostName))?;
    let servers = tokio::net::lookup_host((host.as_str(), port)).await?;
    let stream = connect_tcp_any(source, &host, servers).await?;
    stream.set_nodelay(true)?;
    let connector = Connector::Rustls(tls.clone());
    let (socket, _) = tokio_tungstenite::client_async_tls_with_config(
        request,
        stream,
        Some(websocket_config()),
        Some(connector),
    )
    .await?;
    Ok(socket)
}

/// Where a `ws://` or `wss://` URL's server listens: its host, bare (an
/// IPv6 literal without its brackets, as socket addresses and TLS names want
/// it), and its port, the scheme's default when the URL names none.
pub fn server_host_port(url: &url::Url) -> Option<(String, u16)> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_owned(), url.port_or_known_default()?))
}

/// A TCP connection from `source` to the first of `servers` (the addresses
/// of `host`) of the same family that takes it, tried in turn as `connect`
/// tries a host's addresses; the last error when none does.
async fn connect_tcp_any(
    source: IpAddr,
    host: &str,
    servers: impl IntoIterator<Item = SocketAddr>,
) -> std::io::Result<TcpStream> {
    let mut last_error = std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("{host} has no address of the same family as {source}"),
    );
    for server in servers {
        if server.is_ipv4() != source.is_ipv4() {
            continue;
        }
        match connect_tcp(source, server).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// A TCP connection to `server` from the local address `source`.
async fn connect_tcp(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    defer_port_choice(&socket);
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// Leaves the choice of a bound socket's port to `connect()`
/// (`IP_BIND_ADDRESS_NO_PORT`), which may reuse a port that connections to
/// other servers hold; `bind()` alone would reserve one for good. Best
/// effort: without it the bind picks the port.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) {
    let set = crate::sockopt::set_int(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
    if let Err(error) = set {
        tracing::debug!(%error, "IP_BIND_ADDRESS_NO_PORT not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &TcpSocket) {}

/// The WebSocket settings clients in this crate use: a small read buffer is
/// both lighter and faster than tungstenite's 128 KiB default for small frames.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Adds the `/ws` path to a bare `ws://host:port` URL.
pub fn websocket_url(url: &str) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find(['/', '?']).map(|at| &rest[at..]));
    match path {
        Some(path) if path != "/" && !path.starts_with('?') => url.to_owned(),
        _ => match url.split_once('?') {
            Some((base, query)) => format!("{}/ws?{query}", base.trim_end_matches('/')),
            None => format!("{}/ws", url.trim_end_matches('/')),
        },
    }
}

/// Subscribes and prints messages until the server closes, `count` data
/// messages arrived, or Ctrl-C.
pub async fn subscribe(options: SubscribeOptions) -> anyhow::Result<()> {
    let url = websocket_url(&options.url);
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        bail!("expected a ws:// or wss:// URL, not `{}`", options.url);
    }
    if options.book_depth.is_some() && url.contains("symbols=") {
        // The URL's symbols would be subscribed to tickers, which a book
        // client neither counts nor expects.
        bail!("--depth subscribes to the book channel: name its symbols with --symbols, not in the URL");
    }
    let tls = tls_client_config(options.ca_file.as_deref())?;
    let mut socket = tokio::time::timeout(options.connect_timeout, connect(&url, &tls))
        .await
        .with_context(|| format!("timed out connecting to {url}"))?
        .map_err(refusal_with_reason)
        .with_context(|| format!("cannot connect to {url}"))?;

    let mut request = serde_json::json!({"op": "subscribe", "id": 1, "symbols": options.symbols});
    if let Some(rate) = options.max_rate_hz {
        request["max_rate_hz"] = rate.into();
    }
    let data_prefix = match options.book_depth {
        Some(depth) => {
            request["channel"] = "book".into();
            request["depth"] = depth.into();
            r#"{"type":"book""#
        }
        None => r#"{"type":"ticker""#,
    };
    socket.send(Message::text(request.to_string())).await?;

    let mut data_messages = 0u64;
    let mut accepted = 0usize;
    let stdout = std::io::stdout();
    // One listener for the whole stream: a listener made afresh on each turn
    // of the loop would miss a Ctrl-C that lands while a message is printed,
    // which is nearly always when data streams fast.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let message = tokio::select! {
            // Polled first, so it is registered from the first turn on and
            // wins over data that is always ready.
            biased;
            _ = &mut interrupted => {
                let close = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
                socket.close(Some(close)).await.ok();
                return Ok(());
            }
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let mut out = stdout.lock();
                let printed = writeln!(out, "{text}").and_then(|()| out.flush());
                match printed {
                    // The reader went away (`| head`): a normal end.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        socket.close(None).await.ok();
                        return Ok(());
                    }
                    printed => printed?,
                }
                if text.starts_with(data_prefix) {
                    data_messages += 1;
                    if options.count.is_some_and(|count| data_messages >= count) {
                        socket.close(None).await.ok();
                        return Ok(());
                    }
                } else if let Some(refusal) = refusal_of_all(&text, &mut accepted) {
                    // Nothing would ever come: say why instead of waiting.
                    socket.close(None).await.ok();
                    bail!("nothing subscribed: {refusal}");
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((CloseCode::Status, String::new()), |f| {
                    (f.code, f.reason.to_string())
                });
                match code {
                    CloseCode::Normal | CloseCode::Away => {
                        eprintln!("server closed the connection: {} {reason}", u16::from(code));
                        return Ok(());
                    }
                    _ => bail!("server closed the connection: {} {reason}", u16::from(code)),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("connection failed"),
            None => bail!("connection closed without a close frame"),
        }
    }
}

/// A refused upgrade with the server's explanation: tickwire answers with a
/// JSON body (`{"error":...,"message":...}`) that the status alone leaves out.
fn refusal_with_reason(error: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error;
    match &error {
        Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow::anyhow!("the server answered {}: {}", response.status(), body.trim())
        }
        _ => error.into(),
    }
}

/// Follows the answers to the subscriptions: counts the symbols every
/// `subscribed` accepts into `accepted` (the URL's `?symbols=` are answered
/// without an id), and returns the message of an `error` answering the
/// subscribe request (id 1) when none was accepted.
fn refusal_of_all(text: &str, accepted: &mut usize) -> Option<String> {
    let message: serde_json::Value = serde_json::from_str(text).ok()?;
    match message["type"].as_str()? {
        "subscribed" => {
            *accepted += message["symbols"].as_array().map_or(0, Vec::len);
            None
        }
        "error" if *accepted == 0 && message["id"] == 1 => Some(format!(
            "{} ({})",
            message["message"].as_str().unwrap_or("refused"),
            message["code"].as_str().unwrap_or("error")
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_server_is_its_bare_host_and_its_port_or_the_schemes() {
        let of = |text: &str| {
            let url = url::Url::parse(text).expect("a URL");
            server_host_port(&url)
        };
        assert_eq!(of("ws://[::1]/ws"), Some(("::1".into(), 80)));
        assert_eq!(
            of("wss://example.com/ws?x=1"),
            Some(("example.com".into(), 443))
        );
        assert_eq!(of("ws://127.0.0.1:9/ws"), Some(("127.0.0.1".into(), 9)));
    }

    /// A host's addresses are tried in turn from the source address, as
    /// `connect` tries them: one that refuses, or of the other family, is
    /// passed over.
    #[tokio::test]
    async fn a_source_address_connects_to_the_first_server_address_that_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let open = listener.local_addr().expect("address");
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
            gone.local_addr().expect("address")
        };
        let v6: SocketAddr = "[::1]:1".parse().expect("address");
        let source: IpAddr = "127.0.0.2".parse().expect("address");

        let stream = connect_tcp_any(source, "both", [v6, closed, open])
            .await
            .expect("the open one answers");
        assert_eq!(stream.peer_addr().ok(), Some(open));
        assert_eq!(stream.local_addr().ok().map(|a| a.ip()), Some(source));

        let refused = connect_tcp_any(source, "closed", [closed]).await;
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused)
        );
        let other_family = connect_tcp_any(source, "v6only", [v6]).await;
        let message = other_family.map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("v6only has no address of the same family as 127.0.0.2".into())
        );
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let path = std::env::temp_dir().join(format!("tickwire-empty-ca-{}", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let refused = tls_client_config(Some(&path)).map(|_| ());
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(refused, Err(ClientTlsError::NoCertificate(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn a_subscribe_refused_for_every_symbol_is_reported() {
        let mut accepted = 0;
        let none = r#"{"type":"subscribed","id":1,"channel":"ticker","symbols":[]}"#;
        let unknown = r#"{"type":"error","id":1,"code":"unknown_symbol","message":"no such symbol","symbols":["X"]}"#;
        assert_eq!(refusal_of_all(none, &mut accepted), None);
        assert_eq!(
            refusal_of_all(unknown, &mut accepted).as_deref(),
            Some("no such symbol (unknown_symbol)")
        );
        // Some accepted: a refusal of the others is no reason to stop.
        let mut accepted = 0;
        let one = r#"{"type":"subscribed","id":1,"channel":"ticker","symbols":["A"]}"#;
        assert_eq!(refusal_of_all(one, &mut accepted), None);
        assert_eq!(refusal_of_all(unknown, &mut accepted), None);
        // Symbols the URL named, accepted without an id, count too.
        let mut accepted = 0;
        let by_url = r#"{"type":"subscribed","channel":"ticker","symbols":["A"]}"#;
        assert_eq!(refusal_of_all(by_url, &mut accepted), None);
        assert_eq!(refusal_of_all(none, &mut accepted), None);
        assert_eq!(refusal_of_all(unknown, &mut accepted), None);
        // A bad request gets no `subscribed` at all.
        let bad =
            r#"{"type":"error","id":1,"code":"bad_request","message":"`max_rate_hz` must be > 0"}"#;
        assert!(refusal_of_all(bad, &mut 0).is_some());
    }

    #[test]
    fn bare_urls_get_the_ws_path() {
        assert_eq!(
            websocket_url("ws://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(websocket_url("ws://h:1/"), "ws://h:1/ws");
        assert_eq!(
            websocket_url("ws://h:1/ws?symbols=A"),
            "ws://h:1/ws?symbols=A"
        );
        assert_eq!(websocket_url("ws://h:1?symbols=A"), "ws://h:1/ws?symbols=A");
    }
}
