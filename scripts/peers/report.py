"""The peer benchmark's report: report.md (tables) and two plots, from the files
scripts/bench-peers.sh wrote in DIR. Usage: report.py DIR"""
import collections
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = pathlib.Path(sys.argv[1])
steps = [json.loads(line) for line in open(out / "steps.jsonl")]
memory = [json.loads(line) for line in open(out / "memory.jsonl")]
peers = list(dict.fromkeys(s["peer"] for s in steps))
models = list(dict.fromkeys(s["model"] for s in steps))
raw = {(s["model"], s["batch"]): s for s in steps if s["peer"] == "onnxruntime"}
steps = [s for s in steps if s["peer"] != "onnxruntime"]
peers = [p for p in peers if p != "onnxruntime"]
closed = {(s["peer"], s["model"], s["concurrency"]): s for s in steps if s.get("rate") is None}
opened = collections.defaultdict(list)
for s in steps:
    if s.get("rate") is not None:
        opened[(s["peer"], s["model"])].append(s)


def ms(us):
    return f"{us / 1000:.1f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


lines = ["# herd beside Ray Serve and Triton", ""]
lines += ["## Closed loop", ""]
lines += [
    "| model | server | c=1 req/s | c=1 p50 / p99 ms | c=8 req/s | c=64 req/s | c=64 p50 / p99 ms "
    "| errors | server CPU ms per item (c=64) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for m in models:
    for p in peers:
        c1, c8, c64 = (closed.get((p, m, c)) for c in (1, 8, 64))
        if not c64:
            continue
        errors = sum(s["errors"] for s in (c1, c8, c64) if s)
        lines.append(
            f"| {m} | {p} | {c1['throughput_rps']:.0f} | {ms(c1['p50_us'])} / {ms(c1['p99_us'])} "
            f"| {c8['throughput_rps']:.0f} | {c64['throughput_rps']:.0f} "
            f"| {ms(c64['p50_us'])} / {ms(c64['p99_us'])} | {errors} | {c64['cpu_ms_per_item']:.2f} |"
        )
lines += ["", "## Raw ONNX Runtime in-process (the limit), and each server at concurrency 1 beside it", ""]
lines += ["| model | ONNX Runtime batch 1: req/s, p50 ms | batch 8: items/s | server | c=1 p50 − raw p50, ms | c=64 items/s ÷ raw batch-8 items/s |", "|---|---|---|---|---|---|"]
for m in models:
    r1, r8 = raw.get((m, 1)), raw.get((m, 8))
    if not r1:
        continue
    for p in peers:
        c1, c64 = closed.get((p, m, 1)), closed.get((p, m, 64))
        if not c1 or not c64:
            continue
        lines.append(
            f"| {m} | {r1['throughput_rps']:.0f}, {ms(r1['p50_us'])} | {r8['items_per_s']:.0f} | {p} "
            f"| {(c1['p50_us'] - r1['p50_us']) / 1000:+.2f} | {ratio(c64['items_per_s'], r8['items_per_s'])} |"
        )
lines += ["", "## herd's ratios at concurrency 64 (throughput; p99 as herd ÷ peer)", ""]
lines += ["| model | peer | herd-agent ÷ peer, req/s | p99 herd-agent ÷ peer | herd-cluster ÷ peer, req/s |", "|---|---|---|---|---|"]
for m in models:
    agent, cluster = closed.get(("herd-agent", m, 64)), closed.get(("herd-cluster", m, 64))
    for p in peers:
        if p.startswith("herd") or not closed.get((p, m, 64)):
            continue
        peer = closed[(p, m, 64)]
        lines.append(
            f"| {m} | {p} | {ratio(agent and agent['throughput_rps'], peer['throughput_rps'])} "
            f"| {ratio(agent and agent['p99_us'], peer['p99_us'])} "
            f"| {ratio(cluster and cluster['throughput_rps'], peer['throughput_rps'])} |"
        )
lines += ["", "## Memory over the server's process tree, PSS / RSS MiB", ""]
lines += ["| model | server | idle | loaded | peak | after unload |", "|---|---|---|---|---|---|"]


def mem(x):
    return "–" if not x else f"{x['pss_mib']:.0f} / {x['rss_mib']:.0f}"


for r in memory:
    lines.append(
        f"| {r['model']} | {r['peer']} | {mem(r['idle'])} | {mem(r['loaded'])} | {mem(r['peak'])} "
        f"| {mem(r['unloaded'])} |"
    )
lines += ["", "![throughput against p99](throughput_p99.png)", "", "![memory over time](memory.png)", ""]
(out / "report.md").write_text("\n".join(lines))


def per_model(path, draw, xlabel, ylabel):
    """One panel per model, `draw(ax, model)` filling each, saved as `path`."""
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        draw(ax, m)
        ax.set_title(m)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / path, dpi=110)


def throughput_p99(ax, m):
    """The open-loop sweep (a line) and the closed-loop steps (crosses) of each server."""
    for p in peers:
        pts = sorted((s["throughput_rps"], s["p99_us"] / 1000) for s in opened[(p, m)])
        color = ax.plot(*zip(*pts), marker="o", label=p)[0].get_color() if pts else None
        c = [s for s in (closed.get((p, m, k)) for k in (1, 8, 64)) if s]
        if c:
            ax.scatter(
                [s["throughput_rps"] for s in c],
                [s["p99_us"] / 1000 for s in c],
                marker="x",
                color=color,
            )


def memory_over_time(ax, m):
    """PSS of each server's whole process tree over its run."""
    for p in peers:
        path = out / f"mem-{p}-{m}.txt"
        if path.exists():
            rows = [line.split() for line in open(path)]
            ax.plot([float(r[0]) for r in rows], [float(r[2]) for r in rows], label=p)


per_model(
    "throughput_p99.png",
    throughput_p99,
    "requests/s (o: open loop, x: concurrency 1, 8, 64)",
    "p99 latency, ms",
)
per_model(
    "memory.png",
    memory_over_time,
    "seconds since the server was idle (load, sweep, unload)",
    "PSS of the process tree, MiB",
)
