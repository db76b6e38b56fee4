#!/usr/bin/env bash
# User-space instructions and atomic read-modify-writes per response of the throughput bench's
# server while wrk saturates it.
#
#   bash benches/instructions_under_load.sh [VARIANT ...]      (default: the variants below)
#
# Each variant (a name as `VIGIL_BENCH_SERVE` takes it) is served by the throughput bench under
# `valgrind --tool=callgrind`; `wrk -t1 -c64` keeps all 64 connections busy, as in the issue's
# benchmark, so the server always has requests waiting. The counters are zeroed after a warm-up
# and dumped after a fixed window; the instructions of the whole process in that window, divided
# by the responses wrk counted, are the figure. Instructions do not drift with the machine's
# speed, which on a shared VM moves wall-clock ratios by more than the few per cent compared
# here. Kernel work (the socket) is not counted: on this machine it is about 63 % of a bare
# server's CPU time under this load.
#
# Atomic read-modify-writes (`lock`-prefixed instructions and `xchg` with memory, found with
# objdump in the binary and in libc) are counted apart: each costs tens of cycles where most
# instructions cost a fraction of one, so they weigh more than their share of the count.
#
# Needs valgrind, wrk, objdump and python3 (Debian: `apt-get install valgrind wrk binutils`);
# CI does not run this.
# Settings: WINDOW_SECS (default 5), PORT (default 3310).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in valgrind callgrind_control callgrind_annotate wrk taskset objdump python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk)" >&2; exit 2; }
done

window=${WINDOW_SECS:-5}
port=${PORT:-3310}
if [ $# -eq 0 ]; then
    set -- "bare axum" "around the future" "future and the body" "timeoutlayer" "watchdoglayer" \
        "timeboxlayer (defaults" "profilerlayer" "vigil (defaults)" "vigil (lean" "vigil (least"
fi

binary=$(cargo bench --no-run --bench throughput --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*throughput-[^"]*\)".*/\1/p' | tail -1)
[ -x "$binary" ] || { echo "could not build the throughput bench" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

load() { taskset -c 1 wrk -t1 -c64 -d"$1"s "http://127.0.0.1:$port/api/job"; }

# Sums the executions of atomic instructions in a callgrind dump made with --dump-instr=yes and
# --compress-strings=no (every cost line then names its object and starts with an address).
count_atomics() {
    python3 - "$1" <<'PY'
import re, subprocess, sys
atomic = {}
def atomics_of(path):
    if path not in atomic:
        listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                                 capture_output=True, text=True).stdout
        atomic[path] = {int(m.group(1), 16) for m in
                        re.finditer(r"^\s+([0-9a-f]+):\s+(?:lock |xchg [^\n]*\()", listing, re.M)}
    return atomic[path]
total, obj, addr, after_call = 0, None, 0, False
for line in open(sys.argv[1]):
    if line.startswith("ob="):
        obj = line[3:].strip(); continue
    if line.startswith("calls="):
        after_call = True; continue
    m = re.match(r"^(0x[0-9a-f]+|[+-]\d+|\*)\s+\S+\s+(\d+)", line)
    if not m or line.startswith(("fn=", "fl=", "fi=", "fe=", "c")):
        continue
    a = m.group(1)
    addr = int(a, 16) if a.startswith("0x") else addr + (0 if a == "*" else int(a))
    if after_call:
        after_call = False; continue  # the inclusive cost of a call, not an execution
    if obj and obj.startswith("/") and addr in atomics_of(obj):
        total += int(m.group(2))
print(total)
PY
}

echo "| variant | responses counted | instructions per response | vs bare axum | atomic RMWs per response | vs bare axum |"
echo "|---|---|---|---|---|---|"
bare=""
for variant in "$@"; do
    # A port of its own per variant: the last server's port may not be free yet.
    port=$((port + 1))
    VIGIL_BENCH_SERVE="$variant" VIGIL_BENCH_PORT="$port" valgrind --tool=callgrind \
        --dump-instr=yes --compress-strings=no \
        --callgrind-out-file="$work/out.%p" "$binary" >"$work/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 1200); do grep -q 'until killed' "$work/serve.log" && break; sleep 0.1; done
    name=$(sed -n 's/^serving \(.*\) on http.*/\1/p' "$work/serve.log")
    [ -n "$name" ] || { cat "$work/serve.log" >&2; kill "$server"; exit 1; }
    load 2 >/dev/null
    callgrind_control -z "$server" >/dev/null 2>&1
    responses=$(load "$window" | awk '/requests in/ {print $1}')
    callgrind_control -d "$server" >/dev/null 2>&1
    kill "$server"
    wait "$server" 2>/dev/null || true
    # The dump after zeroing is the file numbered 1.
    total=$(callgrind_annotate "$work"/out.*.1 2>/dev/null |
        awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    atomics=$(count_atomics "$work"/out.*.1)
    rm -f "$work"/out.*
    per=$((total / responses))
    atomics_per=$(awk -v a="$atomics" -v n="$responses" 'BEGIN {printf "%.1f", a / n}')
    [ -n "$bare" ] || { bare=$per; bare_atomics=$atomics_per; }
    more=$(awk -v a="$per" -v b="$bare" 'BEGIN {printf "%+d", a - b}')
    more_atomics=$(awk -v a="$atomics_per" -v b="$bare_atomics" 'BEGIN {printf "%+.1f", a - b}')
    echo "| $name | $responses | $per | $more | $atomics_per | $more_atomics |"
done
