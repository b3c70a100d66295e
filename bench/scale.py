#!/usr/bin/python3
"""What a node costs as the cluster grows: loopback clusters of 4, 16 and 64 nodes, each
node's daemon and homefs (its one /mosix/home mount) measured idle, then with one guest
per node (node i's job runs on node i+1 and reads a file of its home every second):
resident memory, threads, open descriptors, homefs's peer connections, and CPU over a
10 s window. Also the first file call of a node to a home it has not used (homefs
connects then) against the same call once connected. Ratios are against the 4-node
cluster (and the connected call), measured in the same run. Prints a markdown table and
keeps it in bench/results/scale.md.

  bench/run scale [--sizes 4,16,64] [--window 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_cluster import ROOT, BenchCluster

TICKS = os.sysconf("SC_CLK_TCK")
# A first file call through homefs, timed inside the node: the stat of a home's file.
TIMED_STAT = ("import os, sys, time\n"
              "t = time.monotonic(); os.stat(sys.argv[1]); print(time.monotonic() - t)\n")


class Cluster(BenchCluster):
    def __init__(self, nodes):
        # No automatic moves: the guests stay where they were started, as measured.
        super().__init__(nodes, ["files.idle_disconnect_s=5", "balance.automatic=false"],
                         "scale-bench", timeout=900)

    def ready(self):
        for node in self.nodes:
            self.wait_for(lambda: self.listing(node) == sorted(self.nodes),
                          f"{node} to list every node", 300)

    def listing(self, node):
        return sorted(self.run(node, "ls", "/mosix/home").stdout.split())

    def processes(self, node):
        """The node's daemon and its homefs (a child of the daemon)."""
        daemon = self.info[node]["pid"]
        homefs = None
        for task in os.listdir(f"/proc/{daemon}/task"):
            with open(f"/proc/{daemon}/task/{task}/children") as f:
                for child in f.read().split():
                    with open(f"/proc/{child}/cmdline", "rb") as c:
                        if b"--tree" in c.read():
                            homefs = int(child)
        return {"daemon": daemon, "homefs": homefs}


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def connections(pids):
    """Established TCP connections held by the homefs processes `pids`."""
    lines = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    return sum(1 for line in lines for pid in pids if f"pid={pid}," in line)


def measure(cluster, window):
    """Per node: mean RSS (MB), threads, descriptors of daemon and homefs; homefs's
    connections; CPU % of daemon + homefs over `window` seconds."""
    procs = {node: cluster.processes(node) for node in cluster.nodes}
    before = {node: sum(cpu_ticks(p) for p in ps.values()) for node, ps in procs.items()}
    start = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - start
    rows = {}
    for kind in ("daemon", "homefs"):
        pids = [ps[kind] for ps in procs.values()]
        rows[kind] = {
            "rss_mb": statistics.mean(status(p, "VmRSS") for p in pids) / 1024,
            "threads": statistics.mean(status(p, "Threads") for p in pids),
            "fds": statistics.mean(len(os.listdir(f"/proc/{p}/fd")) for p in pids),
        }
    rows["connections"] = connections([ps["homefs"] for ps in procs.values()]) / len(procs)
    rows["cpu_pct"] = statistics.mean(
        (sum(cpu_ticks(p) for p in ps.values()) - before[node]) / TICKS / elapsed * 100
        for node, ps in procs.items())
    return rows


def start_guests(cluster):
    """One guest per node: node i's job on node i+1, reading its home's file each second."""
    jobs = []
    nodes = cluster.nodes
    for i, node in enumerate(nodes):
        cluster.run(node, "sh", "-c", "echo x > /data/beat")
        target = nodes[(i + 1) % len(nodes)]
        jobs.append(subprocess.Popen(
            cluster.command(node, "mosrun", "-L", "-r", target, "sh", "-c",
                            "while [ ! -e /data/stop ]; do cat /data/beat >/dev/null; "
                            "sleep 1; done"),
            env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for i, node in enumerate(nodes):
        target = nodes[(i + 1) % len(nodes)]
        cluster.wait_for(lambda: any(j.get("guest") for j in json.loads(
            cluster.run(target, "mosps", "--json").stdout)["jobs"]), f"a guest on {target}", 300)
    return jobs


def stop_guests(cluster, jobs):
    for node in cluster.nodes:
        cluster.run(node, "touch", "/data/stop")
    for job in jobs:
        job.wait(timeout=120)


def first_calls(cluster, homes):
    """Seconds of a stat through homefs of node1 to each home, first (connecting) and
    again (connected)."""
    first, again = [], []
    for home in homes:
        path = f"/mosix/home/{home}/data"
        first.append(float(cluster.run("node1", "python3", "-c", TIMED_STAT, path).stdout))
        again.append(float(cluster.run("node1", "python3", "-c", TIMED_STAT,
                                       path + "/beat").stdout))
    return first, again


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,16,64")
    parser.add_argument("--window", type=float, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run scale: needs root (loopback clusters)")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for size in sizes:
        print(f"scale: {size} nodes", file=sys.stderr)
        with Cluster(size) as cluster:
            idle = measure(cluster, args.window)
            jobs = start_guests(cluster)
            try:
                busy = measure(cluster, args.window)
            finally:
                stop_guests(cluster, jobs)
            # Homes node1 never used (its guest is node N's, node2 its own guest's host).
            homes = [n for n in cluster.nodes if n not in ("node1", "node2", cluster.nodes[-1])][:3]
            first, again = first_calls(cluster, homes)
            results[size] = {"idle": idle, "guests": busy, "first": first, "again": again}

    base = results[sizes[0]]
    lines = [f"| nodes | state | daemon MB | daemon threads | daemon fds | homefs MB | "
             f"homefs threads | homefs fds | homefs connections | CPU % (both) | "
             f"homefs MB vs {sizes[0]} nodes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in sizes:
        for state in ("idle", "guests"):
            r = results[size][state]
            d, h = r["daemon"], r["homefs"]
            ratio = h["rss_mb"] / base[state]["homefs"]["rss_mb"]
            lines.append(f"| {size} | {state} | {d['rss_mb']:.1f} | {d['threads']:.1f} | "
                         f"{d['fds']:.0f} | {h['rss_mb']:.1f} | {h['threads']:.1f} | "
                         f"{h['fds']:.0f} | {r['connections']:.1f} | {r['cpu_pct']:.2f} | "
                         f"{ratio:.2f} |")
    lines += ["", "| nodes | first call to a home (ms, median / max) | connected (ms) | ratio |",
              "| --- | --- | --- | --- |"]
    for size in sizes:
        first, again = results[size]["first"], results[size]["again"]
        lines.append(f"| {size} | {statistics.median(first) * 1e3:.1f} / {max(first) * 1e3:.1f} | "
                     f"{statistics.median(again) * 1e3:.2f} | "
                     f"{statistics.median(first) / statistics.median(again):.1f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "scale.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
