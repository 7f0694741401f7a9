//! Learning the cluster CA from a server, with only its hash (the join token's pin):
//! one TLS handshake, accepted only when a certificate in the server's chain has that
//! hash and the server's own certificate verifies under it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::trust::{provider, server_name, verifier_of};
use super::{CaPin, TlsError};

/// How long the connection and the handshake may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM of the CA that `pin` names, as `addr` (HOST:PORT or a URL) presents it in
/// its chain, with the server verified as `name` under it.
pub async fn fetch_ca(addr: &str, pin: &CaPin, name: &str) -> Result<String, TlsError> {
    let host_port = host_port(addr);
    let unreachable = |reason: String| TlsError::Unreachable {
        addr: host_port.to_string(),
        reason,
    };
    let not_pinned = |reason: String| TlsError::NotPinned {
        addr: host_port.to_string(),
        reason,
    };
    let verifier = Arc::new(PinnedCa {
        pin: *pin,
        found: Mutex::new(None),
    });
    let config = client_config(verifier.clone()).map_err(|e| not_pinned(e.to_string()))?;
    let name = server_name(name).map_err(not_pinned)?;
    let handshake = async {
        let tcp = TcpStream::connect(host_port)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| not_pinned(format!("the TLS handshake failed: {e}")))
    };
    tokio::time::timeout(TIMEOUT, handshake)
        .await
        .map_err(|_| unreachable(format!("no handshake within {TIMEOUT:?}")))??;
    let der = verifier
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| not_pinned("no CA was found".into()))?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", der)))
}

/// HOST:PORT of an address that may be a URL.
pub(super) fn host_port(addr: &str) -> &str {
    addr.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
}

/// A client that checks the server's certificate with `verifier` alone.
pub(super) fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct PinnedCa {
    pin: CaPin,
    /// The CA's DER, once a chain had it.
    found: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| self.pin.matches(c))
            .ok_or_else(|| {
                rustls::Error::General(
                    "no certificate in the server's chain has the token's CA hash".into(),
                )
            })?;
        let verified = verifier_of(ca)
            .map_err(rustls::Error::General)?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.to_vec());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
