//! TLS for test servers with certificates for chosen names, and a loopback
//! HTTPS server for MTA-STS policies (`breakwater check`, delivery).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TLS acceptor for a self-signed certificate (`names`, valid `days` from
/// now; negative = expired), its PEM appended to `bundle`.
pub fn acceptor(names: &[&str], days: i64, bundle: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    if days < 0 {
        params.not_before = now - time::Duration::days(400);
    } else {
        params.not_before = now - time::Duration::days(1);
    }
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let mut pem = std::fs::read_to_string(bundle).unwrap_or_default();
    pem.push_str(&cert.pem());
    std::fs::write(bundle, pem).unwrap();
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A loopback HTTPS server for MTA-STS policies: answers by Host header
/// with `policies[host]` (`None`: never answers; absent: 404), and counts
/// the requests per host.
pub struct PolicyServer {
    pub addr: SocketAddr,
    pub policies: Arc<Mutex<HashMap<String, Option<String>>>>,
    fetches: Arc<Mutex<HashMap<String, usize>>>,
}

impl PolicyServer {
    pub async fn start(
        acceptor: tokio_rustls::TlsAcceptor,
        policies: HashMap<String, Option<String>>,
    ) -> PolicyServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = PolicyServer {
            addr: listener.local_addr().unwrap(),
            policies: Arc::new(Mutex::new(policies)),
            fetches: Arc::default(),
        };
        let (policies, fetches) = (server.policies.clone(), server.fetches.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, policies, fetches) =
                    (acceptor.clone(), policies.clone(), fetches.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && tls.read(&mut byte).await.unwrap_or(0) == 1
                    {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("host:"))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    *fetches.lock().unwrap().entry(host.clone()).or_default() += 1;
                    let policy = policies.lock().unwrap().get(&host).cloned();
                    match policy {
                        Some(Some(body)) => {
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = tls.write_all(answer.as_bytes()).await;
                            let _ = tls.shutdown().await;
                        }
                        Some(None) => tokio::time::sleep(Duration::from_secs(60)).await,
                        None => {
                            let _ = tls
                                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                                .await;
                        }
                    }
                });
            }
        });
        server
    }

    /// Requests for `https://HOST/…` so far.
    pub fn fetches(&self, host: &str) -> usize {
        self.fetches.lock().unwrap().get(host).copied().unwrap_or(0)
    }
}
