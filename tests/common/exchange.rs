//! A fake exchange: a real WebSocket server on 127.0.0.1 that plays scripted
//! messages to every connection, optionally over TLS with a self-signed
//! certificate, and can be killed and restarted on the same port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// What the exchange does on each connection.
#[derive(Clone, Debug)]
pub struct Script {
    /// Sent in order as soon as the client connects.
    pub messages: Vec<Message>,
    /// After the messages: keep the connection open and silent (true) or close it.
    pub hold: bool,
    /// While holding, send this message this often: a ping, or a venue's
    /// keep-alive, alive yet without data.
    pub keepalive: Option<(Duration, Message)>,
}

/// A running fake exchange; dropping it (or `kill`) closes every connection.
pub struct FakeExchange {
    pub addr: SocketAddr,
    /// Text messages clients sent (e.g. a subscribe request).
    pub received: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
}

impl FakeExchange {
    /// Listens on `addr` (port 0 for any) and serves `script`.
    pub async fn start(
        addr: SocketAddr,
        script: Script,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind");
        let listener: TcpListener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let script = script.clone();
                let tls = tls.clone();
                let log = log.clone();
                connections.spawn(async move {
                    match tls {
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                play(stream, script, log).await;
                            }
                        }
                        None => play(stream, script, log).await,
                    }
                });
            }
        });
        Self {
            addr,
            received,
            tasks,
        }
    }

    /// Stops listening and drops every connection abruptly.
    pub async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn play<S>(stream: S, script: Script, received: Arc<std::sync::Mutex<Vec<String>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    for message in script.messages {
        if socket.feed(message).await.is_err() {
            return;
        }
    }
    if socket.flush().await.is_err() {
        return;
    }
    if script.hold {
        // Read (and answer pings) until the client goes away; send no data.
        // The first one after a period, not at once.
        let mut keepalive = script.keepalive.map(|(every, message)| {
            let first = tokio::time::Instant::now() + every;
            (tokio::time::interval_at(first, every), message)
        });
        loop {
            let due = async {
                match &mut keepalive {
                    Some((every, message)) => {
                        every.tick().await;
                        message.clone()
                    }
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                message = socket.next() => message,
                keepalive = due => {
                    if socket.send(keepalive).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(Ok(message)) = message else {
                break;
            };
            if let Message::Text(text) = message {
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(text.to_string());
            }
        }
    } else {
        let _ = socket.close(None).await;
    }
}

/// A self-signed certificate for `localhost`: the server's TLS config, and the
/// certificate in PEM written to `pem_path` for the client to trust.
pub fn self_signed_tls(pem_path: &Path) -> Arc<tokio_rustls::rustls::ServerConfig> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(pem_path, certified.cert.pem()).expect("write PEM");
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        certified.signing_key.serialize_der().into(),
    );
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    Arc::new(config)
}

/// The raw messages of a Binance capture's first `count` lines.
pub fn binance_messages(path: &Path, count: usize) -> Vec<String> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).expect("capture");
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
    reader
        .lines()
        .take(count)
        .map(|line| {
            let line = line.expect("line");
            line.split_once(' ').expect("capture line").1.to_owned()
        })
        .collect()
}

/// A pause long enough for a reconnecting feed to notice, never asserted on.
pub const SETTLE: Duration = Duration::from_millis(50);

/// A venue's REST API on 127.0.0.1 serving depth snapshots, optionally over
/// TLS: for each symbol (the `symbol` query parameter), its answers in turn,
/// the last one repeated; a symbol without answers gets 404. Keeps every
/// request's query.
pub struct FakeRest {
    pub addr: SocketAddr,
    pub queries: Arc<std::sync::Mutex<Vec<String>>>,
    scheme: &'static str,
    tasks: JoinSet<()>,
}

/// An answer: HTTP status and body.
pub type RestAnswer = (u16, String);

type RestAnswers = Arc<
    std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<RestAnswer>>>,
>;

impl FakeRest {
    pub async fn start(answers: Vec<(&str, Vec<RestAnswer>)>) -> Self {
        Self::start_with(answers, None).await
    }

    pub async fn start_with(
        answers: Vec<(&str, Vec<RestAnswer>)>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        let answers: RestAnswers = Arc::new(std::sync::Mutex::new(
            answers
                .into_iter()
                .map(|(symbol, answers)| (symbol.to_owned(), answers.into()))
                .collect(),
        ));
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let log = queries.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (answers, log, tls) = (answers.clone(), log.clone(), tls.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let answer = Self::answer(&answers, &log, &request);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                        }
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            queries,
            scheme,
            tasks,
        }
    }

    fn answer(
        answers: &RestAnswers,
        log: &std::sync::Mutex<Vec<String>>,
        request: &hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        let query = request.uri().query().unwrap_or_default().to_owned();
        let symbol = url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "symbol")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        if let Ok(mut log) = log.lock() {
            log.push(query);
        }
        let answer = answers.lock().ok().and_then(|mut answers| {
            let queue = answers.get_mut(&symbol)?;
            if queue.len() > 1 {
                queue.pop_front()
            } else {
                queue.front().cloned()
            }
        });
        let (status, body) = answer.unwrap_or((404, "no such symbol".into()));
        let mut response = hyper::Response::new(http_body_util::Full::new(body.into()));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        response
    }

    /// The snapshot URL template of this API (`localhost`, the name its
    /// certificate holds, over TLS).
    pub fn template(&self) -> String {
        let host = if self.scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!(
            "{}://{host}:{}/depth?symbol={{symbol}}&limit=1000",
            self.scheme,
            self.addr.port()
        )
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.queries.lock().map_or(0, |q| q.len())
    }
}

impl Drop for FakeRest {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}
