#!/usr/bin/env bash
# The README's main job (`vldistill sweep`, the default space), timed side by side: an older
# revision against this checkout, each from a temporary directory (python -m / console
# scripts put the cwd first) with a fresh VLDISTILL_CACHE, W&B offline. Run it on an idle
# machine; pairs alternate the order (old new, new old, ...).
#
#   benchmarks/main_job_ab.sh [OLD_REV=62b11f8] [PAIRS=2]
#
# 62b11f8: the last commit before the shared assets became Ray work (issue 13's baseline).
# Session 7 (2026-12-07, 2-core VM): old 408.5 / 401.0 s, new 418.4 / 427.6 s (+4.5% on the means).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
old_rev="${1:-62b11f8}"; pairs="${2:-2}"
work="$(mktemp -d /tmp/main-job-ab-XXXX)"
git -C "$here" worktree add -q --detach "$work/old" "$old_rev"
trap 'git -C "$here" worktree remove --force "$work/old" >/dev/null 2>&1 || true' EXIT
export WANDB_MODE=offline
declare -A total=([old]=0 [new]=0)
for i in $(seq 1 "$pairs"); do
  order="old new"; [ $((i % 2)) -eq 0 ] && order="new old"
  for side in $order; do
    d="$work/$side-$i"; mkdir -p "$d"
    code="$here"; [ "$side" = old ] && code="$work/old"
    start=$(date +%s.%N)
    (cd "$d" && VLDISTILL_CACHE="$d/cache" WANDB_DIR="$d" PYTHONPATH="$code" \
       vldistill sweep out_dir="$d/runs" > "$d/log.txt" 2>&1)
    s=$(python3 -c "print($(date +%s.%N) - $start)")
    total[$side]=$(python3 -c "print(${total[$side]} + $s)")
    printf '%s pair %d: %.1f s (%s)\n' "$side" "$i" "$s" "$d/log.txt"
  done
done
printf 'new / old (means over %d pairs): %.3f\n' "$pairs" "$(python3 -c "print(${total[new]} / ${total[old]})")"
