#!/usr/bin/env python3
"""Triton peer for herd's benchmarks: one ONNX model behind PyTriton.

Triton's server (the binary inside the nvidia-pytriton wheel) takes KServe v2 gRPC/HTTP
requests and runs its dynamic batcher; each batch goes through PyTriton's proxy backend
(a python_backend stub process, shared memory + ZeroMQ) to the inference function in this
process, which runs an ONNX Runtime session on it. That hop is part of what is measured.

    server.py --model PATH.onnx --name NAME --grpc-port PORT --http-port PORT2 \
              --threads N --max-batch 8 --queue-delay-us 10000

Prints `pytriton ready on 127.0.0.1:PORT` on stdout once the model answers; stops on
SIGTERM/SIGINT, taking tritonserver and its stub processes down with it.
"""

import argparse
import logging
import os
import signal
import sys
import sysconfig
import threading
import time

T0 = time.monotonic()


def libpython_first() -> None:
    """Puts this interpreter's libpython directory first on LD_LIBRARY_PATH.

    PyTriton's backend stub (started by tritonserver, which inherits our environment) links
    libpython3.X.so.1.0 dynamically; without this it may load another build of the same
    minor version from the system's library path (Debian's, next to a pyenv Python) and
    mismatch the interpreter whose venv it runs.
    """
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if paths[:1] != [libdir]:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + [p for p in paths if p != libdir])


# ONNX tensor element types -> numpy.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "bytes_",
}


def dim(d) -> int:
    """An ONNX dimension as Triton wants it: a fixed size, or -1 for a symbolic/unknown one."""
    return d if isinstance(d, int) and d >= 0 else -1


