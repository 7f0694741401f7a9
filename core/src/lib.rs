//! What every part of herd shares, below the agent, the scheduler and the client:
//! the tensor type and its one byte codec, model settings and herd.toml, the model
//! repository and sha256, the cluster token rule (client and server side), limits
//! and defaults, and where a model may run (`Device`).

pub mod auth;
pub mod connect_error;
pub mod contents;
pub mod device;
pub mod digest;
#[cfg(feature = "cli")]
pub mod flags;
pub mod histogram;
pub mod incoming;
#[cfg(feature = "kserve-http")]
pub mod kserve_http;
pub mod layers;
pub mod limits;
pub mod metadata;
pub mod paths;
pub mod priority;
pub mod repository;
pub mod route;
pub mod settings;
pub mod settings_change;
pub mod tensor;
pub mod tls;
pub mod wake;

pub use device::Device;
pub use repository::{ModelFiles, Repository, RepositoryError};
pub use settings::{ClusterPolicy, ModelSettings, SettingsError, Ttl};
pub use tensor::{ModelSpec, Tensor, TensorSpec};
