//! Channels to the servers of an address list: a connected one to the first that
//! answers, lazy ones to the others, so that they need not be up yet.
//!
//! All the servers of one cluster share one CA: the CA learned from the one that
//! answered (from `--ca-cert`, or through the join token's pin) verifies the others.

use std::time::Duration;

use herd_core::tls::{JoinToken, TlsError, Trust};
use tonic::transport::{Channel, Endpoint};

use crate::error::{connect_reason, ClientError};

/// What a connection needs to know, besides the addresses.
pub(crate) struct Dial<'a> {
    pub role: &'a str,
    pub ca_pem: Option<String>,
    pub token: Option<&'a JoinToken>,
    pub connect_timeout: Duration,
}

/// A channel per address, in the list's order, and which one answered.
pub(crate) struct Channels {
    pub channels: Vec<(String, Channel)>,
    pub answered: usize,
}

/// Why one address failed; `gone` when nothing answered there, so the next is tried.
struct Failure {
    error: ClientError,
    gone: Option<String>,
}

impl Dial<'_> {
    /// Connects to the first of `addrs` (not empty) that answers. Errors that are
    /// an address's own answer (a bad address, a CA that does not match) stop there.
    pub async fn channels(&self, addrs: &[String]) -> Result<Channels, ClientError> {
        for addr in addrs {
            self.check(addr, addrs)?;
        }
        let mut gone = Vec::new();
        for (answered, addr) in addrs.iter().enumerate() {
            match self.connect(addr).await {
                Ok((channel, ca)) => {
                    let channels = addrs
                        .iter()
                        .enumerate()
                        .map(|(i, other)| {
                            let channel = if i == answered {
                                channel.clone()
                            } else {
                                self.lazy(other, ca.as_deref())?
                            };
                            Ok((other.clone(), channel))
                        })
                        .collect::<Result<_, ClientError>>()?;
                    return Ok(Channels { channels, answered });
                }
                Err(Failure {
                    gone: Some(reason),
                    error,
                }) => gone.push((addr, reason, error)),
                Err(Failure { error, .. }) => return Err(error),
            }
        }
        if gone.len() == 1 {
            if let Some((_, _, error)) = gone.pop() {
                return Err(error);
            }
        }
        Err(ClientError::Connect {
            role: self.role.to_string(),
            addr: addrs.join(","),
            reason: gone
                .iter()
                .map(|(addr, reason, _)| format!("{addr}: {reason}"))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    fn trust(&self, addr: &str) -> Trust {
        if addr.starts_with("http://") {
            Trust::Plain
        } else {
            Trust::from_parts(self.ca_pem.clone(), self.token)
        }
    }

    fn name(&self) -> &'static str {
        if self.role == "agent" {
            herd_core::tls::AGENT_NAME
        } else {
            herd_core::tls::SCHEDULER_NAME
        }
    }

    fn tls_error(&self, addr: &str, reason: impl ToString) -> ClientError {
        ClientError::Tls {
            role: self.role.to_string(),
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }

    fn address_error(&self, addr: &str, reason: impl ToString) -> ClientError {
        ClientError::Address {
            role: self.role.to_string(),
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }

    /// What can be said of `addr` before connecting anywhere.
    fn check(&self, addr: &str, all: &[String]) -> Result<(), ClientError> {
        let trust = self.trust(addr);
        if addr.starts_with("https://") && !trust.is_tls() {
            return Err(self.tls_error(
                addr,
                "nothing to verify the server with: give the join token (herd1.…) or --ca-cert",
            ));
        }
        // The CA is learned from one server for all: a plain-text one has none to give.
        if trust.is_tls() && all.iter().any(|a| a.starts_with("http://")) {
            return Err(self.address_error(
                addr,
                "a list mixes http:// URLs (plain text) with addresses reached over TLS",
            ));
        }
        endpoint(addr, None, self.name())
            .map(|_| ())
            .map_err(|reason| self.address_error(addr, reason))
    }

    /// A connected channel to `addr`, and the CA it was verified with.
    async fn connect(&self, addr: &str) -> Result<(Channel, Option<String>), Failure> {
        let answer = |error| Failure { error, gone: None };
        let ca = self
            .trust(addr)
            .ca_pem(addr, self.name())
            .await
            .map_err(|e| Failure {
                gone: match &e {
                    TlsError::Unreachable { reason, .. } => Some(reason.clone()),
                    _ => None,
                },
                error: self.tls_error(addr, &e),
            })?;
        let endpoint = endpoint(addr, ca.as_deref(), self.name())
            .map_err(|reason| answer(self.address_error(addr, reason)))?;
        // A server serving TLS would answer plain text by closing the connection, which
        // says nothing of what to do.
        if ca.is_none() && herd_core::tls::serves_tls(addr).await {
            return Err(answer(self.tls_error(
                addr,
                "it serves TLS and this client has nothing to verify it with: give the \
                 join token (herd1.…, the scheduler's DATA_DIR/join-token) or --ca-cert \
                 DATA_DIR/ca.pem",
            )));
        }
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| {
                let reason = connect_reason(&e);
                Failure {
                    error: ClientError::Connect {
                        role: self.role.to_string(),
                        addr: addr.to_string(),
                        reason: reason.clone(),
                    },
                    gone: Some(reason),
                }
            })?;
        Ok((channel, ca))
    }

    /// A channel to `addr` that connects at its first call, verified with `ca`.
    fn lazy(&self, addr: &str, ca: Option<&str>) -> Result<Channel, ClientError> {
        let ca = if addr.starts_with("http://") {
            None
        } else {
            ca
        };
        Ok(endpoint(addr, ca, self.name())
            .map_err(|reason| self.address_error(addr, reason))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy())
    }
}

/// The endpoint of `addr` (HOST:PORT or a URL), over TLS verified with `ca` if given.
fn endpoint(addr: &str, ca: Option<&str>, name: &str) -> Result<Endpoint, String> {
    let url = herd_proto::grpc_url(addr);
    let endpoint = match ca {
        Some(ca) => Endpoint::from_shared(url.replacen("http://", "https://", 1))
            .and_then(|e| e.tls_config(herd_core::tls::tonic_client(ca, name))),
        None => Endpoint::from_shared(url),
    }
    .map_err(|e| e.to_string())?;
    if endpoint.uri().host().is_none() {
        return Err("expected HOST:PORT".to_string());
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use crate::{Client, ClientError, ConnectOptions};

    /// An address nothing listens on: a port that was just free.
    fn dead() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    async fn error(addrs: &str, options: ConnectOptions) -> String {
        Client::connect_with(addrs, options)
            .await
            .err()
            .expect("no connection")
            .to_string()
    }

    #[tokio::test]
    async fn one_address_fails_as_it_always_did() {
        let addr = dead();
        assert_eq!(
            error(&addr, ConnectOptions::default()).await,
            format!("cannot reach scheduler at {addr}: connection refused")
        );
    }

    #[tokio::test]
    async fn several_unreachable_addresses_are_all_named() {
        let (a, b) = (dead(), dead());
        assert_eq!(
            error(&format!("{a}, {b}"), ConnectOptions::default()).await,
            format!("cannot reach scheduler at {a},{b}: {a}: connection refused; {b}: connection refused")
        );
    }

    #[tokio::test]
    async fn lists_are_checked_before_connecting() {
        let empty = Client::connect_with(" , ", ConnectOptions::default()).await;
        assert!(matches!(empty, Err(ClientError::Address { .. })));
        let bad = error(&format!("{},no such:1", dead()), ConnectOptions::default()).await;
        assert!(
            bad.starts_with("invalid scheduler address \"no such:1\""),
            "{bad}"
        );
        let tls = ConnectOptions {
            ca_pem: Some("not read before connecting".into()),
            ..ConnectOptions::default()
        };
        let mixed = error("http://a:1,b:1", tls).await;
        assert!(mixed.contains("mixes http:// URLs"), "{mixed}");
    }
}
