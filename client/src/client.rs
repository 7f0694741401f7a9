//! A connection to a herd server — the scheduler, or an agent serving alone — with the
//! cluster token on every request, per-request deadlines, and errors that say what
//! failed and where.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use herd_core::auth::SendToken;
use herd_core::contents::contents_to_raw;
use herd_core::limits::MAX_MESSAGE;
use herd_proto::herd::admin_client::AdminClient;
use herd_proto::herd::{
    AdminLoadRequest, AdminUnloadRequest, ClusterUpdate, DrainNodeRequest, DrainNodeResponse,
    ListModelsRequest, ListModelsResponse, ListNodesRequest, ListNodesResponse, WakeNodeRequest,
    WakeNodeResponse, WatchRequest,
};
use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::model_infer_request::InferInputTensor;
use herd_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelStatistics, ModelStatisticsRequest,
};
use herd_proto::DataType;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use herd_core::tls::{JoinToken, Trust};

use crate::error::{connect_reason, ClientError};
use crate::tensor::{NamedTensor, TensorData};

/// How to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` on every request. A join token
    /// (`herd1.…`) sends its secret and pins the cluster CA: the connection is TLS.
    pub token: Option<String>,
    /// The cluster CA's certificate (PEM): the connection is TLS, verified with it.
    pub ca_pem: Option<String>,
    /// Deadline of each unary request; `None` waits as long as the server takes.
    pub timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// What the server is, for messages: "scheduler" or "agent".
    pub role: String,
}

/// Never prints the token: options end up in logs.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.ca_pem.is_some())
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("role", &self.role)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            token: None,
            ca_pem: None,
            timeout: None,
            connect_timeout: Duration::from_secs(5),
            role: "scheduler".to_string(),
        }
    }
}

type Transport = InterceptedService<Channel, SendToken>;

struct Target {
    role: String,
    addr: String,
    timeout: Option<Duration>,
}

/// A cheap-to-clone handle on one server connection (HTTP/2, multiplexed: clones share
/// it).
#[derive(Clone)]
pub struct Client {
    target: Arc<Target>,
    inference: GrpcInferenceServiceClient<Transport>,
    admin: AdminClient<Transport>,
}

