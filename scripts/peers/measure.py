"""A server's process tree as the peer benchmark sees it, read from /proc (Linux).

  measure.py mem PID             one JSON line: {"rss_mib", "pss_mib", "procs"} summed over
                                 PID and every process below it
  measure.py cpu PID             CPU seconds (user + system) of the tree, its reaped
                                 children's included
  measure.py sample PID FILE     appends "seconds rss_mib pss_mib" to FILE every 0.25 s
                                 until killed (peak memory, and memory over time)
  measure.py peak FILE [FROM]    the largest rss and pss in FILE (from line FROM on), JSON
"""
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def children():
    """ppid -> [pid] for every process."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command may hold spaces and parentheses: fields follow the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root):
    kids = children()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem(root):
    pids = tree(root)
    rss = sum(kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1), "procs": len(pids)}


def cpu(root):
    total = 0
    for p in tree(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 after the command.
        total += sum(int(x) for x in fields[11:15])
    return total / TICK


def sample(root, path):
    start = time.monotonic()
    with open(path, "a", buffering=1) as out:
        while os.path.exists(f"/proc/{root}"):
            m = mem(root)
            out.write(f"{time.monotonic() - start:.2f} {m['rss_mib']} {m['pss_mib']}\n")
            time.sleep(0.25)


def peak(path, start=0):
    rss = pss = 0.0
    with open(path) as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            _, r, p = line.split()
            rss, pss = max(rss, float(r)), max(pss, float(p))
    return {"rss_mib": rss, "pss_mib": pss}


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "mem":
        print(json.dumps(mem(int(sys.argv[2]))))
    elif what == "cpu":
        print(f"{cpu(int(sys.argv[2])):.2f}")
    elif what == "sample":
        sample(int(sys.argv[2]), sys.argv[3])
    elif what == "peak":
        print(json.dumps(peak(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)))
    else:
        sys.exit(__doc__)
