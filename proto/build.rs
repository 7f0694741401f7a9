//! Compiles herd's .proto files with protox (pure Rust), so no protoc is needed, and
//! keeps their descriptors (`FILE_DESCRIPTOR_SET`) so that tests can walk every RPC.

use std::path::PathBuf;

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
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(files)?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    std::fs::write(
        out.join("herd_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        // Tensor bytes stay reference-counted slices of the received frame.
        .bytes(".inference")
        .bytes(".herd.v1.WorkerTensor")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
