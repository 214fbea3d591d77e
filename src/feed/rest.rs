//! A venue's REST depth snapshot, fetched over `http://` or `https://`.
//!
//! Binance's depth diffs come on the WebSocket stream, but the book they
//! change starts from a snapshot served over REST
//! (`/api/v3/depth?symbol=BTCUSDT&limit=1000`). One GET per snapshot, on a
//! connection of its own: snapshots are rare (at start and after a gap), so
//! there is nothing to keep alive between them. hyper speaks HTTP/1.1,
//! rustls (the tree's one TLS stack) the TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest snapshot body read: Binance's deepest (5,000 levels a side)
/// is about 400 KB.
pub const MAX_SNAPSHOT_BYTES: usize = 4 << 20;

/// How long to hold off after a `429` or `418` that does not say.
pub const DEFAULT_BACK_OFF: Duration = Duration::from_secs(60);
/// The longest `Retry-After` taken as said.
const MAX_BACK_OFF: Duration = Duration::from_secs(3_600);

/// Why a GET brought no body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The API answered, but not `200 OK`.
    #[error("HTTP {status}")]
    Refused {
        status: u16,
        /// What its `Retry-After` said, in seconds (an HTTP date is not read).
        retry_after: Option<Duration>,
    },
    /// No answer: connect, TLS, a timeout, a body too large, or one that
    /// does not hold what was asked for.
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    /// How long every request of the feed should wait, when the API said
    /// to slow down: `429 Too Many Requests`, or Binance's `418` (an IP ban
    /// for requests that went on after a 429).
    pub fn back_off(&self) -> Option<Duration> {
        match self {
            FetchError::Refused {
                status: 429 | 418,
                retry_after,
            } => Some(
                retry_after
                    .unwrap_or(DEFAULT_BACK_OFF)
                    .clamp(Duration::from_secs(1), MAX_BACK_OFF),
            ),
            _ => None,
        }
    }
}

/// `template` with `{symbol}` replaced by `symbol`, which is escaped for a
/// URL query (a symbol is the venue's, so this is belt and braces).
pub fn snapshot_url(template: &str, symbol: &str) -> String {
    let escaped: String = url::form_urlencoded::byte_serialize(symbol.as_bytes()).collect();
    template.replace("{symbol}", &escaped)
}

/// Whether a snapshot URL template can be fetched: `http://` or `https://`,
/// with a host, naming the symbol.
pub fn check_template(template: &str) -> Result<(), String> {
    if !template.contains("{symbol}") {
        return Err("must contain {symbol}, where each symbol's name goes".into());
    }
    let url = url::Url::parse(&snapshot_url(template, "BTCUSDT")).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "must be an http:// or https:// URL with a host, not {template:?}"
        ));
    }
    Ok(())
}

/// GETs `url` and returns its body, which must come with `200 OK` and hold
/// at most [`MAX_SNAPSHOT_BYTES`], all within `timeout`.
pub async fn get(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    tokio::time::timeout(timeout, get_unbounded(url, tls))
        .await
        .map_err(|_| FetchError::Failed(format!("no answer within {} ms", timeout.as_millis())))?
}

trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

async fn get_unbounded(url: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Bytes, FetchError> {
    let failed = FetchError::Failed;
    let parsed = url::Url::parse(url).map_err(|e| failed(format!("bad URL: {e}")))?;
    let (host, port) = crate::client::server_host_port(&parsed)
        .ok_or_else(|| failed("the URL has no host".into()))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| failed(format!("connect failed: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Connection> = if parsed.scheme() == "https" {
        let name =
            ServerName::try_from(host.clone()).map_err(|e| failed(format!("TLS name: {e}")))?;
        let tls = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("TLS failed: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(format!("HTTP handshake failed: {e}")))?;
    // The connection is driven beside the request and ends with it.
    let connection = tokio::spawn(connection);
    let target = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let authority = match parsed.port() {
        Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or(&host)),
        None => parsed.host_str().unwrap_or(&host).to_owned(),
    };
    let request = hyper::Request::get(target)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "tickwire")
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(format!("request: {e}")))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(format!("request failed: {e}")))?;
        let status = response.status();
        if status != hyper::StatusCode::OK {
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(FetchError::Refused {
                status: status.as_u16(),
                retry_after,
            });
        }
        let body = Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the body: {e}")))?;
        Ok(body.to_bytes())
    }
    .await;
    connection.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_the_symbol_and_an_http_host() {
        assert_eq!(
            snapshot_url("https://x/depth?symbol={symbol}&limit=1000", "BTCUSDT"),
            "https://x/depth?symbol=BTCUSDT&limit=1000"
        );
        assert_eq!(
            snapshot_url("http://x/{symbol}", "A&B C"),
            "http://x/A%26B+C"
        );
        assert!(check_template("https://api.binance.com/api/v3/depth?symbol={symbol}").is_ok());
        assert!(check_template("http://127.0.0.1:9/d?s={symbol}").is_ok());
        for bad in [
            "https://api.binance.com/api/v3/depth?symbol=BTCUSDT",
            "wss://x/{symbol}",
            "{symbol}",
            "/depth?symbol={symbol}",
        ] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
    }
}
