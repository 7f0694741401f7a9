"""Load one model of a running agent (or gateway) and report what came back, bounded in
time. Closed loop: each of --concurrency callers sends its next request once it has an
answer (after --backoff when it was refused), every request with --timeout as its gRPC
deadline (0: none). With --pid, the summed RSS of that process and its children (an
agent and its model workers) is sampled every 20 ms and its peak reported (Linux /proc).

Usage:
  bench_overload.py HOST:PORT --model ocr_det --input x --shape 1,3,640,640 \
      --concurrency 40 --duration 20 --timeout 5 [--backoff 0] [--pid AGENT_PID]

Prints one JSON object: requests by status code, goodput (OK per second), latency
percentiles of the OK answers and of the refusals (RESOURCE_EXHAUSTED), and memory peaks
in MiB when --pid is given. Request bytes are built once and sent pre-serialized, so the
client spends little CPU of its own.
"""
import argparse
import json
import os
import threading
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_s(pid):
    """CPU seconds (user + system) a process has used."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0.0


def model_stats(addr, model):
    """Runs, items and compute seconds the server counts for the model (Triton's statistics)."""
    import tritonclient.grpc as g

    try:
        s = g.InferenceServerClient(addr).get_inference_statistics(model, as_json=True)
        m = s["model_stats"][0]
        compute = m.get("inference_stats", {}).get("compute_infer", {})
        return (
            int(m.get("execution_count", 0)),
            int(m.get("inference_count", 0)),
            int(compute.get("ns", 0)) / 1e9,
        )
    except Exception:  # a server without statistics (or without the model yet)
        return (0, 0, 0.0)


def children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return kids


class Sampler(threading.Thread):
    """Peak RSS of a process and of its children, together and apart."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.peak_agent = self.peak_workers = self.peak_total = 0

    def run(self):
        kids, listed = [], 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now - listed > 0.5:
                kids, listed = children(self.pid), now
            agent = rss_kib(self.pid)
            workers = sum(rss_kib(k) for k in kids)
            self.peak_agent = max(self.peak_agent, agent)
            self.peak_workers = max(self.peak_workers, workers)
            self.peak_total = max(self.peak_total, agent + workers)
            time.sleep(0.02)


def request_bytes(model, name, shape, datatype):
    n = int(np.prod(shape))
    data = np.random.default_rng(1).random(n, dtype=np.float32).tobytes()
    req = service_pb2.ModelInferRequest(model_name=model)
    t = req.inputs.add()
    t.name, t.datatype = name, datatype
    t.shape.extend(shape)
    req.raw_input_contents.append(data)
    return req.SerializeToString()


def percentiles(values):
    if not values:
        return None
    v = np.array(values) * 1000.0
    return {p: round(float(np.percentile(v, q)), 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("--model", default="ocr_det")
    ap.add_argument("--input", default="x")
    ap.add_argument("--datatype", default="FP32")
    ap.add_argument("--shape", default="1,3,640,640")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--backoff", type=float, default=0.0)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--channels", type=int, default=8)
    args = ap.parse_args()

    shape = [int(s) for s in args.shape.split(",")]
    body = request_bytes(args.model, args.input, shape, args.datatype)
    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channels = [grpc.insecure_channel(args.addr, options=opts) for _ in range(args.channels)]
    calls = [
        c.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for c in channels
    ]
    lock = threading.Lock()
    codes, ok_lat, refused_lat = {}, [], []
    sampler = Sampler(args.pid) if args.pid else None
    # Load the model first, so that the window measures serving only; a request the
    # server refuses outright is reported, and the load runs all the same.
    warm_up = "OK"
    try:
        calls[0](body, timeout=120)
    except grpc.RpcError as e:
        warm_up = f"{e.code().name}: {e.details()}"
    before = model_stats(args.addr, args.model)
    procs = [args.pid] + children(args.pid) if args.pid else []
    cpu_before = [cpu_s(p) for p in procs] + [cpu_s(os.getpid())]
    if sampler:
        sampler.start()
    start = time.monotonic()
    end = start + args.duration

    def caller(i):
        call = calls[i % len(calls)]
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                call(body, timeout=args.timeout or None)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            took = time.monotonic() - t0
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == "OK" and t0 + took <= end:
                    ok_lat.append(took)
                elif code == "RESOURCE_EXHAUSTED":
                    refused_lat.append(took)
            if code != "OK" and args.backoff:
                time.sleep(args.backoff)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    # Callers still waiting at the end may take up to --timeout more; do not wait past it.
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()) + (args.timeout or 60) + 5)
    elapsed = time.monotonic() - start
    cpu_after = [cpu_s(p) for p in procs] + [cpu_s(os.getpid())]
    cpu = [a - b for a, b in zip(cpu_after, cpu_before)]
    after = model_stats(args.addr, args.model)
    runs, items, compute = (a - b for a, b in zip(after, before))
    if sampler:
        sampler.stop.set()
        sampler.join()
    report = {
        "model": args.model,
        "shape": shape,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout,
        "backoff_s": args.backoff,
        "duration_s": args.duration,
        "codes": codes,
        # OK answers completed within the measured window, per second of it.
        "goodput_per_s": round(len(ok_lat) / args.duration, 2),
        "ok_ms": percentiles(ok_lat),
        "refused_ms": percentiles(refused_lat),
        "elapsed_s": round(elapsed, 1),
        "warm_up": warm_up,
        # What the model did meanwhile (answered in time or not): runs, items, compute.
        "runs": {
            "runs": runs,
            "items": items,
            "mean_batch": round(items / runs, 1) if runs else 0,
            "compute_ms_per_item": round(1000 * compute / items, 1) if items else 0,
        },
        # CPU seconds over the window: the agent, its workers, this client.
        "cpu_s": {
            "agent": round(cpu[0], 1) if procs else None,
            "workers": round(sum(cpu[1:-1]), 1) if procs else None,
            "client": round(cpu[-1], 1),
        },
    }
    if sampler:
        report["peak_mib"] = {
            "agent": sampler.peak_agent // 1024,
            "workers": sampler.peak_workers // 1024,
            "total": sampler.peak_total // 1024,
        }
    print(json.dumps(report))
    os._exit(0)


if __name__ == "__main__":
    main()
