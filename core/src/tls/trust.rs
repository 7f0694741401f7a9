//! What a server presents and what a client trusts, as rustls and tonic want them.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, ServerTlsConfig};

use super::{fetch_ca, CaPin, Identity, TlsError};

/// How a client verifies the server it dials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// No TLS.
    Plain,
    /// The cluster CA's certificate, as PEM (`--ca-cert`, or learned once).
    Ca(String),
    /// Only the CA's hash, from the join token: the CA is learned from the server's
    /// chain at the first connection.
    Pin(CaPin),
}

impl Trust {
    /// What a client with `ca_pem` (a CA file's contents) and `token` trusts: the file
    /// first, then the token's pin; neither is plain text.
    pub fn from_parts(ca_pem: Option<String>, token: Option<&super::JoinToken>) -> Trust {
        match (ca_pem, token.and_then(|t| t.pin)) {
            (Some(pem), _) => Trust::Ca(pem),
            (None, Some(pin)) => Trust::Pin(pin),
            (None, None) => Trust::Plain,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Trust::Plain)
    }

    /// The CA's PEM, learning it first from `addr`, a server named `name`, for a pin.
    pub async fn ca_pem(&self, addr: &str, name: &str) -> Result<Option<String>, TlsError> {
        match self {
            Trust::Plain => Ok(None),
            Trust::Ca(pem) => Ok(Some(pem.clone())),
            Trust::Pin(pin) => fetch_ca(addr, pin, name).await.map(Some),
        }
    }
}

/// The contents of a CA certificate file (`--ca-cert`), checked to be one.
pub fn read_ca_file(path: &std::path::Path) -> Result<String, TlsError> {
    let error = |reason: String| TlsError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    match pem::parse(&pem) {
        Ok(p) if p.tag() == "CERTIFICATE" => Ok(pem),
        Ok(p) => Err(error(format!("expected a CERTIFICATE, found {}", p.tag()))),
        Err(e) => Err(error(format!("not a PEM certificate ({e})"))),
    }
}

/// A tonic server presenting `identity`. A handshake must end within
/// [`super::HANDSHAKE_TIMEOUT`]: one begun and left (a ClientHello, then silence) is past
/// what the connection limits count as saying hello, and tonic waits for ever by default.
pub fn tonic_server(identity: &Identity) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &identity.chain_pem,
            &identity.key_pem,
        ))
        .timeout(super::HANDSHAKE_TIMEOUT)
}

/// A tonic client that trusts only `ca_pem` and expects the server to be `name`.
pub fn tonic_client(ca_pem: &str, name: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(name)
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTP/1.1 server presenting `identity`.
pub fn http_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let bad = |e: String| TlsError::Certificate(e);
    let chain = pem::parse_many(&identity.chain_pem)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    let key = PrivateKeyDer::try_from(
        pem::parse(&identity.key_pem)
            .map_err(|e| bad(e.to_string()))?
            .into_contents(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A verifier that trusts only `ca_der`.
pub(super) fn verifier_of(
    ca_der: &[u8],
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| e.to_string())?;
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())
}

/// Whether `leaf` verifies as `name` under `ca`.
#[cfg(test)]
pub(super) fn verify_for_test(ca: &super::ClusterCa, leaf: &[u8], name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    let ca_der = pem::parse(ca.cert_pem()).expect("pem").into_contents();
    let verifier = verifier_of(&ca_der).expect("a verifier");
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.to_vec()),
            &[],
            &ServerName::try_from(name.to_string()).expect("a name"),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
}

pub(super) fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| e.to_string())
}
