//! Compiles herd's .proto files with protox (pure Rust), so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "grpc_service.proto",
        "model_config.proto",
        "herd/v1/agent.proto",
        "herd/v1/worker.proto",
        "herd/v1/cluster.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Tensor bytes stay reference-counted slices of the received frame.
        .bytes(".inference")
        .bytes(".herd.v1.WorkerTensor")
        .compile_fds(fds)?;
    Ok(())
}
