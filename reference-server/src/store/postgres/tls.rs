//! TLS to PostgreSQL over rustls (ring), with libpq's `sslmode`s
//! (`sslmode.rs` reads them from the connection string).
//!
//! tokio-postgres negotiates TLS (the `SSLRequest`) and hands the socket to
//! a [`MakeTlsConnect`]; [`PgTls`] is ours. What the server's certificate
//! must prove depends on the mode, as in libpq:
//!
//! | sslmode | chain to a trusted CA | names the host |
//! |---|---|---|
//! | `prefer`, `require` | only if a CA file is given | no |
//! | `verify-ca` | yes | no |
//! | `verify-full` | yes | yes |
//!
//! The trusted CAs are the CA file (`sslrootcert=PATH`, or
//! `--database-ca-cert`), else the public web roots (`webpki-roots`). The
//! handshake signature is always checked against the certificate's key.
//! `prefer` falls back to plain TCP if the handshake fails
//! ([`PgTls::connect`]), as libpq does.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Connection, Socket};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::sslmode::{SslMode, TlsSettings};

/// Where the trusted CAs come from, for the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    Public,
}

/// Why TLS to PostgreSQL cannot be set up, or its handshake failed. Each
/// says what to pass to fix it.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error(
        "cannot read the PostgreSQL CA file {path}: {source}; give a readable PEM file with \
         sslrootcert=PATH in DATABASE_URL or --database-ca-cert PATH (DATABASE_CA_CERT)"
    )]
    ReadCa { path: PathBuf, source: io::Error },
    #[error(
        "the PostgreSQL CA file {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----); \
         give the CA that signed the server's certificate"
    )]
    EmptyCa(PathBuf),
    #[error("sslmode=verify-full needs a host name or IP address to check, not `{0}`")]
    BadHostName(String),
    #[error(
        "the PostgreSQL server's certificate is not signed by {roots} (sslmode={mode}): {detail}; \
         {fix}"
    )]
    UntrustedCertificate {
        roots: String,
        mode: SslMode,
        detail: String,
        fix: &'static str,
    },
    #[error(
        "the PostgreSQL server's certificate does not name the host `{host}` (sslmode=verify-full): \
         {detail}; connect with a host name the certificate names, or use sslmode=verify-ca to \
         check only that a trusted CA signed it"
    )]
    WrongHost { host: String, detail: String },
    #[error(
        "the PostgreSQL server's certificate does not verify (sslmode={mode}): {detail}; renew \
         it on the server, or give the CA that signs it with --database-ca-cert PATH"
    )]
    BadCertificate { mode: SslMode, detail: String },
    #[error("TLS handshake with the PostgreSQL server failed (sslmode={mode}): {detail}")]
    Handshake { mode: SslMode, detail: String },
}

/// The TLS side of every PostgreSQL connection of this crate (the pool,
/// dedicated connections, the cluster's LISTEN). Cheap to clone.
#[derive(Clone)]
pub struct PgTls {
    inner: Arc<Inner>,
}

struct Inner {
    mode: SslMode,
    roots: Roots,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.inner.mode)
            .field("roots", &self.inner.roots)
            .finish()
    }
}

impl PgTls {
    /// Reads the CA file (if any) and builds the client configuration.
    pub fn new(settings: &TlsSettings) -> Result<PgTls, PgTlsError> {
        let (roots, store) = match &settings.root_cert {
            Some(path) => (Roots::File(path.clone()), read_ca(path)?),
            None => (
                Roots::Public,
                RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            ),
        };
        let check = match settings.mode {
            SslMode::VerifyFull => Check::ChainAndName,
            SslMode::VerifyCa => Check::Chain,
            // libpq: with a CA file, `require` (and `prefer`) verify the chain.
            SslMode::Require | SslMode::Prefer if roots != Roots::Public => Check::Chain,
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Check::Nothing,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Verifier {
            roots: Arc::new(store),
            check,
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError::Handshake {
                mode: settings.mode,
                detail: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // What libpq sends; PostgreSQL 17's direct TLS (sslnegotiation=direct)
        // requires it, older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PgTls {
            inner: Arc::new(Inner {
                mode: settings.mode,
                roots,
                config: Arc::new(config),
            }),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.inner.mode
    }

    /// Connects with `config` (whose `ssl_mode` says whether to ask for TLS).
    /// Under `sslmode=prefer`, a failed handshake is retried in plain TCP,
    /// as libpq does.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, Connection<Socket, PgTlsStream>), tokio_postgres::Error> {
        match config.connect(self.clone()).await {
            Err(e) if self.inner.mode == SslMode::Prefer && is_handshake_error(&e) => {
                tracing::warn!("{}; sslmode=prefer connects without TLS", describe(&e));
                let mut plain = config.clone();
                plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
                plain.connect(self.clone()).await
            }
            result => result,
        }
    }
}

/// Whether `e` is a failed TLS handshake (not a refused connection, nor a
/// server without TLS).
fn is_handshake_error(e: &tokio_postgres::Error) -> bool {
    e.source()
        .is_some_and(|s| s.downcast_ref::<PgTlsError>().is_some())
}

/// An error and its causes on one line (tokio-postgres's own `Display`
/// leaves the cause out: "error performing TLS handshake").
pub fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn read_ca(path: &Path) -> Result<RootCertStore, PgTlsError> {
    let pem = std::fs::read(path).map_err(|source| PgTlsError::ReadCa {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PgTlsError::ReadCa {
            path: path.to_path_buf(),
            source,
        })?;
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(PgTlsError::EmptyCa(path.to_path_buf()));
    }
    Ok(store)
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = PgTlsError;

    /// `host` is the connection's host name (empty for a Unix socket, where
    /// the server never offers TLS); it is checked in [`PgTlsConnect`].
    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, PgTlsError> {
        Ok(PgTlsConnect {
            tls: self.clone(),
            host: host.to_string(),
        })
    }
}

/// One handshake, with the host the certificate must name.
pub struct PgTlsConnect {
    tls: PgTls,
    host: String,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, PgTlsError>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let inner = &self.tls.inner;
            let name = match ServerName::try_from(self.host.as_str()) {
                Ok(name) => name.to_owned(),
                Err(_) if inner.mode == SslMode::VerifyFull => {
                    return Err(PgTlsError::BadHostName(self.host));
                }
                // Not checked in the other modes; an IP address sends no SNI.
                Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
            };
            tokio_rustls::TlsConnector::from(inner.config.clone())
                .connect(name, socket)
                .await
                .map(PgTlsStream)
                .map_err(|e| handshake_error(inner, &self.host, e))
        })
    }
}

