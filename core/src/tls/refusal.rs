//! Telling a TLS handshake that failed on what the peer is (a certificate of another
//! CA or name, or no TLS at all) from a network that failed to carry it: the first is
//! a wrong address, which waiting does not mend.

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's certificate is not one this client trusts for the name it wanted.
    Certificate,
    /// The peer does not speak TLS.
    NotTls,
}

/// What refused the handshake under `e` (a failed call or connection), if TLS did.
pub fn handshake_refusal(e: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        // An io::Error's source() skips the error it wraps; look inside it.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(tls) = inner.or_else(|| err.downcast_ref::<rustls::Error>()) {
            return match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
                | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => {
                    Some(Refusal::Certificate)
                }
                rustls::Error::InvalidMessage(_) => Some(Refusal::NotTls),
                _ => None,
            };
        }
        next = err.source();
    }
    None
}
