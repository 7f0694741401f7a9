"""Writes the tiny ONNX models herd's tests use into tests/models (Triton's layout), and
models that only some tests want into tests/models_extra (many tests list tests/models
and must not see them).

Run once by hand when a model must change (needs `pip install onnx numpy`); the outputs
are committed, so the test suite does not need the onnx package.

  tiny_mlp    x FP32 [N,16] -> Gemm(16x32) -> Relu -> Gemm(32x8) -> y FP32 [N,8]; N dynamic
  tiny_fixed  x FP32 [2,4] -> MatMul(4x3) -> y FP32 [2,3]; no dynamic dimension, served unbatched
  tiny_multi  a FP32 [N,4], b INT64 [N,4] -> sum FP32 [N,4] = a + cast(b), neg INT64 [N,4] = -b

  models_extra/tiny_embed  ids INT64 [N,4] -> Gather(table 100x8) -> ReduceMean over the 4
              -> y FP32 [N,8]; an index outside [-100, 99] fails inside ONNX Runtime
              though the shape is valid (the poisoning tests)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "models")
EXTRA = os.path.join(os.path.dirname(__file__), "..", "tests", "models_extra")
rng = np.random.default_rng(7)


def save(name, graph, settings=None, out=OUT):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    d = os.path.join(out, name, "1")
    os.makedirs(d, exist_ok=True)
    onnx.save(model, os.path.join(d, "model.onnx"))
    if settings:
        with open(os.path.join(out, name, "herd.toml"), "w") as f:
            f.write(settings)


def weights(name, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


save(
    "tiny_mlp",
    helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
        ],
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [weights("w1", 16, 32), weights("b1", 32), weights("w2", 32, 8), weights("b2", 8)],
    ),
)

save(
    "tiny_fixed",
    helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny_fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [weights("w", 4, 3)],
    ),
)

save(
    "tiny_multi",
    helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["sum"]),
            helper.make_node("Neg", ["b"], ["neg"]),
        ],
        "tiny_multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("neg", TensorProto.INT64, ["N", 4]),
        ],
    ),
    "max_batch_size = 8\n",
)
# Last, so that the random weights of the models above stay as they were.
save(
    "tiny_embed",
    helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], axis=0, name="gather"),
            helper.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0),
        ],
        "tiny_embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [weights("table", 100, 8)],
    ),
    out=EXTRA,
)
print("wrote", os.path.abspath(OUT), "and", os.path.abspath(EXTRA), file=sys.stderr)
