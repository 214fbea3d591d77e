//! A real `nats-server` with JetStream for the scale-out tests, on a random
//! port with its store in a fresh directory; killed and removed on drop. It
//! can be killed and started again on the same port and store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickwire::fanout::Hub;
use tickwire::metrics::Metrics;
use tickwire::server::{self, ServerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    /// Whether it runs with JetStream (`-js`).
    jetstream: bool,
    /// A configuration file it reads (`-c`).
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts `nats-server -p -1 -js` and waits for the port it chose.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// [`NatsServer::start`] reading `config` (nats-server's configuration
    /// format, e.g. `max_payload: 1024`) unless it is empty.
    pub fn start_with_config(config: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tickwire-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nats dir");
        let config = (!config.is_empty()).then(|| {
            let path = dir.join("nats.conf");
            std::fs::write(&path, config).expect("nats config");
            path
        });
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            jetstream: true,
            config,
        };
        server.launch("-1");
        server
    }

    fn launch(&mut self, port: &str) {
        let mut command = Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        if self.jetstream {
            command.arg("-js");
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", port, "-sd"])
            .arg(self.dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        let ports_file = self.dir.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        self.port = wait_for_port(&ports_file);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, without JetStream.
    pub fn restart_without_jetstream(&mut self) {
        self.jetstream = false;
        self.restart();
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let deadline = Instant::now() + super::GUARD;
        // The old listener may linger for a moment after the kill.
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "port {port} never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.launch(&port);
    }
}

fn wait_for_port(ports_file: &Path) -> u16 {
    let deadline = Instant::now() + super::GUARD;
    loop {
        if let Ok(text) = std::fs::read_to_string(ports_file) {
            let ports: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let port = ports["nats"][0]
                .as_str()
                .and_then(|url| url.rsplit(':').next())
                .and_then(|port| port.parse().ok());
            if let Some(port) = port {
                return port;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nats-server never wrote its port"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server over an existing hub (an ingest's or a gateway's), stopped on drop.
pub struct HubServer {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HubServer {
    pub async fn start(hub: Arc<Hub>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(server::run(
            listener,
            hub.clone(),
            ServerConfig::default(),
            async move { until.cancelled().await },
        ));
        Self {
            addr,
            hub,
            stop,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Whether the server task is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An empty hub with its own metrics.
pub fn new_hub() -> Arc<Hub> {
    Arc::new(Hub::new(Arc::new(Metrics::default())))
}
