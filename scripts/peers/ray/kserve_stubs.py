"""tritonclient's KServe v2 gRPC stubs, made picklable for Ray Serve.

tritonclient builds its messages under the module names `grpc_service_pb2` and
`model_config_pb2` (the .proto files' own names), not `tritonclient.grpc.service_pb2`, so
pickle, which Serve's gRPC proxy uses to hand each request to a replica, cannot find
their classes. Importing this module makes those names point at tritonclient's modules;
serve_app.py gives Serve's proxy the servicer function below (which imports it there) and
imports it in its replicas.
"""

import sys

from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

sys.modules.setdefault("grpc_service_pb2", service_pb2)
sys.modules.setdefault("model_config_pb2", model_config_pb2)

add_GRPCInferenceServiceServicer_to_server = (
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
)
