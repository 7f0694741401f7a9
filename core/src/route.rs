//! This host's address toward another: what a process listening on every interface
//! tells others to call it at (an agent to its scheduler, a scheduler to its peers).

use std::net::{IpAddr, SocketAddr};

/// The address this host's route to `peer` (HOST:PORT or a URL) leaves from, with
/// `listen`'s port; `listen` itself unless it is on every interface (0.0.0.0, [::]).
/// No route is an error, not loopback: a peer on another host cannot call 127.0.0.1
/// back, and would reach whatever listens on its own host.
pub fn toward(peer: &str, listen: SocketAddr) -> std::io::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    Ok(SocketAddr::new(
        local_ip_toward(host_of(peer))?,
        listen.port(),
    ))
}

/// The host part of HOST:PORT or a URL, without IPv6 brackets.
pub fn host_of(peer: &str) -> &str {
    let peer = peer
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    peer.rsplit_once(':')
        .map_or(peer, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

fn local_ip_toward(host: &str) -> std::io::Result<IpAddr> {
    // A UDP "connect" sends nothing; it only picks the route.
    let bind = if host.contains(':') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect((host, 9))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_listen_address_is_kept_and_every_interface_takes_the_route() {
        let specific: SocketAddr = "10.1.2.3:8001".parse().expect("address");
        assert_eq!(toward("127.0.0.1:9", specific).expect("a route"), specific);
        let any: SocketAddr = "0.0.0.0:8001".parse().expect("address");
        assert_eq!(
            toward("127.0.0.1:2379", any).expect("a route"),
            "127.0.0.1:8001".parse().expect("address")
        );
    }

    #[test]
    fn hosts_come_out_of_addresses_and_urls() {
        assert_eq!(host_of("a.lan:8001"), "a.lan");
        assert_eq!(host_of("https://[::1]:8001"), "::1");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
