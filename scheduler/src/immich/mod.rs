//! Immich's machine-learning HTTP API in front of the cluster: `http` speaks the
//! protocol, `pipeline` runs a request's stages as calls to the Immich models of the
//! catalog (whose processing runs on the agents).

pub mod cache;
pub mod http;
pub mod pipeline;
