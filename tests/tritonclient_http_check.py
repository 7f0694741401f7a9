"""The outside check that herd speaks Triton's HTTP/REST protocol (KServe v2 with the
binary tensor data extension): the stock tritonclient.http against a running server
(an agent with --http, or a scheduler's --http port).
Usage: python tritonclient_http_check.py HOST:PORT [TOKEN]
A scheduler needs the cluster TOKEN for model load and unload. With HERD_CA_CERT set
(a CA certificate file, the scheduler's DATA_DIR/ca.pem), over TLS verified with it.

Uses the tiny test models (tests/models). Exits non-zero, with the failed assertion,
on any difference from what Triton would answer.
"""
import os
import ssl
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url = sys.argv[1]
admin = {"authorization": f"Bearer {sys.argv[2]}"} if len(sys.argv) > 2 else None
ca = os.environ.get("HERD_CA_CERT")
if ca:
    client = httpclient.InferenceServerClient(
        url, ssl=True, ssl_context_factory=lambda: ssl.create_default_context(cafile=ca)
    )
else:
    client = httpclient.InferenceServerClient(url)


def refused(call, status, message):
    """Runs call, which must fail with this HTTP status and a message containing this."""
    try:
        call()
    except InferenceServerException as e:
        assert e.status() == status, (e.status(), e.message())
        assert message in e.message(), e.message()
        return
    raise AssertionError(f"accepted; expected {status} {message!r}")


assert client.is_server_live()
assert client.is_server_ready()
meta = client.get_server_metadata()
assert meta["name"] == "herd", meta
assert "binary_tensor_data" in meta["extensions"], meta

# Metadata straight from the ONNX file; -1 marks the dynamic batch dimension.
m = client.get_model_metadata("tiny_multi")
assert [(t["name"], t["datatype"], t["shape"]) for t in m["inputs"]] == [
    ("a", "FP32", [-1, 4]),
    ("b", "INT64", [-1, 4]),
], m
assert [(t["name"], t["datatype"]) for t in m["outputs"]] == [("sum", "FP32"), ("neg", "INT64")], m
assert client.is_model_ready("tiny_multi")
assert client.is_model_ready("tiny_multi", model_version="1")

# Triton's model configuration: max_batch_size > 0 and dims without the batch dimension.
config = client.get_model_config("tiny_multi")
assert config["max_batch_size"] == 8, config
assert config["input"][0]["dims"] == [4], config
assert config["input"][0]["data_type"] == "TYPE_FP32", config

a = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
b = np.arange(12, dtype=np.int64).reshape(3, 4) - 6


def inputs(binary):
    ia = httpclient.InferInput("a", [3, 4], "FP32")
    ia.set_data_from_numpy(a, binary_data=binary)
    ib = httpclient.InferInput("b", [3, 4], "INT64")
    ib.set_data_from_numpy(b, binary_data=binary)
    return [ia, ib]


# Binary inputs and outputs (tritonclient's default), JSON both ways, and mixed.
for binary_in, binary_out in [(True, True), (False, False), (True, False), (False, True)]:
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("sum", "neg")]
    result = client.infer("tiny_multi", inputs(binary_in), outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("neg"), -b)
    assert result.as_numpy("neg").dtype == np.int64
    sent = {o["name"]: o for o in result.get_response()["outputs"]}
    assert ("data" in sent["sum"]) != binary_out, sent
# No outputs named: all come back, as binary (tritonclient asks binary_data_output).
result = client.infer("tiny_multi", inputs(True), request_id="r-1")
np.testing.assert_array_equal(result.as_numpy("neg"), -b)
assert result.get_response()["id"] == "r-1", result.get_response()
assert result.get_response()["model_version"] == "1", result.get_response()

# Only the outputs asked for come back.
result = client.infer("tiny_multi", inputs(True), outputs=[httpclient.InferRequestedOutput("neg")])
assert result.as_numpy("sum") is None
np.testing.assert_array_equal(result.as_numpy("neg"), -b)

# A deadline in the request (microseconds) long enough changes nothing.
result = client.infer("tiny_multi", inputs(True), timeout=10_000_000)
np.testing.assert_array_equal(result.as_numpy("neg"), -b)

# Statistics count like Triton: items inferred and model runs.
stats = client.get_inference_statistics("tiny_multi")["model_stats"][0]
assert stats["name"] == "tiny_multi"
assert stats["inference_count"] == 7 * 3, stats
assert stats["execution_count"] == 7, stats
assert stats["inference_stats"]["success"]["count"] == 7, stats
assert any(s["name"] == "tiny_multi" for s in client.get_inference_statistics()["model_stats"])

# Bad requests are refused with gRPC's message and the right status; the server keeps serving.
bad = httpclient.InferInput("a", [3, 5], "FP32")
bad.set_data_from_numpy(np.zeros((3, 5), np.float32))
refused(lambda: client.infer("tiny_multi", [bad, inputs(True)[1]]), "400", "has shape [3,5]")
wrong_type = httpclient.InferInput("a", [3, 4], "FP64")
wrong_type.set_data_from_numpy(a.astype(np.float64))
refused(lambda: client.infer("tiny_multi", [wrong_type, inputs(True)[1]]), "400", "must be FP32, got FP64")
refused(lambda: client.infer("no_such_model", inputs(True)), "404", "no_such_model")
unknown = httpclient.InferInput("c", [3, 4], "FP32")
unknown.set_data_from_numpy(a)
refused(lambda: client.infer("tiny_multi", [unknown, inputs(True)[1]]), "400", "no input named 'c'")
refused(lambda: client.get_model_metadata("no_such_model"), "404", "no_such_model")

# The model repository extension: index, unload, load.
index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
assert index["tiny_multi"] == "READY", index
assert index["tiny_mlp"] == "UNAVAILABLE", index
client.unload_model("tiny_multi", headers=admin)
assert not client.is_model_ready("tiny_multi")
client.load_model("tiny_multi", headers=admin)
assert client.is_model_ready("tiny_multi")

# A model without a batch dimension is served as it is.
x = httpclient.InferInput("x", [2, 4], "FP32")
x.set_data_from_numpy(np.ones((2, 4), np.float32))
assert client.infer("tiny_fixed", [x]).as_numpy("y").shape == (2, 3)
assert client.get_model_config("tiny_fixed")["max_batch_size"] == 0

print("tritonclient.http: all checks passed")
