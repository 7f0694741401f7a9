//! Priority classes through the real processes: the `herd-priority` header and KServe's
//! `priority` parameter are read by the scheduler and by an agent alike, a bad value is
//! refused with the choices, and both classes are served. (Which runs first is the
//! runner's and the sender's unit tests: they hold the model at a gate.)

use herd_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use herd_proto::inference::infer_parameter::ParameterChoice;
use herd_proto::inference::InferParameter;
use herd_scheduler::config::PolicyArg;
use tonic::Code;

use crate::cluster_support::*;
use crate::support::*;

pub(crate) fn with_header(value: &str) -> tonic::Request<herd_proto::inference::ModelInferRequest> {
    let mut request = tonic::Request::new(mlp_request(1, 0.5));
    request
        .metadata_mut()
        .insert("herd-priority", value.parse().expect("ascii"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_classes_are_served_and_a_bad_one_is_refused_by_scheduler_and_agent() {
    let cluster = TestCluster::start(&["1GiB"], &[], PolicyArg::Spread).await;
    let agent = cluster
        .channel_to(&cluster.agents[0].addr, herd_core::tls::AGENT_NAME)
        .await;
    let servers = [("scheduler", cluster.channel().await), ("agent", agent)];
    for (addr, channel) in servers {
        let mut client = GrpcInferenceServiceClient::new(channel);
        for class in ["interactive", "bulk", "BULK"] {
            client
                .model_infer(with_header(class))
                .await
                .unwrap_or_else(|e| panic!("{addr} {class}: {e:?}"));
        }
        let mut bulk = mlp_request(1, 0.5);
        bulk.parameters.insert(
            "priority".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(5)),
            },
        );
        client
            .model_infer(bulk)
            .await
            .expect("a Triton priority level");
        let refused = client
            .model_infer(with_header("urgent"))
            .await
            .expect_err("no such class");
        assert_eq!(refused.code(), Code::InvalidArgument, "{addr}");
        assert_eq!(
            refused.message(),
            "header herd-priority is \"urgent\": use \"interactive\" or \"bulk\"",
            "{addr}"
        );
    }
}
