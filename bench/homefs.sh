#!/usr/bin/env bash
# homefs against the local tree and sshfs, in one run on one machine:
# fio sequential write and read (1 GiB, 1 MiB blocks), 4 KiB random reads (the same on
# every target: an eighth of the file's blocks, each once, from cold caches), a metadata
# run (create, stat, unlink 10,000 files), and appends: two writers at once appending
# 57-byte lines with write(2) on O_APPEND descriptors to one file for APPEND_S seconds
# (for homefs, one on node2 and one on node3: appends across nodes, each placed by the
# home; the line count is checked whole, and torn lines are reported); and locks: two
# processes taking and dropping a lockf lock on one file for APPEND_S seconds (for homefs
# on node2 and node3, so each lock is the home's; sshfs keeps locks local to each mount,
# so it has no row of its own: homefs is compared with the local tree). homefs is node1's
# files on a loopback cluster, seen from node2 (and node3) through the daemons' own
# /mosix/home; sshfs mounts the same directory
# through a private sshd on loopback; passthrough_ll (libfuse's example, built here from
# the sources libfuse3-dev installs) mounts it locally, with no network: FUSE's own cost,
# the floor for homefs. Under the table, the network's own floor for random reads: a TCP
# round trip between two processes (bench/tcp_round_trip.cc) added to passthrough_ll's
# read. The table is kept in bench/results/homefs.md.
# Every test runs as an ordinary user the bench makes (jobs are users' jobs), --as-root
# as root; sshfs and passthrough_ll then mount with allow_other, as root.
# The home's files are on an ext4 of the bench's own (a file on a loop device, with a
# journal, as homes have), made fresh for each run: an ext4 without a journal (this
# machine's root) skips every inode deleted in the last minute when it makes a file, so
# each target's creates there ran slower than the one's before (2,000 files made and
# removed six times in a row: 81,000 creates a second, at last 5,400).
#   bench/run homefs [--size 1g] [--files 10000] [--append-seconds 5] [--runs 3]
#                    [--as-root] [--set KEY=VALUE ...]
# --set goes to the loopcluster's nodes (files.sync_replay_log=true: the home syncs its
# replay log before each create, unlink, rename and append).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export HOMEWARD_BUILD=${HOMEWARD_BUILD:-$ROOT/build}
SIZE=1g FILES=10000 APPEND_S=5 RUNS=3
SETTINGS=()
AS_ROOT=
while [[ $# -gt 0 ]]; do
  case $1 in
    --size) SIZE=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --append-seconds) APPEND_S=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --set) SETTINGS+=(--set "$2"); shift 2 ;;
    --as-root) AS_ROOT=1; shift ;;
    *) echo "usage: bench/run homefs [--size 1g] [--files 10000] [--append-seconds 5] [--runs 3] [--as-root] [--set KEY=VALUE ...]" >&2
       exit 2 ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench homefs: --runs wants a count of 1 or more, not '$RUNS'" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "bench homefs: needs root" >&2; exit 1; }
for tool in fio sshfs sshd ssh-keygen; do
  command -v $tool >/dev/null || { echo "bench homefs: no $tool; run scripts/setup --bench" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/homeward-bench-XXXXXX)
CLUSTER=$WORK/cluster
DATA=$CLUSTER/node1/data   # node1's /data, seen from the host
SSHFS_MNT=$WORK/sshfs
PASS_MNT=$WORK/passthrough
SSHD_PID=
LOOP_DEV=
BENCH_USER=
cleanup() {
  set +e
  mountpoint -q "$SSHFS_MNT" && fusermount3 -u "$SSHFS_MNT"
  mountpoint -q "$PASS_MNT" && fusermount3 -u "$PASS_MNT"
  [[ -n $SSHD_PID ]] && kill "$SSHD_PID"
  "$ROOT/scripts/loopcluster" down "$CLUSTER" >/dev/null 2>&1
  mountpoint -q "$DATA" && umount "$DATA"
  [[ -n $LOOP_DEV ]] && losetup -d "$LOOP_DEV"
  rm -rf "$WORK"
  [[ -n $BENCH_USER ]] && userdel "$BENCH_USER" 2>/dev/null
}
trap cleanup EXIT
# Who runs the tests: AS is the prefix of each test's command.
AS=() WHO=root
if [[ -z $AS_ROOT ]]; then
  BENCH_USER=hwbench$$
  useradd --no-create-home --user-group --shell /bin/sh "$BENCH_USER"
  AS=(setpriv --reuid="$(id -u "$BENCH_USER")" --regid="$(id -g "$BENCH_USER")" --clear-groups)
  WHO="an ordinary user"