def tree_pids(root: int) -> set:
    """PIDs of root's descendants (not root itself), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the .onnx file")
    ap.add_argument("--name", required=True, help="model name to serve it under")
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--address", default="127.0.0.1", help="address Triton binds gRPC and HTTP to")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size (0: no batching)")
    ap.add_argument("--queue-delay-us", type=int, default=10000, help="dynamic batcher max queue delay")
    ap.add_argument("--verbose", action="store_true", help="PyTriton INFO logs and Triton's log on stderr")
    args = ap.parse_args()

    libpython_first()
    # PyTriton echoes tritonserver's log with print(): send that to stderr, so that stdout
    # carries only the ready line.
    ready_out, sys.stdout = sys.stdout, sys.stderr
    # PyTriton's workspace (a copy of tritonserver and the model store, removed on stop):
    # under the repo's cache rather than ~/.cache/pytriton, unless PYTRITON_HOME says otherwise.
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    cache = os.environ.get("HERD_CACHE") or os.path.join(repo, ".cache")
    os.environ.setdefault("PYTRITON_HOME", os.path.join(cache, "peers", "pytriton", "home"))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )

    # SIGTERM and SIGINT both end serving; set before Triton starts so neither is missed.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    opts = ort.SessionOptions()
    if args.threads > 0:
        opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])

    batching = args.max_batch > 0
    ins, outs = session.get_inputs(), session.get_outputs()

    def tensors(nodes):
        out = []
        for n in nodes:
            shape = [dim(d) for d in n.shape]
            if batching:
                if not shape or shape[0] != -1:
                    sys.exit(f"{n.name}: shape {n.shape} has no dynamic batch dimension; use --max-batch 0")
                shape = shape[1:]
            out.append(Tensor(name=n.name, dtype=np.dtype(ORT_DTYPES[n.type]), shape=tuple(shape)))
        return out

    input_names = [n.name for n in ins]
    output_names = [n.name for n in outs]

    def run(**inputs):
        results = session.run(output_names, {name: inputs[name] for name in input_names})
        return dict(zip(output_names, results))

    infer = batch(run) if batching else (lambda requests: [run(**r) for r in requests])

    config = TritonConfig(
        grpc_address=args.address,
        grpc_port=args.grpc_port,
        http_address=args.address,
        http_port=args.http_port,
        allow_metrics=False,
        log_verbose=1 if args.verbose else 0,
    )
    triton = Triton(config=config)
    triton.bind(
        model_name=args.name,
        infer_func=infer,
        inputs=tensors(ins),
        outputs=tensors(outs),
        config=ModelConfig(
            batching=batching,
            max_batch_size=max(args.max_batch, 0),
            batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
        ),
        strict=False,
    )

    # The tritonserver process, once PyTriton has started it (private attributes of the
    # pinned PyTriton 0.7.0).
    def triton_cmd():
        return getattr(getattr(triton, "_triton_server", None), "_tritonserver_running_cmd", None)

    def triton_tree():
        """tritonserver and its descendants (the stub, the stub's helper processes)."""
        pid = getattr(triton_cmd(), "pid", None)
        return ({pid} | tree_pids(pid)) if pid else set()

    def reap(pids):
        """Waits up to 5 s for pids to end, then SIGKILLs the rest."""
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p for p in pids if alive(p))
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if left:
            print(f"pytriton: killed leftover processes {left}", file=sys.stderr, flush=True)

    # triton.run() starts tritonserver, loads the model and waits until it answers. It runs in
    # a thread so that a signal, or tritonserver exiting (a port in use, a bad model), ends
    # the wait at once instead of after PyTriton's 120 s startup timeout.
    # The thread stays until the end: PyTriton starts tritonserver with
    # PR_SET_PDEATHSIG=SIGTERM, which fires when the *thread* that forked it exits.
    started, finished, failed = threading.Event(), threading.Event(), []

    def start():
        try:
            triton.run()
        except BaseException as e:  # noqa: BLE001
            failed.append(e)
        started.set()
        finished.wait()

    threading.Thread(target=start, name="pytriton-start", daemon=True).start()
    reason = None
    while not started.wait(0.1):
        cmd = triton_cmd()
        if stop.is_set():
            reason = "stopped by a signal during startup"
            break
        if cmd is not None and not cmd.is_alive():
            reason = "tritonserver exited during startup (see its log above)"
            break
    if reason is None and failed:
        reason = f"{type(failed[0]).__name__}: {failed[0]}"
    if reason is None:
        # PyTriton only warns when the model is not ready after run(); ask over gRPC, the
        # way clients will come, before saying ready.
        import tritonclient.grpc as grpcclient

        host = "127.0.0.1" if args.address in ("0.0.0.0", "") else args.address
        client = grpcclient.InferenceServerClient(f"{host}:{args.grpc_port}")
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.is_model_ready(args.name):
                    break
            except Exception:  # noqa: BLE001
                pass
            cmd = triton_cmd()
            if stop.is_set():
                reason = "stopped by a signal during startup"
            elif cmd is None or not cmd.is_alive():
                reason = "tritonserver exited during startup (see its log above)"
            elif time.monotonic() > deadline:
                reason = f"model {args.name} not ready after 120 s"
            if reason:
                break
            time.sleep(0.05)
        client.close()
    if reason is not None:
        # Triton.stop() would wait on the lock that the startup thread holds: stop the server
        # and clean the workspace directly, then leave without running atexit's Triton.stop().
        pids = triton_tree()
        server = getattr(triton, "_triton_server", None)
        try:
            if server is not None:
                server.stop()
        except Exception:  # noqa: BLE001
            pass
        reap(pids)
        try:
            triton._workspace.clean()
        except Exception:  # noqa: BLE001
            pass
        print(f"pytriton: not started: {reason}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(0 if stop.is_set() else 1)

    code = 0
    pids = triton_tree()
    print(f"pytriton ready on {args.address}:{args.grpc_port}", file=ready_out, flush=True)
    print(f"pytriton: ready after {time.monotonic() - T0:.2f}s", file=sys.stderr, flush=True)
    try:
        while not stop.wait(1.0):
            if not triton.is_alive():
                print("pytriton: tritonserver or the model's proxy died", file=sys.stderr, flush=True)
                code = 1
                break
            pids |= triton_tree()
    finally:
        pids |= triton_tree()
        t_stop = time.monotonic()
        triton.stop()  # SIGINT to tritonserver, which unloads the model and ends its stub
        reap(pids)
        finished.set()
        print(f"pytriton: stopped in {time.monotonic() - t_stop:.2f}s", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
