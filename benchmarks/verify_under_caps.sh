#!/usr/bin/env bash
# Issue 31: `nrrstore verify` on a healthy store under address-space caps (ulimit -v) from 256 to 520 MiB, one
# run per 8 MiB, SIGTERM after 12 s. Prints each cap's last stderr line and a count per outcome: the "out of
# memory" line, "ok", a report of problems (the failure the issue forbids: a healthy store called corrupt), the
# stuck-command stop line, deaths inside a C library (glibc's TLS abort, C++ bad_alloc) told in one line by the
# supervising parent (`nrrstore_cli.supervise`), and any such death that still ends with the library's own text.
#   bash benchmarks/verify_under_caps.sh STORE
set -uo pipefail
cd "$(dirname "$0")/.."
store=$1 tmp=$(mktemp -d)
declare -A count
for mb in $(seq 256 8 520); do
  (ulimit -v $((mb * 1024)); exec timeout -k 30 -s TERM 12 .venv/bin/nrrstore verify "$store" >"$tmp/out" 2>"$tmp/err")
  rc=$?
  last=$(tail -1 "$tmp/err")
  case "$last" in
    *"stuck in a library call"*) kind=stuck-stopped ;;
    *"inside a C library"*|*"killed by SIG"*) kind=c-library-death-one-line ;;
    *"out of memory"*) kind=out-of-memory-line ;;
    *"problem(s) found"*) kind=called-corrupt ;;
    *Traceback*|*Error*) kind=traceback ;;
    "") grep -q "ok" "$tmp/out" && kind=ok || kind=no-line ;;
    *) kind=c-library-abort ;;
  esac
  lines=$(grep -c . "$tmp/err")
  [ "$lines" -gt 1 ] && kind="$kind+$((lines - 1))-more-lines"  # one line is the contract: count any extra
  count[$kind]=$(( ${count[$kind]:-0} + 1 ))
  echo "$mb MiB rc=$rc $kind: ${last:0:140}"
done
echo "== outcomes over $(seq 256 8 520 | wc -l) caps"
for k in "${!count[@]}"; do echo "$k ${count[$k]}"; done | sort
rm -rf "$tmp"
