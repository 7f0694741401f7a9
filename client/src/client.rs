//! A connection to a herd server (agent or scheduler) with errors that say what
//! failed and where.

use std::time::Duration;

use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelStatistics, ModelStatisticsRequest,
};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot reach server at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
}

/// A cheap-to-clone handle on one server connection.
#[derive(Clone)]
pub struct Client {
    addr: String,
    inference: GrpcInferenceServiceClient<Channel>,
}

/// The largest message the client sends or accepts.
const MAX_MESSAGE: usize = 256 << 20;

impl Client {
    /// Connects to `addr` (HOST:PORT or a URL).
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url).map_err(|e| ClientError::Address {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: source_chain(&e),
            })?;
        Ok(Client {
            addr: addr.to_string(),
            inference: GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn rpc(&self, status: tonic::Status) -> ClientError {
        ClientError::Rpc {
            addr: self.addr.clone(),
            status,
        }
    }

    pub async fn metadata(&self, model: &str) -> Result<ModelMetadataResponse, ClientError> {
        let request = ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        };
        let mut c = self.inference.clone();
        Ok(c.model_metadata(request)
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner())
    }

    /// Sends one inference request as is; the status is returned unchanged so that
    /// callers can count errors by code.
    pub async fn infer(
        &self,
        request: ModelInferRequest,
    ) -> Result<ModelInferResponse, tonic::Status> {
        let mut c = self.inference.clone();
        Ok(c.model_infer(request).await?.into_inner())
    }

    pub async fn statistics(&self, model: &str) -> Result<ModelStatistics, ClientError> {
        let request = ModelStatisticsRequest {
            name: model.to_string(),
            version: String::new(),
        };
        let mut c = self.inference.clone();
        let response = c.model_statistics(request).await.map_err(|s| self.rpc(s))?;
        Ok(response
            .into_inner()
            .model_stats
            .into_iter()
            .next()
            .unwrap_or_default())
    }
}

/// "transport error: tcp connect error: Connection refused (os error 111)" rather
/// than just "transport error".
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
