//! What the benchmark reads off the server besides its messages: `/metrics`
//! over a minimal HTTP/1.1 GET, and CPU time and memory from `/proc/PID`.
//! Parsing is separate from the reading, so it is tested without a server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::metrics::status_kib;

/// A `/metrics` page larger than this is not a tickwire server's.
const MAX_RESPONSE_BYTES: u64 = 8 << 20;
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the server's HTTP side is: `host:port`, and TLS for an `https://`
/// (`wss://`) server.
#[derive(Clone)]
pub struct HttpServer {
    /// A name or an address; IPv6 without brackets.
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl HttpServer {
    /// `host:port` as a URL or a `Host` header writes it (`[::1]:8080`).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority())
    }
}

/// `GET path` on `server`, returning the body of a 200 answer.
pub async fn http_get(server: &HttpServer, path: &str) -> anyhow::Result<Vec<u8>> {
    let url = server.url(path);
    let exchange = async {
        let stream = TcpStream::connect((server.host.as_str(), server.port)).await?;
        match &server.tls {
            None => exchange(stream, server, path).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(server.host.clone())?;
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                exchange(connector.connect(name, stream).await?, server, path).await
            }
        }
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET {url} timed out"))?
        .with_context(|| format!("GET {url}"))?;
    http_body(&response).with_context(|| format!("GET {url}"))
}

/// One request, and the response read until the server closes.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    server: &HttpServer,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.authority()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A TLS server may end without close_notify; what arrived is kept.
    let read = (&mut stream)
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .await;
    match read {
        Ok(_) => Ok(response),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

/// The body of a complete HTTP/1.1 response read until the server closed:
/// 200 only; `Content-Length`, chunked, or delimited by the close.
pub fn http_body(response: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Some(head_end) = find(response, b"\r\n\r\n") else {
        bail!("incomplete HTTP response head");
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("HTTP status `{status}`");
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(length) if body.len() < length => bail!("body ends early"),
        Some(length) => Ok(body[..length].to_vec()),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            bail!("chunk size line missing");
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        // The size is the server's word: one past the body is an error, not
        // an overflow.
        if body.len() < size.saturating_add(2) {
            bail!("chunk ends early");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Prometheus text exposition: each sample line as `series -> value`, where the
/// series is the name with its labels exactly as written (`a{b="c"}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsPage {
    samples: HashMap<String, f64>,
}

impl MetricsPage {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                // The value follows the last space (label values here hold none).
                let (series, value) = line.trim().rsplit_once(' ')?;
                Some((series.trim().to_owned(), value.parse().ok()?))
            })
            .collect();
        Self { samples }
    }

    /// One series, e.g. `name` or `name{quantile="0.5"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The sum over every label set of `name`, if it appears at all.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for (series, value) in &self.samples {
            let base = series.split('{').next().unwrap_or_default();
            if base == name {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }
}

/// CPU time and memory of a process, from `/proc/PID/stat` and `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

impl ProcSample {
    /// Reads `/proc/{pid}` (`pid` may be `self`).
    pub fn read(pid: &str) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let Some(cpu_ticks) = cpu_ticks(&stat) else {
            bail!("cannot parse /proc/{pid}/stat");
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        Ok(Self {
            cpu_ticks,
            rss_bytes: status_kib(&status, "VmRSS:").map(|kib| kib * 1024),
            peak_rss_bytes: status_kib(&status, "VmHWM:").map(|kib| kib * 1024),
        })
    }
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt
    // cminflt majflt cmajflt utime(14) stime(15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second for `/proc` CPU times: `getconf CLK_TCK`, or 100
/// (the value on every mainstream Linux) if that cannot be run.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_server_is_named_with_brackets() {
        let server = |host: &str| HttpServer {
            host: host.into(),
            port: 8080,
            tls: None,
        };
        assert_eq!(server("::1").authority(), "[::1]:8080");
        assert_eq!(server("::1").url("/metrics"), "http://[::1]:8080/metrics");
        assert_eq!(server("localhost").authority(), "localhost:8080");
    }

    #[test]
    fn bodies_by_length_chunks_or_close() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(http_body(sized).ok(), Some(b"hello".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).ok(), Some(b"hello".to_vec()));
        let closed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello";
        assert_eq!(http_body(closed).ok(), Some(b"hello".to_vec()));
        assert!(http_body(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn a_chunk_larger_than_the_body_is_an_error() {
        for body in [&b"ffffffffffffffff\r\nab\r\n0\r\n\r\n"[..], b"5\r\nab"] {
            let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            response.extend_from_slice(body);
            assert!(http_body(&response).is_err());
        }
    }

    #[test]
    fn metrics_by_series_and_summed_over_labels() {
        let page = MetricsPage::parse(
            "# HELP tickwire_book_updates_total Book versions published.\n\
             # TYPE tickwire_book_updates_total counter\n\
             tickwire_book_updates_total 1234\n\
             tickwire_feed_ticks_total{feed=\"a\"} 10\n\
             tickwire_feed_ticks_total{feed=\"b\"} 5\n\
             tickwire_delivery_latency_seconds{quantile=\"0.99\"} 0.000123\n",
        );
        assert_eq!(page.get("tickwire_book_updates_total"), Some(1234.0));
        assert_eq!(
            page.get("tickwire_delivery_latency_seconds{quantile=\"0.99\"}"),
            Some(0.000123)
        );
        assert_eq!(page.sum("tickwire_feed_ticks_total"), Some(15.0));
        assert_eq!(page.sum("tickwire_feed"), None);
        assert_eq!(page.get("missing"), None);
    }

    #[test]
    fn proc_cpu_and_memory() {
        let stat = "4242 (tick wire (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 5 0";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
        let status = "Name:\ttickwire\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10_240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20_480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }
}
