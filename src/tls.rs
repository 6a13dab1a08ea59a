//! The server certificate for STARTTLS: loaded from PEM files, swappable at
//! run time (SIGHUP), and generated self-signed for a fresh checkout.
//!
//! rustls with the `ring` provider only, TLS 1.2 and 1.3 only.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The current acceptor; `None` when no certificate is configured or loadable.
#[derive(Clone, Default)]
pub struct TlsHandle {
    current: Arc<RwLock<Option<TlsAcceptor>>>,
}

impl TlsHandle {
    pub fn new(acceptor: Option<TlsAcceptor>) -> TlsHandle {
        TlsHandle {
            current: Arc::new(RwLock::new(acceptor)),
        }
    }

    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().expect("tls lock").clone()
    }

    pub fn replace(&self, acceptor: TlsAcceptor) {
        *self.current.write().expect("tls lock") = Some(acceptor);
    }
}

pub fn load_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    load_server_config(cert, key, &[]).map(|c| TlsAcceptor::from(Arc::new(c)))
}

/// The same certificate handling for the web listener, offering HTTP/1.1 by ALPN.
pub fn load_acceptor_for_http(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    load_server_config(cert, key, &[b"http/1.1"]).map(|c| TlsAcceptor::from(Arc::new(c)))
}

fn load_server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let file_error = |path: &Path, problem: String| TlsError::File {
        file: path.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, format!("cannot read certificate chain: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("cannot read private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// When the first certificate in a PEM file stops being valid.
pub fn not_after(cert: &Path) -> Result<time::OffsetDateTime, TlsError> {
    let pem = std::fs::read_to_string(cert).map_err(|e| TlsError::File {
        file: cert.display().to_string(),
        problem: e.to_string(),
    })?;
    let params = rcgen::CertificateParams::from_ca_cert_pem(&pem).map_err(|e| TlsError::File {
        file: cert.display().to_string(),
        problem: format!("cannot parse certificate: {e}"),
    })?;
    Ok(params.not_after)
}

/// Write a self-signed certificate and key for `hosts` (labs and tests).
pub fn write_self_signed(
    hosts: &[String],
    cert: &Path,
    key: &Path,
    days: u32,
) -> Result<(), TlsError> {
    let error = |path: &Path, problem: String| TlsError::File {
        file: path.display().to_string(),
        problem,
    };
    let mut params =
        rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| error(cert, e.to_string()))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key_pair = rcgen::KeyPair::generate().map_err(|e| error(key, e.to_string()))?;
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|e| error(cert, e.to_string()))?;
    let _ = std::fs::remove_file(key);
    write_private(key, key_pair.serialize_pem().as_bytes())?;
    crate::fsutil::write_atomic(cert, certificate.pem().as_bytes(), Some(0o644))
        .map_err(|e| error(cert, e.to_string()))
}

/// Write a self-signed certificate for `hostname` when neither file exists.
/// Returns whether one was generated.
pub fn ensure_dev_certificate(cert: &Path, key: &Path, hostname: &str) -> Result<bool, TlsError> {
    if cert.exists() || key.exists() {
        return Ok(false);
    }
    let generated =
        rcgen::generate_simple_self_signed(vec![hostname.to_string(), "localhost".to_string()])
            .map_err(|e| TlsError::File {
                file: cert.display().to_string(),
                problem: format!("cannot generate certificate: {e}"),
            })?;
    write_private(key, generated.key_pair.serialize_pem().as_bytes())?;
    crate::fsutil::write_atomic(cert, generated.cert.pem().as_bytes(), Some(0o644)).map_err(
        |e| TlsError::File {
            file: cert.display().to_string(),
            problem: e.to_string(),
        },
    )?;
    Ok(true)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    crate::fsutil::write_atomic(path, data, Some(0o600)).map_err(|e| TlsError::File {
        file: path.display().to_string(),
        problem: e.to_string(),
    })
}
