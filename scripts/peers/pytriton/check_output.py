#!/usr/bin/env python3
"""Sends one random request to a served model over KServe v2 gRPC and compares each output
with ONNX Runtime run in-process on the same input. Exits 1 on a mismatch.

    check_output.py --model PATH.onnx --name NAME --grpc 127.0.0.1:PORT [--batch 2] [--shape x=1,3,48,320]

Runs in the peer's venv (it has tritonclient[grpc] and onnxruntime).
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--name", required=True)
ap.add_argument("--grpc", required=True, help="HOST:PORT")
ap.add_argument("--batch", type=int, default=2)
ap.add_argument("--shape", action="append", default=[], help="NAME=D0,D1,... for dynamic dims")
ap.add_argument("--rtol", type=float, default=1e-4)
ap.add_argument("--atol", type=float, default=1e-5)
args = ap.parse_args()

shapes = {k: [int(x) for x in v.split(",")] for k, v in (s.split("=", 1) for s in args.shape)}
session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
DT = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}

feed = {}
for i in session.get_inputs():
    shape = shapes.get(i.name) or [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
    shape = [args.batch] + list(shape[1:])
    dt = DT[i.type]
    if np.issubdtype(dt, np.integer):
        feed[i.name] = rng.integers(0, 256, size=shape, dtype=dt)
    else:
        feed[i.name] = rng.standard_normal(shape).astype(dt)

want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))

client = grpcclient.InferenceServerClient(args.grpc)
inputs = []
for name, arr in feed.items():
    t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    inputs.append(t)
res = client.infer(args.name, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in want])

ok = True
for name, w in want.items():
    got = res.as_numpy(name)
    same = got is not None and got.shape == w.shape and got.dtype == w.dtype and np.allclose(got, w, rtol=args.rtol, atol=args.atol)
    diff = float(np.max(np.abs(got.astype(np.float64) - w))) if got is not None and got.shape == w.shape else float("nan")
    print(f"{name}: server {None if got is None else (got.dtype, got.shape)} ort {(w.dtype, w.shape)} max|diff| {diff:.3g} {'OK' if same else 'MISMATCH'}")
    ok &= bool(same)
sys.exit(0 if ok else 1)
