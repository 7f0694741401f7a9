//! Why a connection failed, in words a person can act on.

/// Why a connection failed, as briefly as the cause allows: "connection refused"
/// rather than "transport error: tcp connect error: Connection refused (os error 111)".
pub fn connect_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable => io.kind().to_string(),
                _ => io.to_string(),
            };
        }
        innermost = s;
        source = s.source();
    }
    let text = innermost.to_string();
    if text.is_empty() || text == "transport error" {
        source_chain(e)
    } else {
        text
    }
}

/// "transport error: tcp connect error: ..." with each distinct cause once.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
