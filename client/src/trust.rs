//! Which CA a client trusts, from what it was given: `--ca-cert`, a join token's pin,
//! or the local scheduler's CA file.

use crate::error::ClientError;

/// The CA a client trusts: --ca-cert, else none when the join token pins one, else
/// the local scheduler's (see [`local_ca`]) when one of `addrs` (an address, or several
/// separated by commas) is on this host.
pub fn trusted_ca(
    addrs: &str,
    ca_cert: Option<&std::path::Path>,
    token: Option<&str>,
) -> Result<Option<String>, ClientError> {
    if let Some(path) = ca_cert {
        return herd_core::tls::read_ca_file(path)
            .map(Some)
            .map_err(|e| ClientError::File {
                path: path.to_path_buf(),
                reason: match e {
                    herd_core::tls::TlsError::CaFile { reason, .. } => {
                        format!("not a usable CA certificate: {reason}")
                    }
                    other => other.to_string(),
                },
            });
    }
    let pinned = token.is_some_and(|t| herd_core::tls::JoinToken::parse(t).pin.is_some());
    if pinned {
        return Ok(None);
    }
    Ok(crate::failover::addresses(addrs)
        .iter()
        .filter(|addr| !addr.starts_with("http://"))
        .find_map(|addr| local_ca(addr)))
}

/// The CA of the scheduler `herd up`/`herd scheduler` keeps in the default data
/// directory, for a client on the same host that was given no other: the CLI and the
/// dashboard then just work on the machine the cluster was started on.
pub fn local_ca(addr: &str) -> Option<String> {
    let host = addr
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return None;
    }
    let path = herd_core::paths::default_data_dir()
        .join("scheduler")
        .join("ca.pem");
    herd_core::tls::read_ca_file(&path).ok()
}
