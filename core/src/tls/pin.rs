//! The join token: the cluster secret, and the SHA-256 of the cluster CA's certificate
//! that lets a client with nothing else verify the servers.
//!
//! Written `herd1.<64 hex digits>.<secret>`. Anything else is a bare secret (a token
//! given by hand, or one from before TLS): it authenticates, but pins nothing.

use sha2::{Digest, Sha256};

/// The SHA-256 of a CA certificate's DER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl CaPin {
    pub fn of(der: &[u8]) -> CaPin {
        CaPin(Sha256::digest(der).into())
    }

    pub fn matches(&self, der: &[u8]) -> bool {
        CaPin::of(der) == *self
    }

    fn parse(hex_digits: &str) -> Option<CaPin> {
        let bytes = hex::decode(hex_digits).ok()?;
        Some(CaPin(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for CaPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

const PREFIX: &str = "herd1.";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// What authenticates: sent as the bearer token.
    pub secret: String,
    pub pin: Option<CaPin>,
}

/// Never prints the secret: tokens end up in logs.
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("pin", &self.pin)
            .finish()
    }
}

impl JoinToken {
    pub fn parse(token: &str) -> JoinToken {
        let pinned = token.strip_prefix(PREFIX).and_then(|rest| {
            let (digits, secret) = rest.split_once('.')?;
            Some((CaPin::parse(digits)?, secret))
        });
        match pinned {
            Some((pin, secret)) if !secret.is_empty() => JoinToken {
                secret: secret.to_string(),
                pin: Some(pin),
            },
            _ => JoinToken {
                secret: token.to_string(),
                pin: None,
            },
        }
    }

    /// The token's written form.
    pub fn encode(&self) -> String {
        match &self.pin {
            Some(pin) => format!("{PREFIX}{pin}.{}", self.secret),
            None => self.secret.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_token_reads_back_as_written() {
        let pin = CaPin::of(b"a certificate");
        let token = JoinToken {
            secret: "s3cret.with.dots".into(),
            pin: Some(pin),
        };
        let written = token.encode();
        assert!(written.starts_with("herd1."), "{written}");
        assert_eq!(JoinToken::parse(&written), token);
        assert!(pin.matches(b"a certificate"));
        assert!(!pin.matches(b"another certificate"));
    }

    #[test]
    fn anything_else_is_a_bare_secret() {
        for bare in [
            "test-token",
            "herd1.",
            "herd1.abc.secret",
            // 64 characters, not all hex digits.
            &format!("herd1.{}.secret", "g".repeat(64)),
            // A pin and no secret.
            &format!("herd1.{}.", "a".repeat(64)),
        ] {
            let token = JoinToken::parse(bare);
            assert_eq!(token.secret, bare);
            assert_eq!(token.pin, None, "{bare}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = JoinToken::parse("hunter2");
        assert!(!format!("{token:?}").contains("hunter2"));
    }
}
