//! What every herd server says of itself in ServerMetadata.

use herd_proto::inference::ServerMetadataResponse;

pub fn server_metadata() -> ServerMetadataResponse {
    ServerMetadataResponse {
        name: "herd".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: ["model_repository", "model_configuration", "statistics"]
            .map(String::from)
            .to_vec(),
    }
}
