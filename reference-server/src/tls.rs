//! WS-AUTH-6: `wss://` and `https://` when given a certificate and key.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Builds a TLS acceptor from PEM files (ring as the crypto provider).
pub fn acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(
        File::open(cert_path)
            .with_context(|| format!("cannot read --tls-cert {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| {
        format!(
            "--tls-cert {} is not a PEM certificate chain",
            cert_path.display()
        )
    })?;
    if certs.is_empty() {
        bail!("--tls-cert {} holds no certificate", cert_path.display());
    }
    let key = rustls_pemfile::private_key(&mut BufReader::new(
        File::open(key_path)
            .with_context(|| format!("cannot read --tls-key {}", key_path.display()))?,
    ))
    .with_context(|| format!("--tls-key {} is not a PEM private key", key_path.display()))?
    .with_context(|| format!("--tls-key {} holds no private key", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
