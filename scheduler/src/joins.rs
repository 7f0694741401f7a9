//! The `herd.v1.Scheduler` service: agents join, report, and fetch model files.

use std::net::IpAddr;
use std::sync::Arc;

use herd_proto::herd::scheduler_server::Scheduler as SchedulerRpc;
use herd_proto::herd::{
    AgentStatus, CertificateRequest, CertificateResponse, FetchModelRequest, JoinRequest,
    JoinResponse, ModelChunk, ReportRequest, ReportResponse,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use tracing::warn;

use crate::address_proof::{loopback_from_elsewhere, prove};
use crate::error::SchedulerError;
use crate::state::Scheduler;

pub struct JoinService {
    scheduler: Arc<Scheduler>,
    /// Told to agents at join, so that they require the token for inference too:
    /// otherwise an agent's own port would be a way around the scheduler's rule.
    require_token_for_inference: bool,
}

impl JoinService {
    pub fn new(scheduler: Arc<Scheduler>, require_token_for_inference: bool) -> JoinService {
        JoinService {
            scheduler,
            require_token_for_inference,
        }
    }

    /// Checks an agent's address before it joins: not another host's loopback, and the
    /// agent itself answers there. A refusal is logged and recorded as an event, so
    /// the scheduler's side says what is wrong too.
    async fn admit(
        &self,
        name: &str,
        address: &str,
        status: &AgentStatus,
        peer: Option<IpAddr>,
    ) -> Result<(), SchedulerError> {
        if name.is_empty() || address.is_empty() {
            return Err(SchedulerError::JoinWithoutName);
        }
        let proven = if loopback_from_elsewhere(address, peer) {
            Err(SchedulerError::LoopbackAdvertised {
                name: name.to_string(),
                address: address.to_string(),
                peer: peer.map(|p| p.to_string()).unwrap_or_default(),
            })
        } else {
            let settings = &self.scheduler.settings;
            prove(
                name,
                address,
                &status.instance,
                &settings.token,
                settings.max_message_size,
                settings.ca_pem(),
            )
            .await
        };
        if let Err(e) = &proven {
            warn!(node = %name, address, error = %e, "join refused");
            self.scheduler.lock().join_refused(name, &e.to_string());
            self.scheduler.notify();
        }
        proven
    }

    /// Whether `name` is in the cluster at `address`: its reports need no new proof.
    fn knows(&self, name: &str, address: &str) -> bool {
        self.scheduler
            .lock()
            .node(name)
            .is_some_and(|n| n.address == address)
    }

    /// When the node `name` counts as silent unless it reports again.
    fn reports_overdue_at(&self, name: &str) -> Option<Instant> {
        let cluster = self.scheduler.lock();
        let node = cluster.node(name)?;
        Some(node.last_report + cluster.down_after())
    }
}

const CHUNK: usize = 1 << 20;

#[tonic::async_trait]
impl SchedulerRpc for JoinService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        let status = r.status.unwrap_or_default();
        self.admit(&r.name, &r.address, &status, peer).await?;
        match self.scheduler.join(&r.name, &r.address, status.clone()) {
            // The holder of the name may be this agent's previous life, killed and
            // started again on another port: once the holder's reports are overdue, the
            // name is free. A holder still reporting by then is another agent given the
            // same name, and the refusal stands; the agent gives up on it.
            Err(SchedulerError::NameTaken { .. }) => {
                if let Some(overdue) = self.reports_overdue_at(&r.name) {
                    tokio::time::sleep_until(overdue).await;
                }
                self.scheduler.join(&r.name, &r.address, status)?;
            }
            joined => joined?,
        }
        Ok(Response::new(JoinResponse {
            report_interval_ms: self.scheduler.settings.report_interval.as_millis() as u64,
            require_token_for_inference: self.require_token_for_inference,
        }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        // A report from a node the scheduler does not know (it restarted) is a join.
        if !self.knows(&r.name, &r.address) {
            let status = r.status.clone().unwrap_or_default();
            self.admit(&r.name, &r.address, &status, peer).await?;
        }
        self.scheduler
            .report(&r.name, &r.address, r.status.unwrap_or_default())?;
        Ok(Response::new(ReportResponse {}))
    }

    async fn issue_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let Some(tls) = &self.scheduler.settings.tls else {
            return Err(Status::failed_precondition(
                "this scheduler serves plain text (--tls off) and issues no certificates",
            ));
        };
        let names = [herd_core::tls::AGENT_NAME.to_string()];
        let chain_pem = tls
            .ca
            .sign(&request.into_inner().request, &names)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(CertificateResponse {
            chain_pem,
            ca_pem: tls.ca.cert_pem().to_string(),
        }))
    }

    type FetchModelStream = ReceiverStream<Result<ModelChunk, Status>>;

    async fn fetch_model(
        &self,
        request: Request<FetchModelRequest>,
    ) -> Result<Response<Self::FetchModelStream>, Status> {
        let r = request.into_inner();
        // Only files of the catalog are served, by digest: no path comes from the caller.
        let path = self
            .scheduler
            .lock()
            .file_with_digest(&r.digest)?
            .to_path_buf();
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| SchedulerError::File(format!("cannot open {}: {e}", path.display())))?;
        let total = file
            .metadata()
            .await
            .map_err(|e| SchedulerError::File(e.to_string()))?
            .len();
        file.seek(std::io::SeekFrom::Start(r.offset))
            .await
            .map_err(|e| SchedulerError::File(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = r.offset;
            loop {
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        let chunk = ModelChunk {
                            offset,
                            data: buf,
                            total_bytes: total,
                        };
                        offset += n as u64;
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(SchedulerError::File(format!(
                                "reading the model file: {e}"
                            ))
                            .into()))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
