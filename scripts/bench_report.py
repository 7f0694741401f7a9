"""Turns scripts/bench.sh's raw figures into the markdown of BENCHMARKS.md.

Usage: bench_report.py steps.jsonl memory.json scheduler_memory.json placement.txt
"""
import json
import sys

steps = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
memory = json.load(open(sys.argv[2]))


def local(model):
    return [s for s in steps if s["model"] == model and s["target"].startswith("local:")]


def served(model):
    return [s for s in steps if s["model"] == model and not s["target"].startswith(("local:", "cluster:", "agent1t:"))]


def agent1t(model):
    return [s for s in steps if s["model"] == model and s["target"].startswith("agent1t:")]


def cluster(model):
    return [s for s in steps if s["model"] == model and s["target"].startswith("cluster:")]


def ms(us):
    return f"{us / 1000:.3f}"


print("### Raw ONNX Runtime in-process (the limit)\n")
print("| model | batch | items/s | p50 ms per run | p99 ms per run |")  # one session, runs back to back
print("|---|---:|---:|---:|---:|")
for model in ["magika", "tiny_mlp"]:
    for s in local(model):
        print(f"| {model} | {s['batch']} | {s['items_per_s']:.0f} | {ms(s['p50_us'])} | {ms(s['p99_us'])} |")

