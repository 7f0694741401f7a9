//! The GPU path with the real ONNX Runtime. Where scripts/setup.sh fetched the CPU build
//! (no NVIDIA driver: CI and most machines), a replica asked to run on a GPU fails to
//! load, in process and in a model worker, saying why and what to do, and the engine
//! says it cannot run on a GPU, so the agent offers no GPU to placement. Where it
//! fetched the GPU build (a driver is present), the replica runs on GPU 0 and answers
//! as on the CPU.

use herd_agent::{Loader, ProcessLoader};
use herd_core::repository::ModelFiles;
use herd_core::Tensor;

use crate::support::*;

fn tiny_mlp(repo: &tempfile::TempDir, gpu: Option<u32>) -> ModelFiles {
    let files = herd_core::Repository::new(repo_path(repo), herd_core::ModelSettings::default())
        .find("tiny_mlp")
        .expect("tiny_mlp");
    ModelFiles { gpu, ..files }
}

/// tiny_mlp's answer to three rows, from a session `loader` loads with `files`.
fn answer(loader: &dyn Loader, files: &ModelFiles) -> Result<Vec<Tensor>, String> {
    let (_, mut session) = loader.load(files).map_err(|e| e.to_string())?;
    let request = mlp_request(3, 0.5);
    let input = Tensor {
        dtype: herd_proto::DataType::Fp32,
        shape: vec![3, 16],
        data: request.raw_input_contents[0].clone(),
    };
    session.run(vec![input]).map_err(|e| e.to_string())
}

/// On the CPU build: refused with the reason; on the GPU build: as on the CPU.
fn check(loader: &dyn Loader) {
    let repo = repository();
    let on_cpu = answer(loader, &tiny_mlp(&repo, None)).expect("runs on the CPU");
    let on_gpu = answer(loader, &tiny_mlp(&repo, Some(0)));
    match loader.gpu_support() {
        Err(why) => {
            assert!(why.contains("CPU build"), "{why}");
            let refused = on_gpu.expect_err("no GPU replica on the CPU build");
            assert!(
                refused.contains("cannot run on GPU 0")
                    && refused.contains("is the CPU build")
                    && refused.contains("scripts/setup.sh"),
                "{refused}"
            );
        }
        Ok(()) => {
            let on_gpu = on_gpu.expect("the GPU build runs the replica on GPU 0");
            assert_eq!(on_gpu.len(), on_cpu.len());
            for (g, c) in on_gpu.iter().zip(&on_cpu) {
                assert_eq!(g.shape, c.shape);
                let (g, c) = (f32_values(&g.data), f32_values(&c.data));
                let diff = g
                    .iter()
                    .zip(&c)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-3, "GPU and CPU differ by {diff}");
            }
        }
    }
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn a_gpu_replica_in_process_runs_on_the_gpu_build_and_is_refused_with_a_reason_on_the_cpu_build() {
    check(ort().as_ref());
}

#[test]
fn a_gpu_replica_in_a_model_worker_likewise() {
    check(&ProcessLoader::new(worker_program()));
}
