//! Whether a server speaks TLS, for a plain-text client that failed there: it can then
//! say what to give instead of "connection reset". The probe verifies nothing and
//! sends nothing after the handshake.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::discover::{client_config, host_port};
use super::trust::{provider, server_name};

/// A probe only improves an error message: it must not hold up what follows for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether `addr` answers a TLS handshake with a certificate: a plain-text client that
/// failed there can then say what to give instead of "connection reset".
pub async fn serves_tls(addr: &str) -> bool {
    let host_port = host_port(addr);
    let verifier = Arc::new(Presented::default());
    let Ok(config) = client_config(verifier.clone()) else {
        return false;
    };
    let Ok(name) = server_name(super::SCHEDULER_NAME) else {
        return false;
    };
    let probe = async {
        let tcp = TcpStream::connect(host_port).await.ok()?;
        let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        Some(())
    };
    let _ = tokio::time::timeout(PROBE_TIMEOUT, probe).await;
    verifier.presented.load(Ordering::Relaxed)
}

/// Refuses every server, noting that one presented a certificate.
#[derive(Debug, Default)]
struct Presented {
    presented: AtomicBool,
}

impl ServerCertVerifier for Presented {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.presented.store(true, Ordering::Relaxed);
        Err(rustls::Error::General("a probe only".into()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("a probe only".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("a probe only".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
