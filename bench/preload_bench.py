#!/usr/bin/python3
"""The job shim's costs: ns per call for the calls it intercepts (by libc and by raw
system call, which traps to its SIGSYS handler) and for calls that only pass its filter,
native vs libmosix_preload.so vs proot in the same run; and the wall-time overhead of a
CPU-bound program under the shim. Prints a Markdown table and keeps it in
bench/results/preload.md. Run as root (the shim runs in its own pid namespace, as a job
does): bench/run preload [--quick]."""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("HOMEWARD_BUILD", os.path.join(ROOT, "build"))
SHIM = os.path.join(BUILD, "preload", "libmosix_preload.so")
SOURCE = os.path.join(ROOT, "bench", "preload_bench.cc")
BINARY = os.path.join(BUILD, "bench", "preload_bench")
RESULTS = os.path.join(ROOT, "bench", "results", "preload.md")

JOB_ENV = {"LD_PRELOAD": SHIM, "HOMEWARD_HOME": "home", "HOMEWARD_HOME_PID": "31337",
           "HOMEWARD_HOME_PPID": "31000", "HOMEWARD_PID_BASE": str(5 * 4194304)}
CALLS = [("getpid", "getpid() through libc"),
         ("syscall_getpid", "syscall(SYS_getpid): trapped, answered by SIGSYS"),
         ("gettid", "gettid() through libc"),
         ("stat", "stat(): passes the filter"),
         ("open_close", "open()+close(): pass the filter"),
         ("sendmsg_recvmsg", "sendmsg()+recvmsg() of a byte: pass the filter"),
         ("sendmsg_recvmsg_passcred",
          "the same once the process set SO_PASSCRED: both trapped (credentials)")]


def build():
    os.makedirs(os.path.dirname(BINARY), exist_ok=True)
    if not os.path.exists(BINARY) or os.path.getmtime(BINARY) < os.path.getmtime(SOURCE):
        subprocess.run(["c++", "-O2", "-std=c++20", "-o", BINARY, SOURCE], check=True)
    if not os.path.exists(SHIM):
        sys.exit(f"missing {SHIM}: build first (meson compile -C build)")


def command(mode, args):
    """The bench program's command line for one way of running it."""
    namespace = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "env"]
    if mode == "native":
        return [BINARY, *args]
    if mode == "namespace":  # A job's pid namespace without the shim.
        return [*namespace, BINARY, *args]
    if mode == "shim":
        return [*namespace, *[f"{k}={v}" for k, v in JOB_ENV.items()], BINARY, *args]
    if mode == "proot":
        return ["proot", BINARY, *args]
    raise ValueError(mode)


def run_calls(mode, scale):
    out = subprocess.run(command(mode, ["calls", str(scale)]), capture_output=True, text=True,
                         check=True).stdout
    return {name: float(ns) for name, ns in (line.split() for line in out.splitlines())}


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cpu(mode, units):
    """(wall seconds, CPU seconds) of one run. CPU time is what the shim could add; wall
    time also counts waiting for a core on a shared machine."""
    start, cpu = time.monotonic(), cpu_seconds()
    subprocess.run(command(mode, ["cpu", str(units)]), stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - start, cpu_seconds() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("preload bench: run as root (it makes pid namespaces)")
    build()
    modes = ["native", "shim"] + (["proot"] if shutil.which("proot") else [])
    scale = 1 if args.quick else 5
    # proot stops the program at every system call (ptrace): a fiftieth of the calls
    # averages its cost as well and keeps its column to a minute or two.
    calls = {mode: run_calls(mode, scale / 50 if mode == "proot" else scale) for mode in modes}

    lines = ["| call | " + " | ".join(f"{m} (ns)" for m in modes) + " |",
             "| --- | " + " | ".join("---:" for _ in modes) + " |"]
    for name, label in CALLS:
        lines.append(f"| {label} | " + " | ".join(f"{calls[m][name]:.0f}" for m in modes) + " |")

    # Whole-program overhead: runs in the job's namespaces with and without the shim,
    # interleaved, medians compared; the difference is the shim's alone.
    units, runs = (300, 3) if args.quick else (1500, 7)
    times = {"namespace": [], "shim": []}
    for _ in range(runs):
        for mode in times:
            times[mode].append(run_cpu(mode, units))
    lines += ["", f"CPU-bound program ({units} units of integer work, median of {runs} "
              "interleaved runs, both in a fresh pid namespace as a job is):", "",
              "| measure | without shim (s) | with shim (s) | overhead |",
              "| --- | ---: | ---: | ---: |"]
    for index, measure in ((1, "CPU time (user+sys)"), (0, "wall time")):
        native, shim = (statistics.median(t[index] for t in times[m]) for m in times)
        lines.append(f"| {measure} | {native:.3f} | {shim:.3f} | "
                     f"{(shim - native) / native * 100:+.2f}% |")
    if not shutil.which("proot"):
        lines.append("proot is not installed (scripts/setup --bench): its column is left out.")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
