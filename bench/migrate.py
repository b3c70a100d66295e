#!/usr/bin/python3
"""Migration, in one run, for jobs holding 16 MiB .. 4 GiB of touched memory:
  - the floor: plain criu dump to tmpfs, then criu restore, on one node (its total: the
    wall time of both; its frozen time, as the daemons measure a move's, from criu's
    freeze by criu's own stats, then the restore), with criu's own restore; and beside it
    the same with the restore reading into huge pages, as every restore of Homeward does
    (RestoreOptions::huge_pages);
  - the migrate library's two ways over loopback TCP: stop and copy (dump to tmpfs, then
    stream the images), and paged (the memory to a page server on the far side while criu
    dumps, the rest after);
  - moves through the daemons, as users make them: `mosmigrate PID node2` on a two-node
    loopback cluster (state directories on tmpfs), with the peer connection encrypted;
  - the same on a cluster that moves lazily ([migration] lazy_pages): frozen until the job
    runs on node2, total until node2 has all its memory.
Prints a markdown table with the ratio of each to the floor measured beside it, and keeps
it in bench/results/migrate.md.

  bench/run migrate [--sizes 16,256,1024,4096] [--reps N]
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys

from bench_cluster import BUILD, ROOT, BenchCluster

MEMHOG = os.path.join(BUILD, "bench", "memhog")
MOVED = re.compile(r"now runs on (\S+) \(frozen (\d+) ms, (\d+) ms in all")


class Cluster(BenchCluster):
    """Two nodes on loopback; `lazy`: they move jobs lazily."""

    def __init__(self, lazy=False):
        super().__init__(2, ["migration.lazy_pages=true"] if lazy else [], "migrate-bench")

    def ready(self):
        self.wait_for(lambda: self.run("node2", "test", "-d", "/mosix/home/node1/data",
                                       check=False).returncode == 0,
                      "node2 to see node1's files")

    def jobs(self):
        return json.loads(self.run("node1", "mosps", "--json").stdout)["jobs"]


def daemon_move(cluster, mib):
    """One job of `mib` MiB started at node1 and moved to node2; (frozen, total) seconds
    as the daemons measured them."""
    job = subprocess.Popen(cluster.command("node1", "mosrun", MEMHOG, str(mib)),
                           env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        if job.stdout.readline() != "ready\n":
            raise RuntimeError(f"the job of {mib} MiB did not start: {job.stderr.read()}")
        pid = cluster.wait_for(lambda: next((j["pid"] for j in cluster.jobs()), None),
                               "the job to be listed")
        result = cluster.run("node1", "mosmigrate", str(pid), "node2", check=False)
        moved = MOVED.search(result.stdout)
        if result.returncode != 0 or not moved or moved.group(1) != "node2":
            raise RuntimeError(f"mosmigrate of {mib} MiB failed: {result.stderr.strip()}")
        return int(moved.group(2)) / 1000, int(moved.group(3)) / 1000
    finally:
        # mosrun passes the signal on to the job, wherever it runs.
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        cluster.wait_for(lambda: not cluster.jobs(), "the job to end")


def library_runs(mib, reps):
    """The floor and the library's two ways, from migrate_bench (medians of `reps`)."""
    out = subprocess.run([os.path.join(BUILD, "bench", "migrate_bench"), "--sizes", str(mib),
                          "--reps", str(reps), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,256,1024,4096")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run migrate: needs root (criu, a loopback cluster)")
    subprocess.run(["meson", "compile", "-C", BUILD], check=True, stdout=subprocess.DEVNULL)
    sizes = [int(s) for s in args.sizes.split(",")]
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    lines = [
        f"Sizes {args.sizes} MiB, medians of {args.reps} runs (1 at 1 GiB and up); load "
        f"average {load} at the start.",
        "",
        "| memory | floor | floor frozen | stop-and-copy total | paged total | "
        "mosmigrate frozen | mosmigrate total | lazy frozen | lazy total | paged/floor | "
        "mosmigrate frozen/floor frozen | mosmigrate total/floor | "
        "lazy frozen/floor frozen | floor frozen, huge pages | "
        "mosmigrate frozen/floor frozen, huge pages |",
        "|" + " --- |" * 15,
    ]
    print("\n".join(lines), flush=True)
    with Cluster() as cluster, Cluster(lazy=True) as lazy_cluster:
        for mib in sizes:
            reps = 1 if mib >= 1024 else args.reps
            library = library_runs(mib, reps)
            moves = [daemon_move(cluster, mib) for _ in range(reps)]
            frozen = statistics.median(m[0] for m in moves)
            total = statistics.median(m[1] for m in moves)
            lazy = [daemon_move(lazy_cluster, mib) for _ in range(reps)]
            lazy_frozen = statistics.median(m[0] for m in lazy)
            lazy_total = statistics.median(m[1] for m in lazy)
            floor = library["floor"]["total"]
            floor_frozen = library["floor"]["frozen"]
            huge_frozen = library["floor_huge"]["frozen"]
            row = (f"| {mib} MiB | {floor:.3f} s | {floor_frozen:.3f} s | "
                   f"{library['copy']['total']:.3f} s | "
                   f"{library['paged']['total']:.3f} s | {frozen:.3f} s | {total:.3f} s | "
                   f"{lazy_frozen:.3f} s | {lazy_total:.3f} s | "
                   f"{library['paged']['total'] / floor:.2f}x | {frozen / floor_frozen:.2f}x | "
                   f"{total / floor:.2f}x | {lazy_frozen / floor_frozen:.3f}x | "
                   f"{huge_frozen:.3f} s | {frozen / huge_frozen:.2f}x |")
            lines.append(row)
            print(row, flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "migrate.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
