#!/usr/bin/env python3
"""Ray Serve peer for herd's benchmarks: one ONNX model behind a KServe v2 gRPC ingress.

Set up the way Immich's Ray Serve PR (immich-app/immich#2758) served its models: an
ingress deployment in front of a model deployment that holds one ONNX Runtime session,
with `@serve.batch` on the model deployment stacking concurrent requests along axis 0
into one ONNX Runtime run. The ingress here speaks KServe v2 / Triton gRPC through Ray
Serve's gRPC proxy, so that `herd bench --scheduler 127.0.0.1:PORT NAME` drives it.

    python serve_app.py --model PATH.onnx --name NAME --grpc-port PORT \
        [--threads N] [--max-batch 8] [--batch-wait 0.01] [--replicas 1]

Prints `ray serve ready on 127.0.0.1:PORT` once a ModelReady call through the proxy
answers, deletes the application on SIGUSR1 (the model unloaded, Ray and Serve still up),
and shuts Serve and Ray down on SIGTERM/SIGINT. The venv: setup.sh beside it.
"""

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# tritonclient's GRPCInferenceService servicer, by way of kserve_stubs (which see).
SERVICER = "kserve_stubs.add_GRPCInferenceServiceServicer_to_server"

# ONNX Runtime's type names → KServe v2 datatypes.
KSERVE_OF_ORT = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_OF_KSERVE = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}
# Where InferTensorContents keeps each datatype's values.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def kserve_of_numpy(dtype):
    if dtype == np.object_:
        return "BYTES"
    for name, t in NUMPY_OF_KSERVE.items():
        if t is not np.object_ and np.dtype(t) == dtype:
            return name
    raise ValueError(f"no KServe datatype for {dtype}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the .onnx file")
    p.add_argument("--name", required=True, help="the model's name in KServe calls")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument(
        "--http-port",
        type=int,
        default=0,
        help="Serve's HTTP proxy port (unused by the benchmark); 0 picks a free one",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--max-batch", type=int, default=8, help="@serve.batch max_batch_size")
    p.add_argument("--batch-wait", type=float, default=0.01, help="@serve.batch batch_wait_timeout_s")
    p.add_argument("--replicas", type=int, default=1, help="model deployment replicas")
    p.add_argument(
        "--max-ongoing",
        type=int,
        default=100,
        help="max_ongoing_requests of each deployment (Ray 2.5's default, which Immich's PR ran "
        "with; Ray 2.60's default of 5 would cap a batch at 5)",
    )
    p.add_argument("--num-cpus", type=int, default=0, help="Ray's logical CPUs (0: the machine's)")
    p.add_argument("--access-log", action="store_true", help="keep Serve's per-request access log")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    return p.parse_args(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(*parts):
    print("[serve_app]", *parts, file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    model_path = os.path.abspath(args.model)
    if not os.path.isfile(model_path):
        sys.exit(f"no such model file: {model_path}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's processes (Serve's proxy, the replicas) inherit it and import kserve_stubs.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = HERE + (os.pathsep + path if path else "")

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    # Defined here so that Ray pickles them by value with the flags' values in reach.
    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=args.max_ongoing)
    class OnnxModel:
        """Holds one ONNX Runtime session; concurrent calls run as one batch."""

        def __init__(self, path, threads, max_batch, batch_wait):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.inputs = self.session.get_inputs()
            self.outputs = self.session.get_outputs()
            self.output_names = [o.name for o in self.outputs]
            # Stack requests only when every input's first dimension is the batch.
            self.batchable = all(
                len(i.shape) > 0 and not isinstance(i.shape[0], int) for i in self.inputs
            )
            self.infer.set_max_batch_size(max_batch)
            self.infer.set_batch_wait_timeout_s(batch_wait)
            # ONNX Runtime runs off the event loop, so that requests keep queueing meanwhile.
            self.pool = ThreadPoolExecutor(1)
            self.executions = 0
            self.inferences = 0
            self.batch_sizes = {}

        def metadata(self):
            def tensors(ts):
                return [
                    {
                        "name": t.name,
                        "datatype": KSERVE_OF_ORT.get(t.type, t.type),
                        "shape": [d if isinstance(d, int) and d >= 0 else -1 for d in t.shape],
                    }
                    for t in ts
                ]

            return {"inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}

        def statistics(self):
            return {
                "executions": self.executions,
                "inferences": self.inferences,
                "batch_sizes": dict(self.batch_sizes),
            }

        def _run(self, feeds):
            return self.session.run(self.output_names, feeds)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def infer(self, items):
            """items: one {input name: array} per request; answers one {output: array} each."""
            loop = asyncio.get_running_loop()
            results = [None] * len(items)
            if self.batchable:
                groups = {}
                for i, item in enumerate(items):
                    key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(item.items()))
                    groups.setdefault(key, []).append(i)
                groups = list(groups.values())
            else:
                groups = [[i] for i in range(len(items))]
            for group in groups:
                if len(group) == 1:
                    feeds = items[group[0]]
                else:
                    feeds = {
                        n: np.concatenate([items[i][n] for i in group], axis=0) for n in items[group[0]]
                    }
                outs = await loop.run_in_executor(self.pool, self._run, feeds)
                rows = len(outs[0]) if self.batchable else 1
                self.executions += 1
                self.inferences += rows
                self.batch_sizes[rows] = self.batch_sizes.get(rows, 0) + 1
                if len(group) == 1:
                    results[group[0]] = dict(zip(self.output_names, outs))
                    continue
                first = next(iter(items[group[0]]))
                start = 0
                for i in group:
                    end = start + items[i][first].shape[0]
                    results[i] = {n: o[start:end] for n, o in zip(self.output_names, outs)}
                    start = end
            return results

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=args.max_ongoing)
    class KServeIngress:
        """The KServe v2 RPCs, each a method named as the RPC (Serve's gRPC proxy routes so)."""

        def __init__(self, model, name):
            import kserve_stubs  # noqa: F401  (so that requests unpickle here)

            self.model = model
            self.name = name
            self.meta = None

        async def _metadata(self):
            if self.meta is None:
                self.meta = await self.model.metadata.remote()
            return self.meta

        def _known(self, name, version, grpc_context):
            import grpc

            if name == self.name and version in ("", "1"):
                return True
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown model: '{name}' version '{version}'")
            return False

        async def ServerLive(self, request):
            from tritonclient.grpc import service_pb2

            return service_pb2.ServerLiveResponse(live=True)

        async def ServerReady(self, request):
            from tritonclient.grpc import service_pb2

            return service_pb2.ServerReadyResponse(ready=True)

        async def ServerMetadata(self, request):
            from tritonclient.grpc import service_pb2

            return service_pb2.ServerMetadataResponse(name="ray-serve", version=ray.__version__)

        async def ModelReady(self, request):
            from tritonclient.grpc import service_pb2

            ready = request.name == self.name and request.version in ("", "1")
            if ready:
                await self._metadata()
            return service_pb2.ModelReadyResponse(ready=ready)

        async def ModelMetadata(self, request, grpc_context):
            from tritonclient.grpc import service_pb2

            if not self._known(request.name, request.version, grpc_context):
                return service_pb2.ModelMetadataResponse()
            meta = await self._metadata()
            T = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=self.name,
                versions=["1"],
                platform="onnxruntime_onnx",
                inputs=[T(**t) for t in meta["inputs"]],
                outputs=[T(**t) for t in meta["outputs"]],
            )

        async def ModelConfig(self, request, grpc_context):
            from tritonclient.grpc import model_config_pb2, service_pb2

            if not self._known(request.name, request.version, grpc_context):
                return service_pb2.ModelConfigResponse()
            return service_pb2.ModelConfigResponse(
                config=model_config_pb2.ModelConfig(
                    name=self.name, platform="onnxruntime_onnx", backend="onnxruntime"
                )
            )

        async def ModelStatistics(self, request, grpc_context):
            """Counts of one replica of the model deployment (all of them with --replicas 1)."""
            from tritonclient.grpc import service_pb2

            if request.name and not self._known(request.name, request.version, grpc_context):
                return service_pb2.ModelStatisticsResponse()
            s = await self.model.statistics.remote()
            stats = service_pb2.ModelStatistics(
                name=self.name,
                version="1",
                inference_count=s["inferences"],
                execution_count=s["executions"],
            )
            for size, count in sorted(s["batch_sizes"].items()):
                stats.batch_stats.add(batch_size=size, compute_infer=service_pb2.StatisticDuration(count=count))
            return service_pb2.ModelStatisticsResponse(model_stats=[stats])

        async def ModelInfer(self, request, grpc_context):
            import grpc
            from tritonclient.grpc import service_pb2

            if not self._known(request.model_name, request.model_version, grpc_context):
                return service_pb2.ModelInferResponse()
            meta = await self._metadata()
            try:
                feeds = decode_inputs(request, meta["inputs"])
            except ValueError as e:
                grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                grpc_context.set_details(str(e))
                return service_pb2.ModelInferResponse()
            outs = await self.model.infer.remote(feeds)
            wanted = [o.name for o in request.outputs]
            response = service_pb2.ModelInferResponse(
                model_name=self.name, model_version="1", id=request.id
            )
            for name, array in outs.items():
                if wanted and name not in wanted:
                    continue
                out = response.outputs.add(name=name, datatype=kserve_of_numpy(array.dtype))
                out.shape.extend(array.shape)
                response.raw_output_contents.append(encode_raw(array))
            return response

    from ray.serve.schema import LoggingConfig

    http_port = args.http_port or free_port()
    # Serve logs each request in every replica by default: off unless --access-log.
    logging_config = LoggingConfig(enable_access_log=args.access_log, log_level="WARNING")
    stop = threading.Event()
    # SIGUSR1 unloads the model as a Serve user would (serve.delete: the application's
    # replicas go, Ray and Serve stay up), for the benchmark's memory after unload.
    unload = threading.Event()

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping")
        stop.set()

    def on_unload(_signum, _frame):
        unload.set()

    started = time.monotonic()
    try:
        # ray.init stops its processes itself on a SIGTERM while it starts them.
        ray.init(
            num_cpus=args.num_cpus or max(os.cpu_count() or 1, args.replicas),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGUSR1, on_unload)
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=http_port),
            grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=[SERVICER]),
            logging_config=logging_config,
        )
        model = OnnxModel.options(num_replicas=args.replicas).bind(
            model_path, args.threads, args.max_batch, args.batch_wait
        )
        # Serve's gRPC proxy finds an application only through its route (HTTP's, unused here).
        serve.run(
            KServeIngress.bind(model, args.name),
            name=args.name,
            route_prefix="/",
            logging_config=logging_config,
        )
        wait_ready(args.grpc_port, args.name, args.ready_timeout, stop)
        if not stop.is_set():
            print(f"ray serve ready on 127.0.0.1:{args.grpc_port}", flush=True)
            log(f"started in {time.monotonic() - started:.1f} s")
        while not stop.wait(0.5):
            if unload.is_set():
                unload.clear()
                serve.delete(args.name)
                log(f"application {args.name} deleted (unloaded)")
    finally:
        if ray.is_initialized():
            try:
                serve.shutdown()
            except Exception as e:  # Ray's own processes go all the same
                log(f"serve.shutdown: {e!r}")
            ray.shutdown()
        log("stopped")


