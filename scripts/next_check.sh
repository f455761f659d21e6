#!/usr/bin/env bash
# The next GPU checks, in priority order (BENCHMARKS.md, "Next GPU check": what each measures,
# its predictions and how long it takes). Each is call 3 of ../shared/GPU.md, at most 600 s:
#
#   scripts/next_check.sh A   recipe 94's n >= 200 accuracy claim (4 processes sharing the GPU),
#                             then its time beside airbench94_muon's and beside commit
#                             181efb7's (the exact levers since then)
#   scripts/next_check.sh B   the second reference: hiverge's cifar10_speedrun beside recipe 94
#                             and airbench94_muon, then a profile of recipe 94's run
#   scripts/next_check.sh C   the recipe levers and kernel autotuning: one pruned sweep of
#                             variants against recipe 94, interleaved run by run
#   scripts/next_check.sh D   recipes 95 and 96, the 4 GiB cap, torchrun (nccl) against a plain run
#
# It needs, in the checkout (all ignored by git; BENCHMARKS.md says how to make them):
#   .ref/airbench94_muon.py   KellerJordan/cifar10-airbench f1c599c           (A, B)
#   .ref/cifar10_speedrun.py  hiverge's 1.98 s script, 06c6072 (= fulcrumresearch ddec65f
#                             base/cifar10_speedrun.py)                       (B)
#   .ref/base/                main.py and hlb/ of commit 181efb7               (A)
# and, as ../shared/GPU.md sets them, HLB_DATA_DIR, CACHE_IN and OUT.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
check=${1:-}
need() {
  for path in "$@"; do
    [ -e "$here/$path" ] && continue
    echo "error: $path is missing; BENCHMARKS.md (\"Next GPU check\") says how to make it" >&2
    exit 2
  done
}
# The levers of part 3 as sweep cells, each against recipe 94 (the base); 94tuned is
# hiverge's tuning in our units (hlb/recipes.py).
LEVERS=("--set activation=silu" "--set augment=crop,flip,jitter"
        "--set image_sizes=24,24,28,28,32" "--set clean_epochs=1" "--recipe 94tuned"
        "--set compile_mode=max-autotune-no-cudagraphs")
export BUDGET_S=${BUDGET_S:-540}
case "$check" in
  A)
    need .ref/airbench94_muon.py .ref/base/main.py
    export ACCURACY="claim 94 200 4"
    export REFERENCES="airbench $here/.ref/airbench94_muon.py 10"
    base_flags="--set capture_step=true --set compile=true --set tta_fraction=0.25"
    export VARIANTS="default 94 15; base .ref/base:94muon 15 $base_flags" ;;
  B)
    need .ref/airbench94_muon.py .ref/cifar10_speedrun.py
    export REFERENCES="airbench $here/.ref/airbench94_muon.py 10; hiverge $here/.ref/cifar10_speedrun.py 10"
    export REF_PROFILE=0 VARIANTS="default 94 15" PROFILE=default ;;
  C)
    cells=()
    for lever in "${LEVERS[@]}"; do cells+=(--cell "'$lever'"); done
    export VARIANTS=""
    export SWEEP="levers 10 --recipe 94 --prune ${cells[*]}" ;;
  D)
    export CAP_GB=4 VARIANTS="default 94 3; r95 95 10; r96 96 4" ;;
  *)
    echo "usage: scripts/next_check.sh A|B|C|D (BENCHMARKS.md, \"Next GPU check\")" >&2
    exit 2 ;;
esac
bash "$here/scripts/gpu_check.sh" 0
status=$?
if [ "$check" = D ] && [ "$status" != 124 ]; then
  # torchrun over nccl with one process against a plain run, 5 runs each, after the check.
  cd "$here" && for how in plain torchrun; do
    launch=("${PYTHON:-python3}")
    [ "$how" = torchrun ] && launch+=(-m torch.distributed.run --standalone --nproc_per_node=1)
    "${launch[@]}" main.py --recipe 94 --runs 5 --no-save --data-dir "${HLB_DATA_DIR:-data}" \
      --json "$OUT/$how.json" 2>&1 | tail -n 6
  done
fi
exit "$status"
