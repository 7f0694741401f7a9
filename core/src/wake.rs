//! Wake-on-LAN: the magic packet (6 × 0xFF, then the MAC 16 times) a sleeping machine's
//! network card listens for, sent over UDP.

use std::net::SocketAddr;

/// Where the packet goes unless told: every host on the local network, the discard
/// port (what most tools use).
pub const DEFAULT_ADDRESS: &str = "255.255.255.255:9";

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;

    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, either case.
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad =
            || format!("{s:?} is not a MAC address (expected six hex pairs, aa:bb:cc:dd:ee:ff)");
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The magic packet for `mac`.
pub fn magic_packet(mac: Mac) -> [u8; 102] {
    let mut packet = [0xFF; 102];
    for copy in packet[6..].chunks_exact_mut(6) {
        copy.copy_from_slice(&mac.0);
    }
    packet
}

/// Sends the magic packet for `mac` to `address` (HOST:PORT), broadcast allowed.
pub async fn send(mac: Mac, address: &str) -> std::io::Result<SocketAddr> {
    let to = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address} names no address")))?;
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.set_broadcast(true)?;
    socket.send_to(&magic_packet(mac), to).await?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_reads_in_either_spelling_and_prints_one_way() {
        let mac: Mac = "AA-bb-0c-dd-EE-01".parse().expect("a MAC");
        assert_eq!(mac.0, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x01]);
        assert_eq!(mac.to_string(), "aa:bb:0c:dd:ee:01");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:gg",
            "aaa:b:cc:dd:ee:ff",
        ] {
            let e = bad.parse::<Mac>().expect_err(bad);
            assert!(e.contains("not a MAC address"), "{e}");
        }
    }

    #[test]
    fn the_magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let mac = Mac([1, 2, 3, 4, 5, 6]);
        let packet = magic_packet(mac);
        assert_eq!(&packet[..6], &[0xFF; 6]);
        assert_eq!(packet.len(), 6 + 16 * 6);
        assert!(packet[6..].chunks(6).all(|c| c == mac.0));
    }

    #[tokio::test]
    async fn the_packet_arrives_over_udp() {
        let listener = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("addr").to_string();
        let mac = Mac([0xde, 0xad, 0xbe, 0xef, 0, 1]);
        send(mac, &at).await.expect("sent");
        let mut buf = [0u8; 200];
        let n = listener.recv(&mut buf).await.expect("received");
        assert_eq!(&buf[..n], &magic_packet(mac)[..]);
    }
}