fi
# The tests' Python: the system's, which every user can run.
PY=/usr/bin/python3

size_bytes=$(numfmt --from=iec "${SIZE^^}")
# Random reads: every target makes the same reads (an eighth of the file's 4 KiB blocks,
# each once, at the offsets fio's fixed seed picks) rather than reading for a fixed time:
# a file that fits in memory ends up in the page cache below the file system, and the
# home's ext4 reads ahead more the more of the file is cached near a miss, so over a fixed
# time the faster target also got the warmer cache (passthrough_ll's 1 GiB: 13,000 reads
# a second for 6 s, then up to 35,000, its disk idle from the eleventh; homefs's 7,000 for
# 12 s).
# RANDOM_CAP_S bounds a target that is slower than expected (its rate is then of fewer).
RANDOM_READS=$((size_bytes >= 8 * 4096 ? size_bytes / 4096 / 8 : 1)) RANDOM_CAP_S=120

# The home's ext4: room for each target's test file and a GiB more; a sparse image, on a
# loop device with direct I/O (the image's own pages are not cached twice).
truncate -s $((4 * size_bytes + (1 << 30))) "$WORK/home.ext4"
mkfs.ext4 -q -F "$WORK/home.ext4"
LOOP_DEV=$(losetup --find --show --direct-io=on "$WORK/home.ext4")
mkdir -p "$DATA"
mount "$LOOP_DEV" "$DATA"
"$ROOT/scripts/loopcluster" up --nodes 3 --dir "$CLUSTER" "${SETTINGS[@]}" >/dev/null
in_node() { local n=$1; shift; "$ROOT/scripts/loopcluster" exec "$CLUSTER" "$n" -- "$@"; }

