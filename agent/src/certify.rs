//! An agent's certificate, from its scheduler, before it serves: the scheduler then
//! calls it over TLS and checks the certificate came from the cluster CA.
//!
//! The key is made here and never leaves the agent; the scheduler signs a request for
//! it. The scheduler is reached over TLS verified with the CA (`--ca-cert`) or the
//! join token's pin, and the request carries the token: a caller without it gets no
//! certificate.

use std::time::Duration;

use herd_core::auth::SendToken;
use herd_core::tls::{Identity, Request, TlsError, Trust, SCHEDULER_NAME};
use herd_proto::herd::scheduler_client::SchedulerClient;
use herd_proto::herd::CertificateRequest;
use tonic::transport::Endpoint;
use tonic::Code;
use tracing::warn;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the scheduler gave: this agent's identity, and the CA's certificate (to verify
/// the scheduler with from then on).
pub struct Certified {
    pub identity: Identity,
    pub ca_pem: String,
}

/// Why this agent cannot be certified, for good: a token the scheduler refuses, or a
/// scheduler that is not the cluster's the token names.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the scheduler at {scheduler} refused this agent a certificate: {reason}")]
pub struct CertifyRefused {
    pub scheduler: String,
    pub reason: String,
}

/// Asks the schedulers in turn (they share one CA) until one answers; a refusal ends it.
pub async fn certify(
    schedulers: &[String],
    secret: Option<&str>,
    trust: &Trust,
) -> Result<Certified, CertifyRefused> {
    let mut backoff = Duration::from_millis(100);
    for scheduler in schedulers.iter().cycle() {
        let scheduler = scheduler.as_str();
        match attempt(scheduler, secret, trust).await {
            Ok(certified) => return Ok(certified),
            Err(Failure::Refused(reason)) => {
                return Err(CertifyRefused {
                    scheduler: scheduler.to_string(),
                    reason,
                })
            }
            Err(Failure::Retry(reason)) => {
                warn!(scheduler, error = %reason, retry_in_ms = backoff.as_millis() as u64, "cannot get this agent's certificate yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    Err(CertifyRefused {
        scheduler: String::new(),
        reason: "no scheduler address given".into(),
    })
}

enum Failure {
    Refused(String),
    Retry(String),
}

async fn attempt(
    scheduler: &str,
    secret: Option<&str>,
    trust: &Trust,
) -> Result<Certified, Failure> {
    let ca_pem = match trust.ca_pem(scheduler, SCHEDULER_NAME).await {
        Ok(Some(pem)) => pem,
        Ok(None) => return Err(Failure::Refused("no CA to verify it with".into())),
        Err(e @ TlsError::Unreachable { .. }) => return Err(Failure::Retry(e.to_string())),
        Err(e) => return Err(Failure::Refused(e.to_string())),
    };
    let url = herd_proto::grpc_url(scheduler).replacen("http://", "https://", 1);
    let endpoint = Endpoint::from_shared(url)
        .and_then(|e| e.tls_config(herd_core::tls::tonic_client(&ca_pem, SCHEDULER_NAME)))
        .map_err(|e| Failure::Refused(format!("address {scheduler:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Retry(herd_core::connect_error::connect_reason(&e)))?;
    let token = SendToken::new(secret).map_err(|e| Failure::Refused(e.to_string()))?;
    let request = Request::new().map_err(|e| Failure::Refused(e.to_string()))?;
    let answer = SchedulerClient::with_interceptor(channel, token)
        .issue_certificate(CertificateRequest {
            request: request.der.clone(),
        })
        .await;
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            Ok(Certified {
                identity: request.identity(r.chain_pem),
                ca_pem: r.ca_pem,
            })
        }
        Err(s)
            if matches!(
                s.code(),
                Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::FailedPrecondition
            ) =>
        {
            Err(Failure::Refused(s.message().to_string()))
        }
        Err(s) => Err(Failure::Retry(s.message().to_string())),
    }
}