/// Words a failed handshake as what to do about it.
fn handshake_error(inner: &Inner, host: &str, e: io::Error) -> PgTlsError {
    let mode = inner.mode;
    let detail = e.to_string();
    let Some(rustls::Error::InvalidCertificate(cert)) =
        e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return PgTlsError::Handshake { mode, detail };
    };
    match cert {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            PgTlsError::WrongHost {
                host: host.to_string(),
                detail,
            }
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            let (roots, fix) = match &inner.roots {
                Roots::File(path) => (
                    format!("a CA in {}", path.display()),
                    "give the CA that signed it with sslrootcert=PATH in DATABASE_URL or \
                     --database-ca-cert PATH (DATABASE_CA_CERT)",
                ),
                Roots::Public => (
                    "a public CA (no CA file was given)".to_string(),
                    "give the CA that signed it with sslrootcert=PATH in DATABASE_URL or \
                     --database-ca-cert PATH (DATABASE_CA_CERT), or use sslmode=require to \
                     encrypt without checking the certificate",
                ),
            };
            PgTlsError::UntrustedCertificate {
                roots,
                mode,
                detail,
                fix,
            }
        }
        _ => PgTlsError::BadCertificate { mode, detail },
    }
}

/// What a server certificate must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check == Check::ChainAndName {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS connection to PostgreSQL.
pub struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for PgTlsStream {
    /// SCRAM's `tls-server-end-point` binding (RFC 5929): the server
    /// certificate's hash, so a man in the middle cannot relay the password
    /// exchange. None when the hash cannot be told (then SCRAM runs without
    /// binding, as libpq does with `channel_binding=prefer`).
    fn channel_binding(&self) -> ChannelBinding {
        let cert = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(|c| end_point_hash(c)) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 §4.1: the certificate hashed with its signature's hash, SHA-256
/// for MD5 and SHA-1. None for signatures without one hash (Ed25519, PSS).
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_oid(cert)?;
    let (family, last) = oid.split_at(oid.len().checked_sub(1)?);
    let bits = match (family, last[0]) {
        (RSA, 0x04 | 0x05 | 0x0b) | (ECDSA_SHA2, 0x02) => 256,
        (RSA, 0x0c) | (ECDSA_SHA2, 0x03) => 384,
        (RSA, 0x0d) | (ECDSA_SHA2, 0x04) => 512,
        _ if oid == ECDSA_SHA1 => 256,
        _ => return None,
    };
    Some(match bits {
        256 => Sha256::digest(cert).to_vec(),
        384 => Sha384::digest(cert).to_vec(),
        _ => Sha512::digest(cert).to_vec(),
    })
}

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280 §4.1): the
/// second element of the outer SEQUENCE.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der(cert)? else {
        return None;
    };
    let (0x30, algorithm, _) = der(rest)? else {
        return None;
    };
    match der(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// One DER element: its tag, its contents, and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b))
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        for (alg, len) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
            (&rcgen::PKCS_RSA_SHA256, 32),
        ] {
            let key = match rcgen::KeyPair::generate_for(alg) {
                Ok(key) => key,
                // ring cannot generate RSA keys; the ECDSA ones cover the parsing.
                Err(_) => continue,
            };
            let cert = rcgen::CertificateParams::new(vec!["db".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let hash = end_point_hash(cert.der()).expect("a hash");
            assert_eq!(hash.len(), len);
        }
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        assert_eq!(end_point_hash(cert.der()), None);
        assert_eq!(end_point_hash(b"\x30\x83"), None);
        assert_eq!(end_point_hash(b""), None);
    }

    #[test]
    fn a_missing_or_empty_ca_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |path: &Path| TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(path.to_path_buf()),
        };
        let missing = PgTls::new(&settings(&dir.path().join("nope.pem"))).unwrap_err();
        assert!(
            missing.to_string().contains("--database-ca-cert"),
            "{missing}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = PgTls::new(&settings(&empty)).unwrap_err();
        assert!(matches!(e, PgTlsError::EmptyCa(_)), "{e}");
        assert!(PgTls::new(&TlsSettings::default()).is_ok());
    }
}