# A private sshd on loopback, with its own host key and an authorized key of ours.
mkdir -p "$WORK/ssh" /run/sshd "$SSHFS_MNT"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/host" ; ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/user"
cp "$WORK/ssh/user.pub" "$WORK/ssh/authorized_keys"
SSH_PORT=$((22000 + RANDOM % 1000))
cat >"$WORK/ssh/sshd_config" <<CONF
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $WORK/ssh/host
AuthorizedKeysFile $WORK/ssh/authorized_keys
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
PidFile $WORK/ssh/sshd.pid
CONF
/usr/sbin/sshd -D -f "$WORK/ssh/sshd_config" & SSHD_PID=$!
for _ in $(seq 100); do (: <"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && break; sleep 0.1; done
sshfs -p "$SSH_PORT" -o IdentityFile="$WORK/ssh/user",StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null,BatchMode=yes,allow_other "root@127.0.0.1:$DATA" "$SSHFS_MNT"

# libfuse's passthrough_ll over the same directory (its defaults: 1 s caches, no writeback).
EXAMPLES=/usr/share/doc/libfuse3-dev/examples
cc -O2 -Wall -o "$WORK/passthrough_ll" "$EXAMPLES/passthrough_ll.c" $(pkg-config --cflags --libs fuse3)
mkdir -p "$PASS_MNT"
"$WORK/passthrough_ll" -o source="$DATA",allow_other "$PASS_MNT"

# homefs as jobs see it: the daemons' own mount, /mosix/home/node1 (its first use connects).
for n in node2 node3; do
  for _ in $(seq 100); do in_node $n test -d /mosix/home/node1/data 2>/dev/null && break; sleep 0.2; done
done

# run_in WHERE CMD...: runs a test's command as its user, on the host (local, sshfs,
# passthrough_ll) or inside a node (homefs).
run_in() {
  local where=$1; shift
  if [[ $where == node* ]]; then in_node "$where" "${AS[@]}" "$@"; else "${AS[@]}" "$@"; fi
}

fio_bw() {  # where dir name rw bs -> MB/s (or IOPS for random reads)
  local where=$1 dir=$2 rw=$3 bs=$4 extra=${5:-}
  sync; echo 3 >/proc/sys/vm/drop_caches
  run_in "$where" fio --name=bench --directory="$dir" --filename=bench.dat --size="$SIZE" \
    --rw="$rw" --bs="$bs" --ioengine=psync --numjobs=1 --output-format=json $extra |
    python3 -c "
import json,sys
j=json.load(sys.stdin)['jobs'][0]
rw='$rw'
side=j['write'] if 'write' in rw else j['read']
print(round(side['iops']) if rw=='randread' else round(side['bw_bytes']/1e6))"
}

meta() {  # where dir -> create/s stat/s unlink/s
  run_in "$1" "$PY" - "$2" "$FILES" <<'PY'
import os, sys, time
d, n = os.path.join(sys.argv[1], "meta"), int(sys.argv[2])
os.makedirs(d, exist_ok=True)
t = time.perf_counter()
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
c = time.perf_counter() - t; t = time.perf_counter()
for i in range(n):
    os.stat(f"{d}/f{i}")
s = time.perf_counter() - t; t = time.perf_counter()
for i in range(n):
    os.unlink(f"{d}/f{i}")
u = time.perf_counter() - t
os.rmdir(d)
print(round(n / c), round(n / s), round(n / u))
PY
}

appender() {  # where dir start seconds name -> lines appended
  run_in "$1" "$PY" - "$2/appends.csv" "$3" "$4" "$5" <<'PY'
import os, sys, time
path, start, seconds, name = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
while time.time() < start:  # both writers start together
    time.sleep(0.001)
n, end = 0, start + seconds
while time.time() < end:
    n += 1
    os.write(fd, f"{name},{1000000 + n:07d},".encode().ljust(56, b"x") + b"\n")
os.close(fd)
print(n)
PY
}

appends() {  # target -> appends/s of two writers at once; warns of torn lines
  local t=$1 where2=${WHERE[$1]} dir=${DIR[$1]} start out1 out2
  [[ $t == homefs ]] && where2=node3
  start=$(python3 -c "import time; print(time.time() + 2)")
  out1=$WORK/append1.$t out2=$WORK/append2.$t
  appender "${WHERE[$t]}" "$dir" "$start" "$APPEND_S" a >"$out1" &
  local pid=$!
  appender "$where2" "$dir" "$start" "$APPEND_S" b >"$out2"
  wait $pid
  local total=$(( $(cat "$out1") + $(cat "$out2") ))
  local whole
  whole=$(run_in "${WHERE[$t]}" "$PY" -c "
import re, sys
data = open(sys.argv[1], 'rb').read()
print(sum(1 for l in data.split(b'\n') if len(l) == 56 and re.fullmatch(rb'[ab],\d{7,},x+', l)))" "$dir/appends.csv")
  run_in "${WHERE[$t]}" rm -f "$dir/appends.csv"
  [[ $whole -eq $total ]] || echo "bench homefs: $t: $((total - whole)) of $total appended lines torn" >&2
  python3 -c "print(round($total / $APPEND_S))"
}

locker() {  # where dir start seconds -> lock/unlock pairs (lockf on one file)
  run_in "$1" "$PY" - "$2/locks" "$3" "$4" <<'PY'
import fcntl, os, sys, time
path, start, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
while time.time() < start:  # both lockers start together
    time.sleep(0.001)
n, end = 0, start + seconds
while time.time() < end:
    fcntl.lockf(fd, fcntl.LOCK_EX)
    fcntl.lockf(fd, fcntl.LOCK_UN)
    n += 1
os.close(fd)
print(n)
PY
}

locks() {  # target -> lock/unlock pairs/s of two lockers of one file at once (homefs: on
  # node2 and node3, so the locks are the home's); sshfs has no locks across its clients
  # (the kernel keeps them local to each mount): none measured.
  local t=$1 where2=${WHERE[$1]} start out1 out2
  if [[ $t == sshfs || $t == passthrough ]]; then echo "-"; return; fi
  [[ $t == homefs ]] && where2=node3
  start=$(python3 -c "import time; print(time.time() + 2)")
  out1=$WORK/lock1.$t out2=$WORK/lock2.$t
  locker "${WHERE[$t]}" "${DIR[$t]}" "$start" "$APPEND_S" >"$out1" &
  local pid=$!
  locker "$where2" "${DIR[$t]}" "$start" "$APPEND_S" >"$out2"
  wait $pid
  run_in "${WHERE[$t]}" rm -f "${DIR[$t]}/locks"
  python3 -c "print(round(($(cat "$out1") + $(cat "$out2")) / $APPEND_S))"
}

# Each test runs on the four targets back to back, so that a change in the machine's
# load (it is shared) spreads over all four rather than landing on one.
declare -A WHERE DIR
WHERE[local]=host   DIR[local]=$DATA/bench-local
WHERE[homefs]=node2 DIR[homefs]=/mosix/home/node1/data/bench-homefs
WHERE[sshfs]=host   DIR[sshfs]=$SSHFS_MNT/bench-sshfs
WHERE[passthrough]=host DIR[passthrough]=$PASS_MNT/bench-passthrough
TARGETS="local homefs sshfs passthrough"
# Each target's directory, made at the home (node1's /data, under all four) for the
# tests' user; the path to the host's mounts open to it.
for t in $TARGETS; do mkdir -p "$DATA/bench-$t"; done
if [[ -n $BENCH_USER ]]; then
  chown "$BENCH_USER:" "$DATA"/bench-*
  chmod o+x "$WORK" "$CLUSTER" "$CLUSTER/node1" "$DATA"
fi
# One line per measurement, "run target test value", for the table at the end ("-" for a
# measurement that gave nothing: its cell and ratios are left out).
MEASURED=$WORK/measured
record() { echo "$1 $2 $3 ${4:--}" >>"$MEASURED"; }
for run in $(seq "$RUNS"); do
  echo "bench homefs: run $run of $RUNS: sequential write" >&2
  for t in $TARGETS; do record "$run" "$t" write "$(fio_bw ${WHERE[$t]} "${DIR[$t]}" write 1M "--end_fsync=1")"; done
  echo "bench homefs: run $run of $RUNS: sequential read" >&2
  for t in $TARGETS; do record "$run" "$t" read "$(fio_bw ${WHERE[$t]} "${DIR[$t]}" read 1M)"; done
  echo "bench homefs: run $run of $RUNS: random read" >&2
  for t in $TARGETS; do
    record "$run" "$t" rand "$(fio_bw ${WHERE[$t]} "${DIR[$t]}" randread 4k \
      "--number_ios=$RANDOM_READS --runtime=$RANDOM_CAP_S")"
  done
  # Each run writes its file anew, as the first did.
  for t in $TARGETS; do run_in "${WHERE[$t]}" rm -f "${DIR[$t]}/bench.dat"; done
  echo "bench homefs: run $run of $RUNS: metadata" >&2
  for t in $TARGETS; do
    read -r c s u < <(meta ${WHERE[$t]} "${DIR[$t]}")
    record "$run" "$t" create "$c"; record "$run" "$t" stat "$s"; record "$run" "$t" unlink "$u"
  done
  echo "bench homefs: run $run of $RUNS: appends" >&2
  for t in $TARGETS; do record "$run" "$t" append "$(appends $t)"; done
  echo "bench homefs: run $run of $RUNS: locks" >&2
  for t in $TARGETS; do record "$run" "$t" lock "$(locks $t)"; done
  # The round trip between two processes on loopback (what any networked file system
  # adds to a local FUSE call), measured in each run, on the same loaded or quiet machine.
  record "$run" network rtt "$("$HOMEWARD_BUILD/bench/tcp_round_trip" --reply 4096)"
done
rm -rf "$DATA"/bench-*

RESULTS=$ROOT/bench/results/homefs.md
mkdir -p "$(dirname "$RESULTS")"
{
  echo "Size $SIZE, $FILES files, appends and locks for $APPEND_S s, $RUNS runs, run as $WHO${SETTINGS[*]:+, homefs with ${SETTINGS[*]}}; load average $(cut -d' ' -f1 /proc/loadavg) at the end."
  echo
  python3 - "$MEASURED" "$RUNS" <<'PY'
import statistics, sys
runs = int(sys.argv[2])
value = {}  # (target, test, run) -> number, where measured
for line in open(sys.argv[1]):
    run, target, test, v = line.split()
    if v != "-":
        value[target, test, int(run)] = float(v)
def of(target, test):
    return [value[target, test, r] for r in range(1, runs + 1) if (target, test, r) in value]
def median(target, test):
    vs = of(target, test)
    return statistics.median(vs) if vs else None
def ratio(test, other):
    rs = [value["homefs", test, r] / value[other, test, r] for r in range(1, runs + 1)
          if ("homefs", test, r) in value and value.get((other, test, r))]
    if not rs:
        return "-"
    mid = f"{statistics.median(rs):.2f}x"
    return mid if len(rs) == 1 else f"{mid} ({min(rs):.2f}-{max(rs):.2f})"
rows = [("write", "sequential write MB/s"), ("read", "sequential read MB/s"),
        ("rand", "4 KiB random read IOPS"), ("create", "create files/s"),
        ("stat", "stat files/s"), ("unlink", "unlink files/s"),
        ("append", "appends/s (2 writers)"), ("lock", "lock/unlock pairs/s (2)")]
targets = ["local", "homefs", "sshfs", "passthrough"]
header = ["test", "local", "homefs", "sshfs", "passthrough_ll",
          "homefs/local", "homefs/sshfs", "homefs/pt_ll"]
table = [header]
for test, label in rows:
    cells = [label]
    for t in targets:
        m = median(t, test)
        cells.append("-" if m is None else f"{m:.0f}")
    cells += [ratio(test, "local"), ratio(test, "sshfs"), ratio(test, "passthrough")]
    table.append(cells)
widths = [max(len(r[i]) for r in table) for i in range(len(header))]
def line(cells):
    return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))) + " |"
