"""Batch poisoning, measured from outside: 6 honest clients and 1 attacker call the
tiny_embed model (tests/models_extra: an embedding lookup over 100 rows, batching up to
32 with max_batch_delay 5ms) for DURATION seconds through `herd up` (the scheduler's
gateway, then its agent) and through the agent alone. The attacker's indices are 10^9,
which fail inside ONNX Runtime. Prints, per path, honest requests sent and failed, and
whether any honest caller's error quoted the attacker's input.

  .cache/venv/bin/python scripts/measure_poison.py target/release/herd [DURATION_S]
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tritonclient.grpc as g

herd = os.path.abspath(sys.argv[1])
duration = float(sys.argv[2]) if len(sys.argv) > 2 else 15
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HONEST, ROWS = 6, 100


def start(args, marker):
    proc = subprocess.Popen([herd, *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    for line in proc.stderr:
        m = re.search(r"addr=(\S+)", line)
        if marker in line and m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    sys.exit(f"herd {args[0]} did not start")


def infer(client, ids):
    x = g.InferInput("ids", [1, 4], "INT64")
    x.set_data_from_numpy(np.array([ids], dtype=np.int64))
    return client.infer("tiny_embed", [x], client_timeout=30)


def measure(addr, label):
    client = g.InferenceServerClient(addr)
    infer(client, [0, 1, 2, 3])  # loaded and its pace measured
    stop = time.monotonic() + duration
    sent, failed, quoted = [0] * HONEST, [0] * HONEST, [0]
    attacks = [0]

    def honest(c):
        n = 0
        while time.monotonic() < stop:
            ids = [(c * 31 + n * 7 + k) % ROWS for k in (0, 13, 29, 41)]
            n += 1
            sent[c] += 1
            try:
                infer(client, ids)
            except g.InferenceServerException as e:
                failed[c] += 1
                quoted[0] += "1000000000" in str(e)

    def attacker():
        while time.monotonic() < stop:
            attacks[0] += 1
            try:
                infer(client, [1_000_000_000] * 4)
            except g.InferenceServerException:
                pass

    threads = [threading.Thread(target=honest, args=(c,)) for c in range(HONEST)]
    threads.append(threading.Thread(target=attacker))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{label}: honest requests {sum(sent)}, failed {sum(failed)}; "
          f"attacks sent {attacks[0]}; honest errors quoting the attacker's input: {quoted[0]}")


repo, data = tempfile.mkdtemp(), tempfile.mkdtemp()
shutil.copytree(os.path.join(root, "tests", "models_extra", "tiny_embed"),
                os.path.join(repo, "tiny_embed"))
with open(os.path.join(repo, "tiny_embed", "herd.toml"), "w") as f:
    f.write('max_batch_size = 32\nmax_batch_delay = "5ms"\n')
up, addr = start(["up", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
                  "--model-repository", repo, "--data-dir", data], "serving addr=")
try:
    measure(addr, "through the scheduler (herd up)")
finally:
    up.kill()
    up.wait()
agent, addr = start(["agent", "--listen", "127.0.0.1:0", "--model-repository", repo,
                     "--data-dir", data], "serving addr=")
try:
    measure(addr, "agent alone")
finally:
    agent.kill()
    agent.wait()
shutil.rmtree(repo)
shutil.rmtree(data)
