#!/usr/bin/env bash
# The next GPU checks, in priority order (BENCHMARKS.md, "Next GPU check": what each measures,
# its predictions and how long it takes). Each is call 3 of ../shared/GPU.md, at most 600 s
# (BUDGET_S 540 of gpu_check.sh, the data's materializing before it):
#
#   scripts/next_check.sh A1  recipe 94's n >= 200 accuracy claim (4 processes sharing the GPU),
#                             then its time (and peak memory) beside commit 181efb7's and
#                             beside airbench94_muon's (A alone is A1)
#   scripts/next_check.sh A2  recipe 94 beside its T4-like path (compile off, capture on) and
#                             beside hiverge's cifar10_speedrun, then airbench94_muon again
#   scripts/next_check.sh C   the recipe levers: one pruned sweep against recipe 94,
#                             interleaved run by run
#   scripts/next_check.sh T   the search: `main.py tune`, 4 workers sharing the GPU, 40 trials
#                             of 4 runs over recipe 94's values and the levers of C
#   scripts/next_check.sh D   recipes 95 and 96, recipe 94 under a 3 GiB cap and under
#                             torchrun beside a plain run, then a profile of its run
#   scripts/next_check.sh E   kernel autotuning (max-autotune-no-cudagraphs) beside recipe 94
#
# It needs, in the checkout (all ignored by git; BENCHMARKS.md says how to make them):
#   .ref/airbench94_muon.py   KellerJordan/cifar10-airbench f1c599c           (A1, A2)
#   .ref/cifar10_speedrun.py  hiverge's 1.98 s script, 06c6072 (= fulcrumresearch ddec65f
#                             base/cifar10_speedrun.py)                       (A2)
#   .ref/base/                main.py and hlb/ of commit 181efb7               (A1)
#   .whl/                     Optuna and the packages it needs, as wheels    (T)
# and, as ../shared/GPU.md sets them, HLB_DATA_DIR, CACHE_IN and OUT. REF_DIR (default .ref
# in the checkout) and WHEELS (default .whl) say where the first and last are. PLAN_ONLY=1
# prints the stages and checks every command line of ours, and runs nothing (seconds, on a
# CPU too: tests/test_scripts.py does so for every check).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
check=${1:-}
REF=${REF_DIR:-$here/.ref}
need() {
  for path in "$@"; do
    [ -e "$path" ] && continue
    echo "error: $path is missing; BENCHMARKS.md (\"Next GPU check\") says how to make it" >&2
    exit 2
  done
}
# The levers of part 3 as sweep cells, each against recipe 94 (the base); 94tuned is
# hiverge's tuning in our units (hlb/recipes.py).
LEVERS=("--set activation=silu" "--set augment=crop,flip,jitter"
        "--set image_sizes=24,24,28,28,32" "--set clean_epochs=1" "--recipe 94tuned")
# The search space of T: recipe 94's learning rates, momenta, label smoothing and epochs, and
# the levers of C (a tuple field's choices are separated by '/').
SPACE=(muon_lr=0.16:0.32 muon_momentum=0.5:0.7 head_lr=5e-4:1.4e-3:log bias_lr=0.03:0.09:log
       whiten_bias_lr=0.03:0.09:log momentum=0.78:0.9 label_smoothing=0.08:0.3 epochs=6.5:8
       activation=gelu,silu augment=crop,flip/crop,flip,jitter clean_epochs=0,1
       image_sizes=32/24,24,28,28,32)
autotune="--set compile_mode=max-autotune-no-cudagraphs"
cgc="--set capture_step=true --set compile=true --set tta_fraction=0.25"   # 181efb7's 94muon
export BUDGET_S=${BUDGET_S:-540} REF_PROFILE=0
case "$check" in
  A|A1)
    need "$REF/airbench94_muon.py" "$REF/base/main.py"
    export ORDER="accuracy variants references" ACCURACY="claim 94 200 4"
    export VARIANTS="default 94 15; base $REF/base:94muon 15 $cgc"
    export REFERENCES="airbench $REF/airbench94_muon.py 10" ;;
  A2)
    need "$REF/airbench94_muon.py" "$REF/cifar10_speedrun.py"
    export ORDER="variants references"
    export VARIANTS="default 94 15; t4like 94 15 --set compile=false"
    export REFERENCES="hiverge $REF/cifar10_speedrun.py 10; airbench $REF/airbench94_muon.py 10" ;;
  C)
    cells=()
    for lever in "${LEVERS[@]}"; do cells+=(--cell "'$lever'"); done
    export SWEEP="levers 16 --recipe 94 --prune ${cells[*]}" ;;
  T)
    wheels=${WHEELS:-$here/.whl}
    "${PYTHON:-python3}" -c "import optuna" 2>/dev/null || need "$wheels"
    spaces=()
    for item in "${SPACE[@]}"; do spaces+=(--space "$item"); done
    export TUNE="search 4 --recipe 94 ${spaces[*]} --runs 4 --trials 40 --confirm 3"
    TUNE+=" --confirm-runs 8"
    export WHEELS=$wheels ;;
  D)
    export ORDER="variants dist cap profile" CAP_GB=3 PROFILE=default
    export VARIANTS="default 94 5; r95 95 10; r96 96 4" DIST="torchrun 94 5 1" ;;
  E)
    export VARIANTS="default 94 15; autotune 94 15 $autotune" ;;
  *)
    echo "usage: scripts/next_check.sh A1|A2|C|T|D|E (BENCHMARKS.md, \"Next GPU check\")" >&2
    exit 2 ;;
esac
exec bash "$here/scripts/gpu_check.sh" 0
