"""Holds 1,100 idle TCP connections against a `herd agent` started under `ulimit -n 1024`,
measures the agent's CPU while they are held, then runs one real inference through it.

  .cache/venv/bin/python scripts/measure_idle_connections.py target/release/herd
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import shutil

herd = os.path.abspath(sys.argv[1])
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
repo = tempfile.mkdtemp()
shutil.copytree(os.path.join(root, "tests", "models"), repo, dirs_exist_ok=True)
agent = subprocess.Popen(
    ["sh", "-c", f"ulimit -n 1024 && exec {herd} agent --listen 127.0.0.1:0 --model-repository {repo}"],
    stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"},
)
addr = None
for line in agent.stderr:
    m = re.search(r"addr=(\S+)", line)
    if "agent serving" in line and m:
        addr = m.group(1)
        break
host, port = addr.rsplit(":", 1)
held, failed = [], 0
for _ in range(1100):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, int(port)))
        held.append(s)
    except OSError:
        failed += 1


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


c0, t0 = cpu_seconds(agent.pid), time.time()
time.sleep(10)
c1, t1 = cpu_seconds(agent.pid), time.time()
row = "[" + ",".join(str(i) for i in range(16)) + "]"
infer = subprocess.run(
    [herd, "infer", "--scheduler", addr, "--timeout", "30s", "tiny_mlp", "-i", f"x=[{row}]"],
    capture_output=True, text=True, timeout=60,
)
print(f"idle connections opened: {len(held)} (refused {failed}); "
      f"agent CPU while held: {100 * (c1 - c0) / (t1 - t0):.1f}% of a core; "
      f"a real inference: {'ok' if infer.returncode == 0 else 'FAILED: ' + infer.stderr.strip()}")
agent.kill()
shutil.rmtree(repo)
