#!/usr/bin/env bash
# Small-allocation benchmark: the shim (libfarmem_preload.so, no far memory involved at these sizes) against
# mimalloc's own preload override and glibc, measured in one run, interleaved, best of ROUNDS.
# Usage: preload/bench/smallalloc.sh [THREADS] [ITERS] [ROUNDS]
# Needs: gcc, `cargo build --release -p farmem-preload`, and Debian's libmimalloc2.0 for the baseline.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}; iters=${2:-5000000}; rounds=${3:-5}
shim=target/release/libfarmem_preload.so
mi=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
[ -f "$shim" ] || { echo "build the shim first: cargo build --release -p farmem-preload" >&2; exit 1; }
[ -f "$mi" ] || { echo "install the baseline first: apt-get install -y libmimalloc2.0" >&2; exit 1; }
bin=$(mktemp -d)/smallalloc
trap 'rm -rf "$(dirname "$bin")"' EXIT
gcc -O2 -pthread -o "$bin" preload/bench/smallalloc.c
best() { sort -g | tail -1; }
declare -A res
for name in glibc mimalloc farmem; do res[$name]=""; done
for r in $(seq "$rounds"); do
  res[glibc]+="$(env -u LD_PRELOAD "$bin" "$threads" "$iters" | awk '{print $2}')"$'\n'
  res[mimalloc]+="$(LD_PRELOAD=$mi "$bin" "$threads" "$iters" | awk '{print $2}')"$'\n'
  res[farmem]+="$(env -u FARMEM_SERVER LD_PRELOAD=$shim "$bin" "$threads" "$iters" | awk '{print $2}')"$'\n'
done
g=$(printf '%s' "${res[glibc]}" | best); m=$(printf '%s' "${res[mimalloc]}" | best); f=$(printf '%s' "${res[farmem]}" | best)
echo "small allocations (16-512 B), $threads threads x $iters malloc/free pairs, best of $rounds (M ops/s):"
printf '  glibc     %8.2f\n  mimalloc  %8.2f\n  farmem    %8.2f\n' "$g" "$m" "$f"
awk -v g="$g" -v m="$m" -v f="$f" 'BEGIN {
  printf "time ratio farmem/mimalloc = %.3f (goal <= 1.05), farmem/glibc = %.3f\n", m / f, g / f }'

# Instructions per malloc/free pair (callgrind; one thread): independent of the machine's load, which on a
# shared 2-core VM makes the timings above swing by 30%. The slope between two run lengths cancels start-up.
if command -v valgrind >/dev/null; then
  ir() { LD_PRELOAD=$1 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 1 "$2" 2>&1 | awk '/Collected/ {print $4}'; }
  slope() { local a b; a=$(ir "$1" 100000); b=$(ir "$1" 400000); echo "($b - $a) / 300000" | bc -l; }
  ig=$(slope ""); im=$(slope "$mi"); if_=$(slope "$shim")
  printf 'instructions per malloc+free (incl. the loop): glibc %.1f, mimalloc %.1f, farmem %.1f\n' "$ig" "$im" "$if_"
  awk -v m="$im" -v f="$if_" 'BEGIN { printf "instruction ratio farmem/mimalloc = %.3f\n", f / m }'
fi
