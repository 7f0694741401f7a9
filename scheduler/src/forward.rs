//! A follower's way to the leader. Only the leader places, so what needs placing goes
//! there: admin calls that change the cluster, repository loads and unloads, and
//! requests for a model this scheduler sees no ready replica of (its own view, from the
//! agents' reports, routes the rest). A call is forwarded at most once (the
//! [`FORWARDED`] header): two schedulers that each think, for a moment, that the other
//! leads do not pass a call back and forth.

use std::sync::Mutex;
use std::time::Duration;

use herd_core::auth::SendToken;
use herd_proto::herd::admin_client::AdminClient;
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::error::SchedulerError;
use crate::leader::{Role, TTL};
use crate::state::Scheduler;

/// Set on a call one scheduler forwards to another.
pub const FORWARDED: &str = "herd-forwarded";
/// What a scheduler that does not lead answers a forwarded call it cannot serve.
pub const NOT_LEADER: &str = "this scheduler does not lead the cluster (any more); ask again";

type Transport = InterceptedService<Channel, SendToken>;
pub type LeaderAdmin = AdminClient<Transport>;
pub type LeaderInference = GrpcInferenceServiceClient<Transport>;

/// Calls to the leader, with the cluster token.
#[derive(Clone)]
pub struct LeaderLink {
    pub address: String,
    pub admin: LeaderAdmin,
    pub inference: LeaderInference,
}

/// The link to the leader last used, kept while it leads.
#[derive(Default)]
pub struct LeaderLinks(Mutex<Option<LeaderLink>>);

/// Where a call that only the leader makes goes.
pub enum Route {
    /// This scheduler leads: it makes the call itself.
    Here,
    Leader(Box<LeaderLink>),
}

/// How long a call that only the leader makes waits for an election to name one.
pub fn election_deadline() -> Instant {
    Instant::now() + TTL * 3
}

/// Whether a call came from another scheduler.
pub fn was_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// `message` as a forwarded call, with what is left of the caller's deadline.
pub fn forwarded<T>(message: T, timeout: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    request
}

/// Whether a forwarded call's failure says the leader is gone or no longer leads, so
/// that the call is worth making again once the election has moved: the transport
/// failed (a status tonic made, with a source), or the other scheduler said it does not
/// lead. The leader's own answers are the caller's.
pub fn leader_gone(status: &Status) -> bool {
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable => local || status.message() == NOT_LEADER,
        Code::Unknown | Code::Cancelled => local,
        _ => false,
    }
}

impl Scheduler {
    /// Where a call only the leader makes goes: here when this scheduler leads, else
    /// the leader, waited for (until `deadline`) while an election is under way. A call
    /// forwarded here already is answered here or refused, never sent on.
    pub async fn leader_route(
        &self,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Route, SchedulerError> {
        let mut roles = self.roles();
        loop {
            let role = roles.borrow_and_update().clone();
            match role {
                Role::Leader { .. } => return Ok(Route::Here),
                Role::Follower { .. } if forwarded => return Err(SchedulerError::ToLeader),
                Role::Follower {
                    leader: Some(address),
                } => {
                    return self
                        .link_to_leader(&address)
                        .map(|l| Route::Leader(Box::new(l)))
                }
                Role::Follower { leader: None } => {}
            }
            match tokio::time::timeout_at(deadline, roles.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SchedulerError::Stopping),
                Err(_) => return Err(SchedulerError::NoLeader),
            }
        }
    }

    /// After a forwarded call failed with the leader gone: waits for the election to
    /// move (a new leader, or this scheduler leading), at most a lease's time twice
    /// over and never past `deadline`; whether it moved.
    pub async fn leader_moved(&self, from: &str, deadline: Instant) -> bool {
        let mut roles = self.roles();
        let until = deadline.min(Instant::now() + TTL * 2);
        let moved = |r: &Role| match r {
            Role::Leader { .. } => true,
            Role::Follower { leader } => leader.as_deref().is_some_and(|l| l != from),
        };
        let waited = tokio::time::timeout_at(until, roles.wait_for(moved)).await;
        matches!(waited, Ok(Ok(_)))
    }

    fn link_to_leader(&self, address: &str) -> Result<LeaderLink, SchedulerError> {
        let mut cached = self
            .leader_links
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(link) = cached.as_ref().filter(|l| l.address == address) {
            return Ok(link.clone());
        }
        let channel = crate::agent_link::lazy_channel(
            address,
            self.settings.ca_pem(),
            herd_core::tls::SCHEDULER_NAME,
        )
        .map_err(|e| SchedulerError::Agent {
            code: Code::Unavailable,
            message: format!("the leader's address {address:?}: {e}"),
        })?;
        let token = SendToken::new(Some(&self.settings.token))
            .map_err(|e| SchedulerError::Token(e.to_string()))?;
        let max = self.settings.max_message_size;
        let link = LeaderLink {
            address: address.to_string(),
            admin: AdminClient::with_interceptor(channel.clone(), token.clone()),
            inference: GrpcInferenceServiceClient::with_interceptor(channel, token)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        };
        *cached = Some(link.clone());
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_transport_or_a_deposed_leader_is_worth_another_try() {
        assert!(leader_gone(&Status::unavailable(NOT_LEADER)));
        assert!(
            !leader_gone(&Status::unavailable("no ready replica yet")),
            "the leader's own answer"
        );
        let lost = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(lost.code(), Code::Unknown);
        assert!(leader_gone(&lost));
        assert!(!leader_gone(&Status::invalid_argument("bad shape")));
    }

    #[test]
    fn a_forwarded_call_says_so() {
        let r = forwarded((), Some(Duration::from_secs(2)));
        assert!(was_forwarded(&r));
        assert!(!was_forwarded(&Request::new(())));
    }
}
