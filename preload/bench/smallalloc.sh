#!/usr/bin/env bash
# Small-allocation benchmark (issue 4's goal: the shim within 1.05x of mimalloc's own preload). One program
# (smallalloc.c), the same arguments and the same allocation sequence under every allocator:
#   glibc      no preload
#   mi-2.0.9   Debian's libmimalloc2.0, mimalloc's own preload override: the goal's baseline
#   mi-2.3     the mimalloc source the shim links (libmimalloc-sys's vendored v2.3), built here as an override
#              .so with upstream's CMake release flags: the same mimalloc as ours, so farmem/mi-2.3 is the
#              shim's own overhead
#   farmem     libfarmem_preload.so, far memory not running (nothing reaches the threshold)
#   farmem+far `farmem run --threshold 1M`, the program allocating one 8 MiB block first so far memory runs
#              (timings only: valgrind can neither map the region nor run userfaultfd)
#
# 1. Instructions per malloc+free pair (callgrind, one thread; deterministic, unlike timings on a shared
#    2-core VM). The slope between two run lengths cancels start-up; it includes the loop (~34 instructions).
# 2. Timings, ROUNDS rounds with the allocators interleaved within each round (in rotating order): operations per second of
#    wall-clock time and per second of the threads' CPU time (not inflated by time slices other processes
#    take). The ratios are taken per round (paired) and reported as median [min-max].
#
# Usage: preload/bench/smallalloc.sh [THREADS] [ITERS] [ROUNDS]
# Needs: gcc, valgrind (for 1), python3, Debian's libmimalloc2.0 (apt-get install -y libmimalloc2.0), and
# `cargo build --release -p farmem-preload`.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; iters=${2:-5000000}; rounds=${3:-10}
target=${CARGO_TARGET_DIR:-target}
shim=$target/release/libfarmem_preload.so
farmem=$target/release/farmem
mi=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
[ -f "$shim" ] && [ -x "$farmem" ] || { echo "build the shim first: cargo build --release -p farmem-preload" >&2; exit 1; }
[ -f "$mi" ] || { echo "install the baseline first: apt-get install -y libmimalloc2.0" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
bin=$dir/smallalloc
gcc -O2 -pthread -o "$bin" preload/bench/smallalloc.c

# mimalloc 2.3 as a preload override, from the exact source libmimalloc-sys compiled into the shim.
misrc=$(cargo metadata --format-version 1 --offline 2>/dev/null | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "libmimalloc-sys":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "c_src", "mimalloc", "v2")); break')
mi23=$dir/libmimalloc-2.3.so
gcc -O3 -DNDEBUG -fPIC -shared -fvisibility=hidden -ftls-model=initial-exec -fno-builtin-malloc \
  -DMI_SHARED_LIB -DMI_SHARED_LIB_EXPORT -DMI_MALLOC_OVERRIDE -I"$misrc/include" \
  -o "$mi23" "$misrc/src/static.c" -lpthread
echo "mi-2.3 baseline: $(LD_PRELOAD=$mi23 MIMALLOC_VERBOSE=1 "$bin" 1 1 2>&1 | grep -o 'v2\.[0-9.]*' | head -1) from $misrc"

# run NAME THREADS ITERS: prints the program's wall-clock and CPU-time M ops/s
run() {
  case $1 in
    glibc) env -u LD_PRELOAD "$bin" "$2" "$3" ;;
    mi-2.0.9) LD_PRELOAD=$mi "$bin" "$2" "$3" ;;
    mi-2.3) LD_PRELOAD=$mi23 "$bin" "$2" "$3" ;;
    farmem) env -u FARMEM_SERVER LD_PRELOAD=$shim "$bin" "$2" "$3" ;;
    farmem+far) "$farmem" run --threshold 1M --local-mem 64M -- "$bin" "$2" "$3" 8 ;;
  esac | awk '{print $2 "/" $4}'
}
names=(glibc mi-2.0.9 mi-2.3 farmem farmem+far)

if command -v valgrind >/dev/null; then
  ir() {
    local pre=""
    case $1 in mi-2.0.9) pre=$mi ;; mi-2.3) pre=$mi23 ;; farmem) pre=$shim ;; esac
    env -u FARMEM_SERVER LD_PRELOAD=$pre valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 1 "$2" 2>&1 |
      awk '/Collected/ {print $4}'
  }
  declare -A ins
  for n in glibc mi-2.0.9 mi-2.3 farmem; do
    a=$(ir "$n" 100000); b=$(ir "$n" 400000); ins[$n]=$(echo "($b - $a) / 300000" | bc -l)
  done
  echo "instructions per malloc+free (callgrind, 1 thread, incl. the loop):"
  for n in glibc mi-2.0.9 mi-2.3 farmem; do printf '  %-10s %6.1f\n' "$n" "${ins[$n]}"; done
  awk -v f="${ins[farmem]}" -v m="${ins[mi-2.0.9]}" -v m3="${ins[mi-2.3]}" -v g="${ins[glibc]}" 'BEGIN {
    printf "  farmem/mi-2.0.9 = %.3f (goal <= 1.05), farmem/mi-2.3 = %.3f, farmem/glibc = %.3f\n", f/m, f/m3, f/g }'
fi

echo "timings: $threads threads x $iters malloc/free pairs, $rounds rounds interleaved (M ops/s):"
declare -A res
for n in "${names[@]}"; do res[$n]=""; done
for r in $(seq 0 $((rounds - 1))); do
  # each round starts at the next allocator, so no row always runs right after the same neighbour
  for i in $(seq 0 $((${#names[@]} - 1))); do
    n=${names[$(((r + i) % ${#names[@]}))]}
    res[$n]+="$(run "$n" "$threads" "$iters") "
  done
done
cat >"$dir/summary.py" <<'PY'
import statistics, sys
res = {}
for line in sys.stdin:
    name, *runs = line.split()
    res[name] = [tuple(float(x) for x in r.split("/")) for r in runs]
def med(v):
    return "%7.2f [%.2f-%.2f]" % (statistics.median(v), min(v), max(v))
print("  %-10s  %-30s  %s" % ("", "wall-clock, median [min-max]", "CPU time, median [min-max]"))
for n, v in res.items():
    print("  %-10s  %-30s  %s" % (n, med([w for w, _ in v]), med([c for _, c in v])))
def ratio(a, b, i):  # time ratio a/b in each round: b's ops/s over a's
    r = [y[i] / x[i] for x, y in zip(res[a], res[b])]
    return "%.3f [%.3f-%.3f]" % (statistics.median(r), min(r), max(r))
print("  time ratios per round, median [min-max]:   wall-clock             CPU time")
for a, b in [("farmem", "mi-2.0.9"), ("farmem", "mi-2.3"), ("farmem+far", "mi-2.0.9"), ("farmem", "glibc")]:
    print("    %-40s %-22s %s" % (a + "/" + b, ratio(a, b, 0), ratio(a, b, 1)))
PY
for n in "${names[@]}"; do echo "$n ${res[$n]}"; done | python3 "$dir/summary.py"
