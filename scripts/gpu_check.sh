#!/usr/bin/env bash
# One GPU check in one call: environment, data, the card's measured matmul rate, a reference
# script's runs, then our variants, each after its untimed warm-up, and last a table comparing
# them. Full logs and records go to $OUT.
#
#   scripts/gpu_check.sh [RUNS] [REFERENCE_SCRIPT] [REFERENCE_RUNS]
#
# What runs, in this order:
#   1. the reference (if given), REFERENCE_RUNS runs, in a scratch folder on the same data;
#   2. CAP_GB (if set): 3 runs of the first variant with the GPU capped at that many GiB;
#   3. PROFILE (if set, a variant's label): one profiled run of it (scripts/profile_run.py);
#   4. the variants, in the order given.
# Every stage stops at the budget (BUDGET_S seconds for the whole check, default 570): a
# variant cut short keeps its finished runs, so list the most important first.
#
# Environment:
#   VARIANTS  one per line or ';'-separated: "LABEL RECIPE RUNS [main.py flags]", e.g.
#             "muon 94muon 40; muon-ro 94muon 20 --set compile=true --set compile_mode=reduce-overhead"
#             Default: one variant per name in RECIPE (default 94), RUNS runs each, with EXTRA.
#   HLB_DATA_DIR (default ./data), OUT (default ./gpu_check_out), DEVICE (default cuda).
# Exit status: 0 when every variant finished all its runs; else the last failing variant's
# (124: cut by the budget). On a CPU, `DEVICE=cpu VARIANTS="s smoke 1" scripts/gpu_check.sh`
# exercises all but the matmul rate and the cap.
set -uo pipefail
export PYTHONUNBUFFERED=1
RUNS=${1:-50}
REF=${2:-}
REF_RUNS=${3:-25}
DEVICE=${DEVICE:-cuda}
DATA=${HLB_DATA_DIR:-data}
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-570}
RESERVE_S=15                       # kept back for the summary
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${VARIANTS:-}" ]; then
  VARIANTS=""
  for recipe in ${RECIPE:-94}; do VARIANTS+="$recipe $recipe $RUNS ${EXTRA:-};"; done
fi
labels=() recipes=() counts=() flags=()
while IFS= read -r line; do
  read -r label recipe count rest <<<"$line"
  [ -n "${label:-}" ] || continue
  if [ -z "${count:-}" ] || ! [[ "$count" =~ ^[0-9]+$ ]]; then
    echo "error: VARIANTS entry '$line': expected LABEL RECIPE RUNS [flags]" >&2
    exit 2
  fi
  labels+=("$label") recipes+=("$recipe") counts+=("$count") flags+=("${rest:-}")
done < <(tr ';' '\n' <<<"$VARIANTS")

# Seconds left for a stage, the summary's reserve kept back; 0 when the budget is spent.
left() { local s=$((BUDGET_S - SECONDS - RESERVE_S)); echo $((s > 0 ? s : 0)); }
# Run a stage under the budget: SIGTERM at the limit (main.py then keeps its finished runs
# and writes its record), SIGKILL 20 s later if it is still there.
budgeted() {
  local s; s=$(left)
  if [ "$s" -lt 5 ]; then echo "(skipped: the budget is spent)"; return 124; fi
  timeout -k 20 "$s" "$@"
}

echo "== environment"
date -u +%Y-%m-%dT%H:%M:%SZ
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
git -C "$here" log -1 --format='commit %h %s' 2>/dev/null

echo "== data"
if [ ! -d "$DATA/cifar-10-batches-py" ] && [ -f "$here/.cifar10/materialize.py" ]; then
  python3 "$here/.cifar10/materialize.py" "$DATA" | tail -n 1 || exit 1
fi

if [ "$DEVICE" = cuda ]; then
  echo "== measured fp16/bf16 matmul rate (8192^3, mean of 20 after 3 warm-ups)"
  python3 - <<'EOF' 2>&1 | tee "$OUT/matmul.log"
import torch
n = 8192
for dtype in (torch.float16, torch.bfloat16):
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 20
    print(f"{dtype}: {2 * n**3 / seconds / 1e12:.0f} TFLOP/s")
EOF
fi

ref_args=()
if [ -n "$REF" ]; then
  echo "== reference: $REF, $REF_RUNS runs, at most $(left) s (compile included)"
  # The reference reads ./cifar10/ (torchvision layout, same verified files) and may hard-code
  # its run count; run a copy in a scratch folder with the count cut to REF_RUNS.
  work=$(mktemp -d)
  ln -s "$(cd "$DATA" && pwd)" "$work/cifar10"
  sed "s/in range(200)/in range($REF_RUNS)/" "$REF" > "$work/reference.py"
  start=$(date +%s)
  (cd "$work" && budgeted python3 reference.py) 2>&1 | tee "$OUT/reference.log"
  echo "reference wall clock: $(( $(date +%s) - start )) s (compile and warm-up included)"
  ref_args=(--reference "$OUT/reference.log")
fi

if [ -n "${CAP_GB:-}" ] && [ "$DEVICE" = cuda ]; then
  echo "== ${labels[0]} under a ${CAP_GB} GiB memory cap, 3 runs"
  # shellcheck disable=SC2086
  budgeted python3 "$here/scripts/capped_main.py" "$CAP_GB" --recipe "${recipes[0]}" --runs 3 \
    --no-save --data-dir "$DATA" ${flags[0]} 2>&1 | tail -n 12 | tee "$OUT/capped.log"
fi

if [ -n "${PROFILE:-}" ]; then
  for i in "${!labels[@]}"; do
    [ "${labels[$i]}" = "$PROFILE" ] || continue
    echo "== profile of ${labels[$i]}: one run after a warm-up"
    # shellcheck disable=SC2086
    budgeted python3 "$here/scripts/profile_run.py" --recipe "${recipes[$i]}" \
      --device "$DEVICE" --data-dir "$DATA" ${flags[$i]} 2>&1 | tee "$OUT/profile-$PROFILE.log"
  done
fi

ours_status=0
records=()
for i in "${!labels[@]}"; do
  label=${labels[$i]}
  echo "== ours: $label = recipe ${recipes[$i]} ${flags[$i]}, ${counts[$i]} timed runs" \
       "after one untimed warm-up, at most $(left) s"
  # shellcheck disable=SC2086
  budgeted python3 "$here/main.py" --recipe "${recipes[$i]}" --runs "${counts[$i]}" \
    --device "$DEVICE" --no-save --data-dir "$DATA" --json "$OUT/ours-$label.json" \
    ${flags[$i]} 2>&1 | tee "$OUT/ours-$label.log"
  status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || ours_status=$status
  [ -f "$OUT/ours-$label.json" ] && records+=("$OUT/ours-$label.json")
done

echo "== summary"
python3 "$here/scripts/gpu_summary.py" "${records[@]}" "${ref_args[@]}" | tee "$OUT/summary.txt"
exit "$ours_status"
