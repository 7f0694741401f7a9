"""The outside check that herd speaks Triton's gRPC protocol: the stock tritonclient
against a running server (an agent, `herd up` or a scheduler).
Usage: python tritonclient_check.py HOST:PORT [TOKEN]
A scheduler needs the cluster TOKEN for model load and unload. With HERD_CA_CERT set
(a CA certificate file, the scheduler's DATA_DIR/ca.pem), over TLS verified with it.

Uses the tiny test models (tests/models). Exits non-zero, with the failed assertion,
on any difference from what Triton would answer.
"""
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url = sys.argv[1]
admin = {"authorization": f"Bearer {sys.argv[2]}"} if len(sys.argv) > 2 else None
ca = os.environ.get("HERD_CA_CERT")
client = grpcclient.InferenceServerClient(url, ssl=bool(ca), root_certificates=ca)

assert client.is_server_live()
assert client.is_server_ready()
meta = client.get_server_metadata()
assert meta.name == "herd", meta

# Metadata straight from the ONNX file; -1 marks the dynamic batch dimension.
m = client.get_model_metadata("tiny_multi")
assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [
    ("a", "FP32", [-1, 4]),
    ("b", "INT64", [-1, 4]),
], m
assert [(t.name, t.datatype) for t in m.outputs] == [("sum", "FP32"), ("neg", "INT64")], m
assert client.is_model_ready("tiny_multi")

# Triton's model configuration: max_batch_size > 0 and dims without the batch dimension.
config = client.get_model_config("tiny_multi").config
assert config.max_batch_size == 8, config
assert list(config.input[0].dims) == [4], config

# Inference with raw tensors: sum = a + b, neg = -b.
a = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
b = np.arange(12, dtype=np.int64).reshape(3, 4) - 6
ia = grpcclient.InferInput("a", [3, 4], "FP32")
ia.set_data_from_numpy(a)
ib = grpcclient.InferInput("b", [3, 4], "INT64")
ib.set_data_from_numpy(b)
result = client.infer("tiny_multi", [ia, ib])
np.testing.assert_allclose(result.as_numpy("sum"), a + b)
np.testing.assert_array_equal(result.as_numpy("neg"), -b)

# Only the outputs asked for come back.
result = client.infer("tiny_multi", [ia, ib], outputs=[grpcclient.InferRequestedOutput("neg")])
assert result.as_numpy("sum") is None
np.testing.assert_array_equal(result.as_numpy("neg"), -b)

# Statistics count like Triton: items inferred and model runs.
stats = client.get_inference_statistics("tiny_multi").model_stats[0]
assert stats.name == "tiny_multi"
assert stats.inference_count == 6, stats
assert stats.execution_count == 2, stats
assert stats.inference_stats.success.count == 2, stats

# A bad request is refused with a message, and the server keeps serving.
bad = grpcclient.InferInput("a", [3, 5], "FP32")
bad.set_data_from_numpy(np.zeros((3, 5), np.float32))
try:
    client.infer("tiny_multi", [bad, ib])
    raise AssertionError("a wrong shape was accepted")
except InferenceServerException as e:
    assert e.status() == "StatusCode.INVALID_ARGUMENT", e.status()
    assert "has shape [3,5]" in e.message(), e.message()
try:
    client.infer("no_such_model", [ia])
    raise AssertionError("an unknown model was accepted")
except InferenceServerException as e:
    assert e.status() == "StatusCode.NOT_FOUND", e.status()

# The model repository extension: index, unload, load.
index = {m.name: m.state for m in client.get_model_repository_index().models}
assert index["tiny_multi"] == "READY", index
assert index["tiny_mlp"] == "UNAVAILABLE", index
client.unload_model("tiny_multi", headers=admin)
assert not client.is_model_ready("tiny_multi")
client.load_model("tiny_multi", headers=admin)
assert client.is_model_ready("tiny_multi")

# A model without a batch dimension is served as it is.
x = grpcclient.InferInput("x", [2, 4], "FP32")
x.set_data_from_numpy(np.ones((2, 4), np.float32))
assert client.infer("tiny_fixed", [x]).as_numpy("y").shape == (2, 3)
assert client.get_model_config("tiny_fixed").config.max_batch_size == 0

print("tritonclient: all checks passed")
