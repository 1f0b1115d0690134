//! Whom the harness trusts over TLS (`https://` and `wss://`): the public
//! roots and the certificates of `--ca-cert`, for `conform`, `run` and
//! `load` alike; and how a certificate failure is worded.

use std::path::Path;
use std::sync::Arc;

/// Said after a certificate failure.
pub const CA_HINT: &str = "for a private or self-signed certificate, pass --ca-cert FILE";

/// The rustls configuration for the WebSocket upgrades (and the load
/// agents), and the extra roots for the HTTP client.
pub type Trust = (Arc<rustls::ClientConfig>, Vec<reqwest::Certificate>);

/// Why `--ca-cert` cannot be trusted: a usage error (exit 2), naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--ca-cert {path}: {why}")]
    CaCert { path: String, why: String },
    #[error("no TLS configuration: {0}")]
    Config(String),
}

/// The public (webpki) roots, and the certificates of the PEM file
/// `ca_cert` if given (returned for the HTTP client too). A file that
/// cannot be read or holds no certificate is an error naming it.
pub fn trust(ca_cert: Option<&Path>) -> Result<Trust, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut extra = Vec::new();
    if let Some(path) = ca_cert {
        let fail = |why: String| TlsError::CaCert {
            path: path.display().to_string(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        for cert in certs {
            extra.push(reqwest::Certificate::from_der(&cert).map_err(|e| fail(e.to_string()))?);
            roots
                .add(cert)
                .map_err(|e| fail(format!("not a CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(config), extra))
}

/// An error and its causes, e.g. "error sending request for url (…):
/// client error (Connect): invalid peer certificate: UnknownIssuer".
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Whether a message tells of a certificate that did not verify.
pub fn is_certificate_failure(text: &str) -> bool {
    text.contains("certificate")
}

/// The message, with [`CA_HINT`] when a certificate is its cause.
pub fn hint(text: String) -> String {
    if is_certificate_failure(&text) && !text.contains("--ca-cert") {
        format!("{text}: {CA_HINT}")
    } else {
        text
    }
}

/// An error and its causes, with [`CA_HINT`] when a certificate is one.
pub fn describe(error: &dyn std::error::Error) -> String {
    hint(chain(error))
}