print("\n### herd agent over gRPC (client on the same machine)\n")
print("| model | concurrency | requests/s | × raw limit | p50 ms | p99 ms | mean batch on server | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for model, raw_model in [("magika", "magika"), ("tiny_mlp", "tiny_mlp"), ("tiny_mlp_b1", "tiny_mlp")]:
    limit = max(s["items_per_s"] for s in local(raw_model))
    for s in served(model):
        batch = s["server_mean_batch"]
        # Against a model that runs in microseconds the ratio says nothing: gRPC is the cost.
        ratio = f"{s['items_per_s'] / limit:.2f}" if model == "magika" else "—"
        print(
            f"| {model} | {s['concurrency']} | {s['throughput_rps']:.0f} | {ratio} "
            f"| {ms(s['p50_us'])} | {ms(s['p99_us'])} | {batch if batch is None else f'{batch:.1f}'} | {s['errors']} |"
        )

print("\n### Goals\n")
raw_magika = max(s["items_per_s"] for s in local("magika"))
magika = {s["concurrency"]: s for s in served("magika")}
raw_b1 = next(s for s in local("magika") if s["batch"] == 1)
tiny = {s["concurrency"]: s for s in served("tiny_mlp")}
tiny_b1 = {s["concurrency"]: s for s in served("tiny_mlp_b1")}
added = (magika[1]["p50_us"] - raw_b1["p50_us"]) / 1000
print(f"- magika at concurrency 64: {magika[64]['items_per_s']:.0f} items/s = "
      f"{magika[64]['items_per_s'] / raw_magika:.2f}× the raw limit ({raw_magika:.0f} items/s); goal ≥ 0.9×")
print(f"- tiny_mlp at concurrency 64, adaptive batching vs max_batch_size = 1: "
      f"{tiny[64]['throughput_rps']:.0f} vs {tiny_b1[64]['throughput_rps']:.0f} requests/s = "
      f"{tiny[64]['throughput_rps'] / tiny_b1[64]['throughput_rps']:.1f}×; goal ≥ 5×")
print(f"- magika at concurrency 1, p50 added over raw ONNX Runtime at batch 1: "
      f"{ms(magika[1]['p50_us'])} − {ms(raw_b1['p50_us'])} = {added:.2f} ms; goal ≤ 0.3 ms")

print("\n### Memory (VmRSS, MiB)\n")
print("| point | agent RSS | of which anonymous | model workers (count) | agent + workers |")
print("|---|---:|---:|---:|---:|")
for point in ["idle", "loaded", "unloaded", "loaded_2", "unloaded_2"]:
    m = memory[point]
    print(f"| {point} | {m['agent_kib'] / 1024:.1f} | {m['agent_anon_kib'] / 1024:.1f} "
          f"| {m['workers_kib'] / 1024:.1f} ({m['workers']}) | {(m['agent_kib'] + m['workers_kib']) / 1024:.1f} |")


def change(before, after):
    return f"{after / 1024:.1f} vs {before / 1024:.1f} MiB ({(after - before) / before * 100:+.1f}%)"


idle, unloaded, unloaded_2 = memory["idle"], memory["unloaded"], memory["unloaded_2"]
print(f"\n- idle agent RSS: {idle['agent_kib'] / 1024:.1f} MiB; goal ≤ 30 MB")
print(f"- RSS after unload vs before loading, first cycle: {change(idle['agent_kib'], unloaded['agent_kib'])}; "
      f"anonymous: {change(idle['agent_anon_kib'], unloaded['agent_anon_kib'])}; goal within 5%")
print(f"- second cycle, after unload vs after the first unload: "
      f"{change(unloaded['agent_kib'], unloaded_2['agent_kib'])}")

print("\n## Cluster (issue 3)\n")
print("client → `herd scheduler` → 2 agents (2 replicas per model, `intra_op_threads = 1`: two")
print("agents share the machine's 2 cores), beside client → one agent directly with the same")
print("model settings, beside raw ONNX Runtime in-process (2 threads); all on one machine.\n")
print("| model | path | concurrency | requests/s | × raw limit | p50 ms | p99 ms | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for model in ["magika", "tiny_mlp"]:
    limit = max(s["items_per_s"] for s in local(model))
    rows = [("agent, 1 thread", s) for s in agent1t(model)]
    rows += [("scheduler → 2 agents", s) for s in cluster(model)]
    for path, s in rows:
        ratio = f"{s['items_per_s'] / limit:.2f}" if model == "magika" else "—"
        print(f"| {model} | {path} | {s['concurrency']} | {s['throughput_rps']:.0f} | {ratio} | {ms(s['p50_us'])} | {ms(s['p99_us'])} | {s['errors']} |")

smem = json.load(open(sys.argv[3]))
placement = open(sys.argv[4]).read().strip().splitlines()
magika_cluster = {s["concurrency"]: s for s in cluster("magika")}
tiny_cluster = {s["concurrency"]: s for s in cluster("tiny_mlp")}
tiny_agent = {s["concurrency"]: s for s in agent1t("tiny_mlp")}
magika_agent = {s["concurrency"]: s for s in agent1t("magika")}
print("\n### Goals\n")
best = max(s["items_per_s"] for s in magika_cluster.values())
print(f"- magika through the cluster: best {best:.0f} items/s = {best / raw_magika:.2f}× the raw limit; goal ≥ 0.85×")
for name, c, a in [("magika", magika_cluster, magika_agent), ("tiny_mlp", tiny_cluster, tiny_agent)]:
    hop = (c[1]["p50_us"] - a[1]["p50_us"]) / 1000
    print(f"- {name} at concurrency 1, p50 through the scheduler minus straight to an agent: "
          f"{ms(c[1]['p50_us'])} − {ms(a[1]['p50_us'])} = {hop:.2f} ms; goal ≤ 0.3 ms")
print(f"- scheduler RSS with {smem['agents']} simulated agents, {smem['models']} models and {smem['replicas']} replicas: "
      f"{smem['held_kib'] / 1024:.1f} MiB (idle with the catalog: {smem['idle_kib'] / 1024:.1f} MiB); goal ≤ 30 MB")
for line in placement:
    if line.startswith("routing:"):
        # Routing takes the lock placement's snapshot and apply hold briefly; solve runs
        # outside it, so a pick never waits for a whole placement.
        print(f"- {line}")
    else:
        print(f"- {line}; goal ≤ 50 ms")