print(line(table[0]))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in table[1:]:
    print(line(r))
print()
if runs > 1:
    print("Each number is the median of the runs; each ratio the median of the runs' own "
          "ratios, with the lowest and highest in brackets.")
    print()
# The network's floor for random reads, in each run: its round trip added to that run's
# passthrough_ll read.
floors, over_sshfs, shares = [], [], []
for r in range(1, runs + 1):
    rtt, pt, hf, ss = (value.get(k) for k in (("network", "rtt", r), ("passthrough", "rand", r),
                                             ("homefs", "rand", r), ("sshfs", "rand", r)))
    if rtt and pt and hf:
        floor = 1e6 / (1e6 / pt + rtt)
        floors.append(floor / pt)
        shares.append(hf / floor)
        if ss:
            over_sshfs.append(floor / ss)
rtt, pt = median("network", "rtt"), median("passthrough", "rand")
if floors:
    sshfs_part = (f" and {statistics.median(over_sshfs):.2f}x as often as sshfs"
                  if over_sshfs else "")
    print(f"The network's floor for 4 KiB random reads: a TCP round trip on loopback between "
          f"two processes (64 B asked, 4 KiB answered) takes {rtt:.1f} us here (median), and "
          f"passthrough_ll's read {1e6 / pt:.1f} us, so a networked file system reads at most "
          f"{statistics.median(floors):.2f}x as often as passthrough_ll here{sshfs_part}; "
          f"homefs makes {statistics.median(shares):.2f}x of that (medians of the runs' own).")
PY
} | tee "$RESULTS"
