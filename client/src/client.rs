//! A connection to a herd server — the scheduler, or an agent serving alone — with the
//! cluster token on every request, per-request deadlines, and errors that say what
//! failed and where.

use std::future::Future;
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
use tonic::transport::Channel;

use herd_core::tls::JoinToken;

use crate::connect::Dial;
use crate::error::{connect_reason, ClientError};
use crate::failover::{self, Failover};
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
    timeout: Option<Duration>,
}

/// One server of the address list: its address and the clients on its channel.
struct Server {
    addr: String,
    inference: GrpcInferenceServiceClient<Transport>,
    admin: AdminClient<Transport>,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A cheap-to-clone handle on the connections to one or several servers of a cluster
/// (HTTP/2, multiplexed: clones share them). Calls go to the server that last
/// answered, and to the next ones while the servers tried are gone (see
/// [`crate::failover`]).
#[derive(Clone)]
pub struct Client {
    target: Arc<Target>,
    servers: Arc<Failover<Server>>,
}

impl Client {
    /// Connects to `addr` (HOST:PORT or a URL, or several separated by commas) with
    /// default options.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects to the first server of `addrs` that answers: HOST:PORT or a URL, or
    /// several separated by commas, all servers of one cluster (schedulers sharing one
    /// store). The others are connected at their first call. Over TLS when the options
    /// give a CA or a join token and the address is not an `http://` URL.
    pub async fn connect_with(addrs: &str, options: ConnectOptions) -> Result<Client, ClientError> {
        let list = failover::addresses(addrs);
        if list.is_empty() {
            return Err(ClientError::Address {
                role: options.role.clone(),
                addr: addrs.to_string(),
                reason: "no address: expected HOST:PORT, or several separated by commas"
                    .to_string(),
            });
        }
        let token = options.token.as_deref().map(JoinToken::parse);
        let secret = token.as_ref().map(|t| t.secret.as_str());
        let auth = SendToken::new(secret).map_err(|_| {
            ClientError::Token("it must be printable ASCII without newlines".into())
        })?;
        let dial = Dial {
            role: &options.role,
            ca_pem: options.ca_pem.clone(),
            token: token.as_ref(),
            connect_timeout: options.connect_timeout,
        };
        let connected = dial.channels(&list).await?;
        let servers = connected
            .channels
            .into_iter()
            .map(|(addr, channel)| {
                let transport = InterceptedService::new(channel, auth.clone());
                Server {
                    addr,
                    inference: GrpcInferenceServiceClient::new(transport.clone())
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE),
                    admin: AdminClient::new(transport)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE),
                }
            })
            .collect();
        Ok(Client {
            target: Arc::new(Target {
                role: options.role,
                timeout: options.timeout,
            }),
            servers: Arc::new(Failover::new(servers, connected.answered)),
        })
    }

    /// The address of the server in use: the one that last answered.
    pub fn addr(&self) -> &str {
        &self.servers.get(self.servers.preferred_index()).addr
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.target.timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// Sends `message` with this client's deadline, failing over while servers are
    /// gone; on failure, the server that gave the last error and that error.
    async fn unary<M, T, F, Fut>(&self, message: M, send: F) -> Result<T, (usize, tonic::Status)>
    where
        M: Clone,
        F: Fn(&Server, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.servers
            .call(message, |server, m| send(server, self.request(m)))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The error for a status the server in use answered with.
    pub fn error(&self, status: tonic::Status) -> ClientError {
        self.error_from(self.addr(), status)
    }

    /// A server gone after the others were tried is every server's failure: the error
    /// names them all, not only the last.
    fn error_at(&self, (server, status): (usize, tonic::Status)) -> ClientError {
        if self.servers.len() > 1 && crate::failover::server_gone(&status) {
            return self.error_from(&self.servers.list(), status);
        }
        self.error_from(&self.servers.get(server).addr, status)
    }

    /// The error for a status that the server at `addr` answered with.
    fn error_from(&self, addr: &str, status: tonic::Status) -> ClientError {
        let (role, addr) = (self.target.role.clone(), addr.to_string());
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

    /// As `error_at`, noting that an agent serving alone has no admin service.
    fn admin_error_at(&self, failed: (usize, tonic::Status)) -> ClientError {
        admin_hint(self.error_at(failed))
    }

    fn malformed(&self, reason: impl ToString) -> ClientError {
        ClientError::Response {
            role: self.target.role.clone(),
            addr: self.addr().to_string(),
            reason: reason.to_string(),
        }
    }

    pub async fn metadata(&self, model: &str) -> Result<ModelMetadataResponse, ClientError> {
        let message = ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        };
        self.unary(message, |s, r| {
            let mut c = s.inference.clone();
            async move { c.model_metadata(r).await }
        })
        .await
        .map_err(|e| self.error_at(e))
    }

    /// Sends one inference request as it is.
    pub async fn infer_request(
        &self,
        request: ModelInferRequest,
    ) -> Result<ModelInferResponse, ClientError> {
        self.unary(request, |s, r| {
            let mut c = s.inference.clone();
            async move { c.model_infer(r).await }
        })
        .await
        .map_err(|e| self.error_at(e))
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
        let message = ModelStatisticsRequest {
            name: model.to_string(),
            version: String::new(),
        };
        let response = self
            .unary(message, |s, r| {
                let mut c = s.inference.clone();
                async move { c.model_statistics(r).await }
            })
            .await
            .map_err(|e| self.error_at(e))?;
        Ok(response.model_stats.into_iter().next().unwrap_or_default())
    }

    // The admin calls below are idempotent enough to send again to another scheduler
    // when one is gone: loading a loaded model, unloading an unloaded one, draining a
    // drained node or waking an awake one changes nothing.

    pub async fn list_models(&self) -> Result<ListModelsResponse, ClientError> {
        self.unary(ListModelsRequest {}, |s, r| {
            let mut c = s.admin.clone();
            async move { c.list_models(r).await }
        })
        .await
        .map_err(|e| self.admin_error_at(e))
    }

    pub async fn list_nodes(&self) -> Result<ListNodesResponse, ClientError> {
        self.unary(ListNodesRequest {}, |s, r| {
            let mut c = s.admin.clone();
            async move { c.list_nodes(r).await }
        })
        .await
        .map_err(|e| self.admin_error_at(e))
    }

    /// Places and loads `model`; answers with the nodes that hold it once one is ready.
    pub async fn load_model(&self, model: &str) -> Result<Vec<String>, ClientError> {
        let message = AdminLoadRequest {
            model: model.to_string(),
        };
        self.unary(message, |s, r| {
            let mut c = s.admin.clone();
            async move { c.load_model(r).await }
        })
        .await
        .map(|response| response.nodes)
        .map_err(|e| self.admin_error_at(e))
    }

    /// Has the scheduler read its model repository now; answers how many models were
    /// added or changed.
    pub async fn rescan(&self) -> Result<u32, ClientError> {
        self.unary(herd_proto::herd::RescanRequest {}, |s, r| {
            let mut c = s.admin.clone();
            async move { c.rescan(r).await }
        })
        .await
        .map(|response| response.changed)
        .map_err(|e| self.admin_error_at(e))
    }

    /// Why `model` is where it is, or nowhere (one replica needing `memory` bytes if
    /// given): each node's pools as placement sees them, and where one more would go.
    pub async fn explain_model(
        &self,
        model: &str,
        memory: Option<u64>,
    ) -> Result<herd_proto::herd::ExplainModelResponse, ClientError> {
        let message = herd_proto::herd::ExplainModelRequest {
            model: model.to_string(),
            memory_bytes: memory.unwrap_or(0),
        };
        self.unary(message, |s, r| {
            let mut c = s.admin.clone();
            async move { c.explain_model(r).await }
        })
        .await
        .map_err(|e| self.admin_error_at(e))
    }

    /// Unloads every replica of `model`; answers with the nodes it left.
    pub async fn unload_model(&self, model: &str) -> Result<Vec<String>, ClientError> {
        let message = AdminUnloadRequest {
            model: model.to_string(),
        };
        self.unary(message, |s, r| {
            let mut c = s.admin.clone();
            async move { c.unload_model(r).await }
        })
        .await
        .map(|response| response.nodes)
        .map_err(|e| self.admin_error_at(e))
    }

    pub async fn drain_node(&self, node: &str) -> Result<DrainNodeResponse, ClientError> {
        let message = DrainNodeRequest {
            node: node.to_string(),
        };
        self.unary(message, |s, r| {
            let mut c = s.admin.clone();
            async move { c.drain_node(r).await }
        })
        .await
        .map_err(|e| self.admin_error_at(e))
    }

    /// Sends the Wake-on-LAN packet for `node` (one that said how: --wake-mac).
    pub async fn wake_node(&self, node: &str) -> Result<WakeNodeResponse, ClientError> {
        let message = WakeNodeRequest {
            node: node.to_string(),
        };
        self.unary(message, |s, r| {
            let mut c = s.admin.clone();
            async move { c.wake_node(r).await }
        })
        .await
        .map_err(|e| self.admin_error_at(e))
    }

    /// The cluster now, then on every change. The stream has no deadline. It fails
    /// over only while opening: once open, a lost stream is the caller's to reopen.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<ClusterUpdate, ClientError>> + use<>, ClientError> {
        let (server, stream) = self
            .servers
            .call(WatchRequest {}, |s, message| {
                let (mut c, server) = (s.admin.clone(), s.addr.clone());
                async move {
                    let response = c.watch(tonic::Request::new(message)).await?;
                    Ok((server, response.into_inner()))
                }
            })
            .await
            .map_err(|e| self.admin_error_at(e))?;
        let this = self.clone();
        Ok(stream.map(move |item| item.map_err(|s| admin_hint(this.error_from(&server, s)))))
    }
}

/// Notes on an UNIMPLEMENTED answer that an agent serving alone has no admin service.
fn admin_hint(error: ClientError) -> ClientError {
    match error {
        ClientError::Rpc {
            role, addr, status, ..
        } if status.code() == tonic::Code::Unimplemented => ClientError::Rpc {
            role,
            addr,
            status,
            hint: " (is this an agent? cluster commands need the scheduler's address)".to_string(),
        },
        other => other,
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
