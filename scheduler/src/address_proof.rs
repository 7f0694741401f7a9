//! An agent's advertised address, proven before the agent counts as up: the scheduler
//! calls it back there and expects the agent's own status (its name and the instance
//! id it joined with). Trusting the address alone let a wrong `--advertise` loop the
//! cluster through placed → load failed → down → up, and let a loopback address from
//! another host send that agent's loads to whatever listened on the scheduler's host.

use std::net::IpAddr;
use std::time::Duration;

use herd_proto::herd::StatusRequest;
use tonic::Code;

use crate::agent_link::AgentLink;
use crate::error::SchedulerError;

/// How long the call back may take, connection included.
const PROOF_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `address` names this host's loopback while the agent joined from another
/// host (`peer`): the scheduler would call itself, not the agent. A peer that is itself
/// on loopback (or unknown) may advertise loopback.
pub fn loopback_from_elsewhere(address: &str, peer: Option<IpAddr>) -> bool {
    let Some(peer) = peer else {
        return false;
    };
    if peer.to_canonical().is_loopback() {
        return false;
    }
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => {
            let host = host.to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// Checks that the agent named `name`, joining with `instance`, is what answers at
/// `address`.
pub async fn prove(
    name: &str,
    address: &str,
    instance: &str,
    token: &str,
    max_message: usize,
    ca_pem: Option<&str>,
) -> Result<(), SchedulerError> {
    let mut link = AgentLink::new(address, Some(token), max_message, ca_pem)?;
    // Bounds the connection as well as the call.
    let answer = tokio::time::timeout(PROOF_TIMEOUT, link.agent.status(StatusRequest {})).await;
    let found = match answer {
        Err(_) => {
            return Err(unreachable(name, address, "no answer in 5 s".into()));
        }
        Ok(Ok(status)) => {
            let status = status.into_inner();
            if status.name == name && status.instance == instance {
                return Ok(());
            }
            if status.name == name {
                format!("another process named {name:?} (an earlier run, or another host with the same name)")
            } else {
                format!("agent {:?}", status.name)
            }
        }
        Ok(Err(s)) => match s.code() {
            Code::Unimplemented => "a gRPC server that is not a herd agent".to_string(),
            Code::Unauthenticated | Code::PermissionDenied => {
                "an agent that refuses this cluster's token (one of another cluster?)".to_string()
            }
            _ => match herd_core::tls::handshake_refusal(&s) {
                Some(herd_core::tls::Refusal::Certificate) => {
                    "a server without an agent certificate from this cluster's CA (the scheduler, or another cluster's agent)".to_string()
                }
                Some(herd_core::tls::Refusal::NotTls) => {
                    "a server that does not serve TLS (an agent started without the join token, or not an agent)".to_string()
                }
                None => return Err(unreachable(name, address, s.message().to_string())),
            },
        },
    };
    Err(SchedulerError::AdvertisedIsAnother {
        name: name.to_string(),
        address: address.to_string(),
        found,
    })
}

fn unreachable(name: &str, address: &str, error: String) -> SchedulerError {
    SchedulerError::AdvertisedUnreachable {
        name: name.to_string(),
        address: address.to_string(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn loopback_is_refused_only_from_another_host() {
        assert!(loopback_from_elsewhere("127.0.0.1:8001", ip("10.0.0.2")));
        assert!(loopback_from_elsewhere("[::1]:8001", ip("10.0.0.2")));
        assert!(loopback_from_elsewhere("localhost:8001", ip("10.0.0.2")));
        assert!(loopback_from_elsewhere(
            "127.0.0.1:8001",
            ip("::ffff:10.0.0.2")
        ));
        assert!(!loopback_from_elsewhere("10.0.0.2:8001", ip("10.0.0.2")));
        assert!(!loopback_from_elsewhere("box.lan:8001", ip("10.0.0.2")));
        assert!(!loopback_from_elsewhere("127.0.0.1:8001", ip("127.0.0.1")));
        assert!(!loopback_from_elsewhere(
            "127.0.0.1:8001",
            ip("::ffff:127.0.0.1")
        ));
        assert!(!loopback_from_elsewhere("127.0.0.1:8001", None));
    }

    #[test]
    fn the_messages_name_the_address_and_the_flag() {
        let e = SchedulerError::LoopbackAdvertised {
            name: "a".into(),
            address: "127.0.0.1:8001".into(),
            peer: "10.0.0.2".into(),
        };
        let m = e.to_string();
        assert!(
            m.contains("127.0.0.1:8001") && m.contains("10.0.0.2"),
            "{m}"
        );
        assert!(m.contains("--advertise"), "{m}");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            unreachable("a", "10.0.0.9:8001", "refused".into()).code(),
            Code::FailedPrecondition,
            "the agent tries again: its network may be coming up"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_and_names_the_address() {
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let e = prove("a", &address, "x", "token", 1 << 20, None)
            .await
            .expect_err("nothing there");
        assert!(
            matches!(&e, SchedulerError::AdvertisedUnreachable { address: a, .. } if *a == address),
            "{e:?}"
        );
    }
}
