//! TLS for clients: `https://` and `wss://` on the same listener, with rustls
//! and the ring provider (the tree's only one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {error}")]
    Pem {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(rustls::Error),
}

/// A server configuration from a PEM certificate chain and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let pem_error = |path: &Path| {
        let path = path.to_owned();
        move |error| TlsSetupError::Pem { path, error }
    };
    let read = |path: &Path| {
        crate::files::read_settings_bytes(path)
            .map_err(|error| pem_error(path)(rustls::pki_types::pem::Error::Io(error)))
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(cert))?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(pem_error(key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsSetupError::Rustls)?;
    // WebSocket upgrades are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
