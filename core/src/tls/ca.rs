//! The cluster CA: made once, kept by the scheduler's store, and the certificates it
//! issues to schedulers and agents.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{CaPin, TlsError};

/// Certificates are not renewed while a process runs (each start gets a new one), so
/// they outlast any process; the CA outlasts the cluster.
const LEAF_VALIDITY: Duration = Duration::days(5 * 365);
const CA_VALIDITY: Duration = Duration::days(30 * 365);
/// Clocks of a homelab's machines disagree; a certificate from one is valid on another.
const CLOCK_SKEW: Duration = Duration::days(1);

/// A certificate chain (the holder's, then the CA's) and the holder's key, as PEM.
#[derive(Clone)]
pub struct Identity {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn certificate_error(e: rcgen::Error) -> TlsError {
    TlsError::Certificate(e.to_string())
}

impl ClusterCa {
    pub fn generate() -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "herd cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(certificate_error)?;
        ClusterCa::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA kept as PEM (its certificate, its key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(certificate_error)?;
        let der = pem::parse(cert_pem)
            .map_err(|e| TlsError::Certificate(format!("the CA certificate: {e}")))?
            .into_contents();
        let issuer =
            Issuer::from_ca_cert_der(&der.clone().into(), key).map_err(certificate_error)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn pin(&self) -> CaPin {
        CaPin::of(&self.cert_der)
    }

    /// A new key and a certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[String]) -> Result<Identity, TlsError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        let cert = leaf_params(names)?
            .signed_by(&key, &self.issuer)
            .map_err(certificate_error)?;
        Ok(Identity {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the key of `request` (a PKCS#10 request, DER) for `names`, whatever names
    /// the request asked for: a caller with the token gets a member's certificate, never
    /// a scheduler's. Returns the chain, as PEM.
    pub fn sign(&self, request: &[u8], names: &[String]) -> Result<String, TlsError> {
        let mut asked = CertificateSigningRequestParams::from_der(&request.to_vec().into())
            .map_err(|e| TlsError::BadRequest(e.to_string()))?;
        asked.params = leaf_params(names)?;
        let cert = asked.signed_by(&self.issuer).map_err(certificate_error)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }
}

fn leaf_params(names: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(certificate_error),
        })
        .collect::<Result<_, _>>()?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + LEAF_VALIDITY;
    Ok(params)
}

/// What an agent sends to be certified: a request for a key it keeps.
pub struct Request {
    pub der: Vec<u8>,
    key_pem: String,
}

impl Request {
    pub fn new() -> Result<Request, TlsError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .map_err(certificate_error)?;
        Ok(Request {
            der: csr.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The identity the signed chain gives this request's key.
    pub fn identity(self, chain_pem: String) -> Identity {
        Identity {
            chain_pem,
            key_pem: self.key_pem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_ca_is_the_same_ca() {
        let ca = ClusterCa::generate().expect("a CA");
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("read back");
        assert_eq!(again.pin(), ca.pin());
        let identity = again.issue(&["scheduler.herd".into()]).expect("issued");
        assert!(identity.chain_pem.ends_with(ca.cert_pem()));
    }

    #[test]
    fn a_signed_request_names_what_the_ca_says_not_what_was_asked() {
        let ca = ClusterCa::generate().expect("a CA");
        let key = KeyPair::generate().expect("key");
        let mut asked =
            CertificateParams::new(vec![super::super::SCHEDULER_NAME.to_string()]).expect("params");
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).expect("csr");
        let chain = ca
            .sign(csr.der(), &[super::super::AGENT_NAME.into()])
            .expect("signed");
        let leaf = pem::parse_many(&chain).expect("pem")[0].contents().to_vec();
        let verifies_as = |name: &str| super::super::trust::verify_for_test(&ca, &leaf, name);
        assert!(verifies_as(super::super::AGENT_NAME));
        assert!(!verifies_as(super::super::SCHEDULER_NAME));
    }

    #[test]
    fn garbage_is_not_a_request() {
        let ca = ClusterCa::generate().expect("a CA");
        let e = ca.sign(b"not a request", &["agent.herd".into()]);
        assert!(matches!(e, Err(TlsError::BadRequest(_))), "{e:?}");
    }
}
