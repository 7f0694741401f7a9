//! herd's wire protocols: the KServe v2 / Triton inference service and herd's own
//! `herd.v1` services, plus the tensor data types they share.

pub mod datatype;

/// KServe v2 inference protocol with Triton's extensions (package `inference`).
pub mod inference {
    #![allow(clippy::all, clippy::unwrap_used)]
    tonic::include_proto!("inference");
}

/// herd's own services (package `herd.v1`), also reachable as `herd::*`.
pub mod herd {
    pub mod v1 {
        #![allow(clippy::all, clippy::unwrap_used)]
        tonic::include_proto!("herd.v1");
    }
    pub use v1::*;
}

pub use datatype::DataType;

/// The encoded `google.protobuf.FileDescriptorSet` of every .proto above (imports
/// included): what a test needs to list every service and RPC, so none is forgotten.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herd_descriptor.bin"));

/// The URL of a gRPC server given as HOST:PORT (plain HTTP/2) or as a URL already.
pub fn grpc_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}
