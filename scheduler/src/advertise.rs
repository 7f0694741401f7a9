//! The address a scheduler names in the election, where its peers forward calls to it
//! when it leads: `--advertise`, else the gRPC listening address, else (listening on
//! every interface) this host's address on the route to etcd, which the peers reach
//! too.

use std::net::SocketAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Advertise {
    /// --advertise HOST:PORT.
    Given(String),
    /// Worked out on the route to this host (an etcd endpoint).
    Toward(String),
    /// The listening address as it is (a store of its own has no peers).
    #[default]
    Listen,
}

impl Advertise {
    /// From the flag and the etcd endpoints (none: the embedded store).
    pub fn new(given: Option<String>, etcd: &[String]) -> Advertise {
        match (given, etcd.first()) {
            (Some(a), _) => Advertise::Given(a),
            (None, Some(peer)) => Advertise::Toward(peer.clone()),
            (None, None) => Advertise::Listen,
        }
    }

    /// The address to advertise for a gRPC port bound at `local`.
    pub fn address(&self, local: SocketAddr) -> String {
        match self {
            Advertise::Given(a) => a.clone(),
            Advertise::Toward(peer) => match herd_core::route::toward(peer, local) {
                Ok(a) => a.to_string(),
                Err(e) => {
                    tracing::warn!(peer, error = %e, "cannot work out this scheduler's address for its peers; give --advertise HOST:PORT");
                    local.to_string()
                }
            },
            Advertise::Listen => local.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_route_to_etcd_then_the_listening_address() {
        let any: SocketAddr = "0.0.0.0:8001".parse().expect("address");
        let given = Advertise::new(Some("s1.lan:8001".into()), &["e:2379".into()]);
        assert_eq!(given.address(any), "s1.lan:8001");
        let toward = Advertise::new(None, &["127.0.0.1:2379".into()]);
        assert_eq!(toward.address(any), "127.0.0.1:8001");
        assert_eq!(Advertise::new(None, &[]).address(any), "0.0.0.0:8001");
    }
}
