#!/usr/bin/env bash
# One GPU check in one call: environment, data, the H100's measured matmul rate, N timed runs of
# a recipe (after its untimed warm-up), optionally M runs of a reference script on the same data,
# and last a short table comparing the two. Full logs and records go to $OUT.
#
#   scripts/gpu_check.sh [RUNS] [REFERENCE_SCRIPT] [REFERENCE_RUNS]
#
# Environment: RECIPE (default 94; several, space-separated, run one after another, each
# with its own warm-up: RECIPE="94 94muon"), HLB_DATA_DIR (default ./data),
# OUT (default ./gpu_check_out), EXTRA (more flags for main.py, e.g. "--set compile=true"), BUDGET_S (seconds the whole check
# may take, default 570: the reference gets what is left), DEVICE (default cuda), CAP_GB (if
# set, 3 more runs of the first recipe with the GPU capped at that many GiB).
# On a CPU, `DEVICE=cpu RECIPE=smoke scripts/gpu_check.sh 2` exercises everything but the
# reference and the matmul rate.
set -uo pipefail
export PYTHONUNBUFFERED=1
RUNS=${1:-50}
REF=${2:-}
REF_RUNS=${3:-25}
RECIPE=${RECIPE:-94}
DEVICE=${DEVICE:-cuda}
DATA=${HLB_DATA_DIR:-data}
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-570}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/.." && pwd)

echo "== environment"
date -u +%Y-%m-%dT%H:%M:%SZ
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

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

ours_status=0
records=()
for recipe in $RECIPE; do
  echo "== ours: recipe $recipe, $RUNS timed runs after one untimed warm-up"
  # shellcheck disable=SC2086
  python3 "$here/main.py" --recipe "$recipe" --runs "$RUNS" --device "$DEVICE" --no-save \
    --data-dir "$DATA" --json "$OUT/ours-$recipe.json" ${EXTRA:-} 2>&1 \
    | tee "$OUT/ours-$recipe.log"
  status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || ours_status=$status
  [ -f "$OUT/ours-$recipe.json" ] && records+=("$OUT/ours-$recipe.json")
done

if [ -n "${CAP_GB:-}" ] && [ "$DEVICE" = cuda ]; then
  first=${RECIPE%% *}
  echo "== recipe $first under a ${CAP_GB} GiB memory cap, 3 runs"
  python3 "$here/scripts/capped_main.py" "$CAP_GB" --recipe "$first" --runs 3 --no-save \
    --data-dir "$DATA" ${EXTRA:-} 2>&1 | tail -n 12 | tee "$OUT/capped.log"
fi

ref_args=()
if [ -n "$REF" ]; then
  left=$((BUDGET_S - SECONDS))
  echo "== reference: $REF, $REF_RUNS runs, at most ${left} s (compile included)"
  # The reference reads ./cifar10/ (torchvision layout, same verified files) and may hard-code
  # its run count; run a copy in a scratch folder with the count cut to REF_RUNS.
  work=$(mktemp -d)
  ln -s "$(cd "$DATA" && pwd)" "$work/cifar10"
  sed "s/in range(200)/in range($REF_RUNS)/" "$REF" > "$work/reference.py"
  start=$(date +%s)
  (cd "$work" && timeout "$left" python3 reference.py) 2>&1 | tee "$OUT/reference.log"
  echo "reference wall clock: $(( $(date +%s) - start )) s (compile and warm-up included)"
  ref_args=(--reference "$OUT/reference.log")
fi

echo "== summary"
python3 "$here/scripts/gpu_summary.py" "${records[@]}" "${ref_args[@]}" | tee "$OUT/summary.txt"
exit "$ours_status"
