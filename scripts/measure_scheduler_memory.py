"""Sends 4 concurrent ~200 MB inference messages, without a token, to a `herd scheduler`
(no agents), then reports the scheduler's peak RSS (VmHWM) and what each caller got.
Run once at the default --max-message-size and once per extra limit given.

  .cache/venv/bin/python scripts/measure_scheduler_memory.py target/release/herd [LIMIT ...]
  e.g. ... target/release/herd 16MiB
"""
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile

import grpc

MESSAGE = 200 * 1000 * 1000
CONCURRENCY = 4


def infer_request(size):
    # ModelInferRequest{model_name: "x" (field 1), raw_input_contents: [size bytes] (field 7)}
    varint, n = b"", size
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x0a\x01x" + b"\x3a" + varint + bytes(size)


def peak_rss_mib(pid):
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def measure(herd, limit):
    data, repo = tempfile.mkdtemp(), tempfile.mkdtemp()
    args = [herd, "scheduler", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--model-repository", repo, "--data-dir", data]
    if limit:
        args += ["--max-message-size", limit]
    sched = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "NO_COLOR": "1"})
    addr = None
    for line in sched.stderr:
        m = re.search(r"grpc=(\S+)|addr=(\S+)", line)
        if "serving" in line and m:
            addr = m.group(1) or m.group(2)
            break
    if addr is None:
        sys.exit("the scheduler did not say where it serves")
    before = peak_rss_mib(sched.pid)
    payload = infer_request(MESSAGE)
    channel = grpc.insecure_channel(addr, options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    def send(_):
        try:
            call(payload, timeout=60)
            return "OK"
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()[:90]}"

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        answers = list(pool.map(send, range(CONCURRENCY)))
    peak = peak_rss_mib(sched.pid)
    sched.kill()
    sched.wait()
    shutil.rmtree(data)
    shutil.rmtree(repo)
    print(f"--max-message-size {limit or 'default'}: scheduler peak RSS {peak:.0f} MiB "
          f"(at start {before:.0f} MiB) after {CONCURRENCY} concurrent {MESSAGE // 10**6} MB "
          f"messages; answers: {sorted(set(answers))}")


herd = os.path.abspath(sys.argv[1])
for limit in [None] + sys.argv[2:]:
    measure(herd, limit)