impl Client {
    /// Connects to `addr` (HOST:PORT or a URL) with default options.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects to `addr` (HOST:PORT or a URL). Over TLS when the options give a CA
    /// or a join token and the address is not an `http://` URL.
    pub async fn connect_with(addr: &str, options: ConnectOptions) -> Result<Client, ClientError> {
        let url = herd_proto::grpc_url(addr);
        let address_error = |reason: String| ClientError::Address {
            role: options.role.clone(),
            addr: addr.to_string(),
            reason,
        };
        let token = options.token.as_deref().map(JoinToken::parse);
        let trust = if addr.starts_with("http://") {
            Trust::Plain
        } else {
            Trust::from_parts(options.ca_pem.clone(), token.as_ref())
        };
        if addr.starts_with("https://") && !trust.is_tls() {
            return Err(ClientError::Tls {
                role: options.role.clone(),
                addr: addr.to_string(),
                reason:
                    "nothing to verify the server with: give the join token (herd1.…) or --ca-cert"
                        .into(),
            });
        }
        let name = if options.role == "agent" {
            herd_core::tls::AGENT_NAME
        } else {
            herd_core::tls::SCHEDULER_NAME
        };
        let ca = trust
            .ca_pem(addr, name)
            .await
            .map_err(|e| ClientError::Tls {
                role: options.role.clone(),
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let endpoint = match &ca {
            Some(ca) => Endpoint::from_shared(url.replacen("http://", "https://", 1))
                .and_then(|e| e.tls_config(herd_core::tls::tonic_client(ca, name))),
            None => Endpoint::from_shared(url),
        }
        .map_err(|e| address_error(e.to_string()))?;
        if endpoint.uri().host().is_none() {
            return Err(address_error("expected HOST:PORT".to_string()));
        }
        let secret = token.as_ref().map(|t| t.secret.as_str());
        let auth = SendToken::new(secret).map_err(|_| {
            ClientError::Token("it must be printable ASCII without newlines".into())
        })?;
        // A server serving TLS would answer plain text by closing the connection, which
        // says nothing of what to do.
        if ca.is_none() && herd_core::tls::serves_tls(addr).await {
            return Err(ClientError::Tls {
                role: options.role.clone(),
                addr: addr.to_string(),
                reason: "it serves TLS and this client has nothing to verify it with: give the \
                         join token (herd1.…, the scheduler's DATA_DIR/join-token) or --ca-cert \
                         DATA_DIR/ca.pem"
                    .into(),
            });
        }
        let channel = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                role: options.role.clone(),
                addr: addr.to_string(),
                reason: connect_reason(&e),
            })?;
        let transport = InterceptedService::new(channel, auth);
        Ok(Client {
            target: Arc::new(Target {
                role: options.role,
                addr: addr.to_string(),
                timeout: options.timeout,
            }),
            inference: GrpcInferenceServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            admin: AdminClient::new(transport)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    pub fn addr(&self) -> &str {
        &self.target.addr
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.target.timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// The error for a status the server answered with.
    pub fn error(&self, status: tonic::Status) -> ClientError {
        let (role, addr) = (self.target.role.clone(), self.target.addr.clone());
        match status.code() {
            tonic::Code::Unauthenticated => ClientError::Unauthenticated {
                role,
                addr,
                message: status.message().to_string(),
            },
            tonic::Code::Unavailable if status.message().contains("error trying to connect") => {
                ClientError::Connect {
                    role,
                    addr,
                    reason: std::error::Error::source(&status)
                        .map_or_else(|| status.message().to_string(), connect_reason),
                }
            }
            _ => ClientError::Rpc {
                role,
                addr,
                status,
                hint: String::new(),
            },
        }
    }

    /// As `error`, noting that an agent serving alone has no admin service.
    fn admin_error(&self, status: tonic::Status) -> ClientError {
        match self.error(status) {
            ClientError::Rpc {
                role, addr, status, ..
            } if status.code() == tonic::Code::Unimplemented => ClientError::Rpc {
                role,
                addr,
                status,
                hint: " (is this an agent? cluster commands need the scheduler's address)"
                    .to_string(),
            },
            other => other,
        }
    }

    fn malformed(&self, reason: impl ToString) -> ClientError {
        ClientError::Response {
            role: self.target.role.clone(),
            addr: self.target.addr.clone(),
            reason: reason.to_string(),
        }
    }

    pub async fn metadata(&self, model: &str) -> Result<ModelMetadataResponse, ClientError> {
        let request = self.request(ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        });
        let mut c = self.inference.clone();
        Ok(c.model_metadata(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner())
    }

    /// Sends one inference request as it is.
    pub async fn infer_request(
        &self,
        request: ModelInferRequest,
    ) -> Result<ModelInferResponse, ClientError> {
        let request = self.request(request);
        let mut c = self.inference.clone();
        Ok(c.model_infer(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner())
    }

    /// Runs `model` on typed inputs and returns its outputs, typed, in the order the
    /// server sent them.
    pub async fn infer(
        &self,
        model: &str,
        inputs: &[NamedTensor],
    ) -> Result<Vec<NamedTensor>, ClientError> {
        let response = self.infer_request(infer_request(model, inputs)).await?;
        outputs(response).map_err(|reason| self.malformed(reason))
    }

    /// The model's statistics (Triton's ModelStatistics), zero when it has none.
    pub async fn statistics(&self, model: &str) -> Result<ModelStatistics, ClientError> {
        let request = self.request(ModelStatisticsRequest {
            name: model.to_string(),
            version: String::new(),
        });
        let mut c = self.inference.clone();
        let response = c
            .model_statistics(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(response
            .into_inner()
            .model_stats
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    pub async fn list_models(&self) -> Result<ListModelsResponse, ClientError> {
        let mut c = self.admin.clone();
        Ok(c.list_models(self.request(ListModelsRequest {}))
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner())
    }

    pub async fn list_nodes(&self) -> Result<ListNodesResponse, ClientError> {
        let mut c = self.admin.clone();
        Ok(c.list_nodes(self.request(ListNodesRequest {}))
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner())
    }

    /// Places and loads `model`; answers with the nodes that hold it once one is ready.
    pub async fn load_model(&self, model: &str) -> Result<Vec<String>, ClientError> {
        let mut c = self.admin.clone();
        let request = self.request(AdminLoadRequest {
            model: model.to_string(),
        });
        Ok(c.load_model(request)
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner()
            .nodes)
    }

    /// Has the scheduler read its model repository now; answers how many models were
    /// added or changed.
    pub async fn rescan(&self) -> Result<u32, ClientError> {
        let mut c = self.admin.clone();
        let request = self.request(herd_proto::herd::RescanRequest {});
        Ok(c.rescan(request)
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner()
            .changed)
    }

    /// Why `model` is where it is, or nowhere (one replica needing `memory` bytes if
    /// given): each node's pools as placement sees them, and where one more would go.
    pub async fn explain_model(
        &self,
        model: &str,
        memory: Option<u64>,
    ) -> Result<herd_proto::herd::ExplainModelResponse, ClientError> {
        let mut c = self.admin.clone();
        let request = self.request(herd_proto::herd::ExplainModelRequest {
            model: model.to_string(),
            memory_bytes: memory.unwrap_or(0),
        });
        Ok(c.explain_model(request)
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner())
    }

    /// Unloads every replica of `model`; answers with the nodes it left.
    pub async fn unload_model(&self, model: &str) -> Result<Vec<String>, ClientError> {
        let mut c = self.admin.clone();
        let request = self.request(AdminUnloadRequest {
            model: model.to_string(),
        });
        Ok(c.unload_model(request)
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner()
            .nodes)
    }

    pub async fn drain_node(&self, node: &str) -> Result<DrainNodeResponse, ClientError> {
        let mut c = self.admin.clone();
        let request = self.request(DrainNodeRequest {
            node: node.to_string(),
        });
        Ok(c.drain_node(request)
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner())
    }

    /// Sends the Wake-on-LAN packet for `node` (one that said how: --wake-mac).
    pub async fn wake_node(&self, node: &str) -> Result<WakeNodeResponse, ClientError> {
        let mut c = self.admin.clone();
        let request = self.request(WakeNodeRequest {
            node: node.to_string(),
        });
        Ok(c.wake_node(request)
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner())
    }

    /// The cluster now, then on every change. The stream has no deadline.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<ClusterUpdate, ClientError>> + use<>, ClientError> {
        let mut c = self.admin.clone();
        let stream = c
            .watch(tonic::Request::new(WatchRequest {}))
            .await
            .map_err(|s| self.admin_error(s))?
            .into_inner();
        let this = self.clone();
        Ok(stream.map(move |item| item.map_err(|s| this.admin_error(s))))
    }
}

/// A request carrying `inputs` as raw contents.
pub fn infer_request(model: &str, inputs: &[NamedTensor]) -> ModelInferRequest {
    let mut request = ModelInferRequest {
        model_name: model.to_string(),
        ..Default::default()
    };
    for input in inputs {
        request.inputs.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.data.dtype().as_str().to_string(),
            shape: input.data.shape().iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
        request.raw_input_contents.push(input.data.to_raw());
    }
    request
}

/// Why a response's outputs cannot be read as tensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("{outputs} outputs but {raw} raw contents")]
    Count { outputs: usize, raw: usize },
    #[error("output '{name}': {reason}")]
    Output { name: String, reason: String },
}

fn output_error(name: &str, reason: impl ToString) -> OutputError {
    OutputError::Output {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// The typed outputs of a response, from raw or typed contents.
pub fn outputs(response: ModelInferResponse) -> Result<Vec<NamedTensor>, OutputError> {
    let raw = response.raw_output_contents;
    if !raw.is_empty() && raw.len() != response.outputs.len() {
        return Err(OutputError::Count {
            outputs: response.outputs.len(),
            raw: raw.len(),
        });
    }
    response
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, out)| {
            let dtype: DataType = out
                .datatype
                .parse()
                .map_err(|e| output_error(&out.name, e))?;
            let bytes = match raw.get(i) {
                Some(b) => b.clone(),
                None => {
                    let contents = out.contents.clone().unwrap_or_default();
                    contents_to_raw(dtype, &contents)
                        .map_err(|e| output_error(&out.name, e))?
                        .into()
                }
            };
            let data = TensorData::from_raw(dtype, &out.shape, bytes)
                .map_err(|e| output_error(&out.name, e))?;
            Ok(NamedTensor {
                name: out.name,
                data,
            })
        })
        .collect()
}
