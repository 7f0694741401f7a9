//! The repository read again while the scheduler runs: a model added later loads on
//! its first request, a replaced file and a new version directory reach the replicas.

use herd_scheduler::config::PolicyArg;

use crate::cluster_support::*;
use crate::support::*;

fn fixed_shaped_request(model: &str) -> herd_proto::inference::ModelInferRequest {
    raw_request(model, "x", "FP32", &[2, 4], f32_bytes(&[1.0; 8]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_directory_added_while_running_loads_on_its_first_request() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let mut client = cluster.client().await;
    let unknown = client
        .model_infer(fixed_shaped_request("late"))
        .await
        .expect_err("not in the repository yet");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        !unknown
            .message()
            .contains(&*cluster.repo.path().to_string_lossy()),
        "no server path in the answer: {}",
        unknown.message()
    );
    let model = std::fs::read(cluster.repo.path().join("tiny_fixed/1/model.onnx")).expect("read");
    write(cluster.repo.path(), "late/1/model.onnx", &model);
    let answer = client
        .model_infer(fixed_shaped_request("late"))
        .await
        .expect("served on its first request, without `herd models load`");
    assert_eq!(answer.into_inner().outputs[0].shape, vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_and_a_new_version_reach_the_replicas_after_a_rescan() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let mut client = cluster.client().await;
    client
        .model_infer(mlp_request(1, 0.0))
        .await
        .expect("the first file serves");
    let unchanged = herd_scheduler::rescan::once(&cluster.scheduler).await;
    assert_eq!(unchanged, 0, "an unchanged repository changes nothing");

    // The file replaced in place by another model (other input shape, other digest).
    let other = std::fs::read(cluster.repo.path().join("tiny_fixed/1/model.onnx")).expect("read");
    write(cluster.repo.path(), "tiny_mlp/1/model.onnx", &other);
    assert_eq!(herd_scheduler::rescan::once(&cluster.scheduler).await, 1);
    let digest = herd_core::digest::sha256_bytes(&other);
    assert_eq!(
        cluster
            .scheduler
            .lock()
            .model("tiny_mlp")
            .map(|m| m.digest.clone()),
        Some(digest)
    );
    let answer = client
        .model_infer(fixed_shaped_request("tiny_mlp"))
        .await
        .expect("the replica rolled to the new file");
    assert_eq!(answer.into_inner().outputs[0].shape, vec![2, 3]);
    assert_eq!(cluster.events("changed", "tiny_mlp").len(), 1);

    // A new version directory is served in its place.
    write(cluster.repo.path(), "tiny_mlp/7/model.onnx", &other);
    assert_eq!(herd_scheduler::rescan::once(&cluster.scheduler).await, 1);
    let metadata = client
        .model_metadata(herd_proto::inference::ModelMetadataRequest {
            name: "tiny_mlp".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(metadata.versions, vec!["7".to_string()]);
}
