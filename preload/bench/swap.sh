#!/usr/bin/env bash
# Large-allocation workload (tests/c/workset.c: 4 MiB blocks, fill + two read-modify-write sweeps + scattered
# updates) at a 25% budget: farmem (embedded memd on loopback) against kernel swap to zram under a memory
# cgroup of the same limit (../shared/tools/swap-peer, by hand: it needs root, zram and cgroup v1), and a
# plain run. Usage: preload/bench/swap.sh [MIB] ; the budget is MIB/4.
set -euo pipefail
cd "$(dirname "$0")/../.."
mib=${1:-256}; budget=$((mib / 4))M
peer=${SWAP_PEER:-../shared/tools/swap-peer}
[ -x target/release/farmem ] && [ -f target/release/libfarmem_preload.so ] ||
  { echo "build first: cargo build --release -p farmem-preload" >&2; exit 1; }
bin=$(mktemp -d)/workset
trap 'rm -rf "$(dirname "$bin")"' EXIT
gcc -O2 -o "$bin" preload/tests/c/workset.c
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >"$bin.out" 2>"$bin.err" || return $?; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
plain=$(secs "$bin" "$mib"); plain_sum=$(awk '{print $2}' "$bin.out")
far=$(secs target/release/farmem run --local-mem "$budget" --stats -- "$bin" "$mib"); far_sum=$(awk '{print $2}' "$bin.out")
far_rss=$(awk '{print $4}' "$bin.out"); far_stats=$(grep faults "$bin.err" || true)
set +e
swap=$(secs "$peer" --limit "$budget" -- "$bin" "$mib"); rc=$?
set -e
echo "working set $mib MiB, budget $budget"
printf '  plain        %6.2f s\n' "$plain"
printf '  farmem       %6.2f s  peak RSS %s KiB  (%s)\n' "$far" "$far_rss" "$far_stats"
if [ "$rc" = 77 ]; then echo "  kernel swap  skipped: swap-peer cannot set up zram/cgroup here (exit 77)"; exit 0; fi
[ "$rc" = 0 ] || { echo "swap-peer failed ($rc): $(cat "$bin.err")" >&2; exit 1; }
printf '  kernel swap  %6.2f s  (%s)\n' "$swap" "$(grep swap-peer "$bin.err")"
[ "$far_sum" = "$plain_sum" ] && [ "$(awk '{print $2}' "$bin.out")" = "$plain_sum" ] || { echo "checksums differ" >&2; exit 1; }
echo "time ratio farmem/swap = $(echo "scale=2; $far / $swap" | bc), farmem/plain = $(echo "scale=1; $far / $plain" | bc)"