def wait_ready(port, name, timeout, stop):
    """Until ModelReady through Serve's gRPC proxy answers true."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    deadline = time.monotonic() + timeout
    last = None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            try:
                if stub.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=5).ready:
                    return
                last = "not ready"
            except grpc.RpcError as e:
                last = f"{e.code()}: {e.details()}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {last}")
            time.sleep(0.1)


def decode_inputs(request, inputs_meta):
    """{name: array} of a ModelInferRequest, checked against the model's inputs."""
    expected = {t["name"]: t for t in inputs_meta}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ValueError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    feeds = {}
    for i, tensor in enumerate(request.inputs):
        meta = expected.get(tensor.name)
        if meta is None:
            raise ValueError(f"unexpected input '{tensor.name}'; the model's: {sorted(expected)}")
        if tensor.datatype != meta["datatype"]:
            raise ValueError(
                f"input '{tensor.name}': datatype {tensor.datatype}, the model wants {meta['datatype']}"
            )
        shape = tuple(int(d) for d in tensor.shape)
        want = meta["shape"]
        if len(shape) != len(want) or any(w != -1 and w != d for w, d in zip(want, shape)):
            raise ValueError(f"input '{tensor.name}': shape {list(shape)}, the model's {want}")
        dtype = NUMPY_OF_KSERVE[tensor.datatype]
        count = int(np.prod(shape))
        if raw:
            array = decode_raw(raw[i], tensor.datatype, count)
        else:
            values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
            array = np.array(list(values), dtype=dtype)
        if array.size != count:
            raise ValueError(f"input '{tensor.name}': {array.size} values for shape {list(shape)}")
        feeds[tensor.name] = array.reshape(shape)
    missing = set(expected) - set(feeds)
    if missing:
        raise ValueError(f"missing inputs: {sorted(missing)}")
    return feeds


def decode_raw(data, datatype, count):
    if datatype != "BYTES":
        dtype = np.dtype(NUMPY_OF_KSERVE[datatype])
        if len(data) != count * dtype.itemsize:
            raise ValueError(f"{len(data)} bytes of {datatype} for {count} values")
        return np.frombuffer(data, dtype=dtype)
    items, offset = [], 0
    while offset < len(data):
        n = int.from_bytes(data[offset : offset + 4], "little")
        items.append(bytes(data[offset + 4 : offset + 4 + n]))
        offset += 4 + n
    return np.array(items, dtype=np.object_)


def encode_raw(array):
    if array.dtype == np.object_:
        out = bytearray()
        for item in array.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            out += len(b).to_bytes(4, "little") + b
        return bytes(out)
    return np.ascontiguousarray(array).tobytes()


if __name__ == "__main__":
    main()
