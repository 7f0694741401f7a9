//! What the model asks the outside world to do after a transition. The executor carries
//! these out (RPCs to agents, connections); the model has already recorded them.

use herd_proto::herd::ModelSource;

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Load a replica: the model holds it as loading until the executor reports back.
    Load {
        model: String,
        node: String,
        source: ModelSource,
    },
    /// Give a running replica new settings (its herd.toml changed).
    Reconfigure {
        model: String,
        node: String,
        settings: herd_proto::herd::ModelSettings,
    },
    /// Unload a replica the model has already let go.
    Unload { model: String, node: String },
    /// A node went down: the connections toward its replicas are of no more use.
    NodeDown { node: String },
    /// Something placement looks at changed: run it again.
    Reconcile,
}
