//! The layers in the order a herd gRPC server wants them (see the module docs of
//! `layers`), as one [`Layer`] for `tonic::transport::Server::builder().layer(..)`.

use std::time::Duration;

use tower::Layer;

use super::{
    Auth, AuthLayer, Deadline, DeadlineLayer, EarlyRefusal, EarlyRefusalLayer, GrpcMetrics,
    InFlightBytes, InFlightBytesLayer, InFlightLimit, InFlightLimitLayer, MessageSize,
    MessageSizeLayer, Metrics, MetricsLayer, RequestIdLayer, RequestIdService, TokenRule,
};

/// Calls in flight a server takes at once unless told otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// A service wrapped in the whole stack, outermost first.
pub type Stacked<S> = RequestIdService<
    Metrics<Auth<InFlightLimit<InFlightBytes<EarlyRefusal<Deadline<MessageSize<S>>>>>>>,
>;

/// Request id, metrics, token, in-flight limit, in-flight bytes, early refusal,
/// deadline and the message-size answer, in that order.
#[derive(Clone, Debug)]
pub struct ServerStack {
    auth: AuthLayer,
    limit: InFlightLimitLayer,
    bytes: InFlightBytesLayer,
    early: EarlyRefusalLayer,
    deadline: DeadlineLayer,
    metrics: GrpcMetrics,
}

impl ServerStack {
    /// Calls checked by `rule`, at most [`DEFAULT_MAX_IN_FLIGHT`] at once and no limit
    /// on their bytes, the caller's deadline honoured and no maximum of the server's
    /// own, metrics into a new handle.
    pub fn new(rule: TokenRule) -> ServerStack {
        ServerStack {
            auth: AuthLayer::new(rule),
            limit: InFlightLimitLayer::new(DEFAULT_MAX_IN_FLIGHT),
            bytes: InFlightBytesLayer::unlimited(),
            early: EarlyRefusalLayer::off(),
            deadline: DeadlineLayer::new(),
            metrics: GrpcMetrics::new(),
        }
    }

    /// At most `max` calls in flight (at least 1); past it, RESOURCE_EXHAUSTED.
    pub fn max_in_flight(mut self, max: usize) -> ServerStack {
        self.limit = InFlightLimitLayer::new(max);
        self
    }

    /// At most `max` bytes of requests held at once (from their length prefix to the
    /// end of their response); past it, RESOURCE_EXHAUSTED before the request is read.
    pub fn max_in_flight_bytes(mut self, max: usize) -> ServerStack {
        self.bytes = InFlightBytesLayer::new(max);
        self
    }

    /// Inference requests `admit` refuses are refused as soon as their first bytes
    /// name the model (see [`EarlyRefusalLayer`]).
    pub fn early_refusal(mut self, admit: super::early_refusal::Admit) -> ServerStack {
        self.early = EarlyRefusalLayer::new(admit);
        self
    }

    /// No call runs longer than `max`, whatever deadline its caller set.
    pub fn max_deadline(mut self, max: Duration) -> ServerStack {
        self.deadline = DeadlineLayer::with_max(max);
        self
    }

    /// Records into `metrics` (a handle the caller keeps for exporting).
    pub fn metrics(mut self, metrics: GrpcMetrics) -> ServerStack {
        self.metrics = metrics;
        self
    }

    /// The handle the stack records into.
    pub fn metrics_handle(&self) -> GrpcMetrics {
        self.metrics.clone()
    }

    /// Calls in flight now, all connections together.
    pub fn in_flight(&self) -> usize {
        self.limit.in_flight()
    }

    /// Bytes of requests held now (0 without a limit: nothing is counted).
    pub fn in_flight_bytes(&self) -> usize {
        self.bytes.in_flight()
    }
}

impl<S> Layer<S> for ServerStack {
    type Service = Stacked<S>;

    fn layer(&self, inner: S) -> Stacked<S> {
        let service = MessageSizeLayer.layer(inner);
        let service = self.deadline.layer(service);
        let service = self.early.layer(service);
        let service = self.bytes.layer(service);
        let service = self.limit.layer(service);
        let service = self.auth.layer(service);
        let service = MetricsLayer::new(self.metrics.clone()).layer(service);
        RequestIdLayer::new().layer(service)
    }
}
