"""Agent memory through a load/unload cycle, read from /proc (Linux).

Usage: bench_memory.py HOST:PORT AGENT_PID. Prints one JSON object with the RSS of the
agent process (and its anonymous part) and the summed RSS of its model workers at each
point, in KiB:
  idle          the agent started, no model loaded yet
  loaded        magika and the OCR det/rec/cls models loaded and exercised
  unloaded      right after RepositoryModelUnload of all four
  loaded_2 / unloaded_2   the same cycle again (steady state)
"""
import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient

addr, pid = sys.argv[1], int(sys.argv[2])

MODELS = {  # name: (input, datatype, shape)
    "magika": ("bytes", "INT32", [8, 2048]),
    "ocr_det": ("x", "FP32", [1, 3, 640, 640]),
    "ocr_rec": ("x", "FP32", [8, 3, 48, 320]),
    "ocr_cls": ("x", "FP32", [8, 3, 48, 192]),
}


def status_kib(p, key="VmRSS:"):
    try:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def children(p):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == p:
                        kids.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return kids


def reading():
    kids = children(pid)
    return {
        "agent_kib": status_kib(pid),
        # Anonymous memory: heap and stacks, without the executable's and libraries'
        # pages, which are shared and which the kernel can drop and read back.
        "agent_anon_kib": status_kib(pid, "RssAnon:"),
        "workers_kib": sum(map(status_kib, kids)),
        "workers": len(kids),
    }


client = grpcclient.InferenceServerClient(addr)
rng = np.random.default_rng(1)
result = {"idle": reading()}
for cycle in ["", "_2"]:
    for name, (input_name, datatype, shape) in MODELS.items():
        x = grpcclient.InferInput(input_name, shape, datatype)
        data = rng.integers(0, 256, shape) if datatype == "INT32" else rng.random(shape)
        x.set_data_from_numpy(data.astype(np.int32 if datatype == "INT32" else np.float32))
        for _ in range(5):
            client.infer(name, [x])
    result["loaded" + cycle] = reading()
    for name in MODELS:
        client.unload_model(name)
    result["unloaded" + cycle] = reading()
print(json.dumps(result))
