#!/usr/bin/env bash
# One GPU check in one call: environment, data, the card's measured matmul rate, then each
# stage below under one budget, and last a table comparing them. $OUT gets summary.txt,
# logs.tgz (every log and record) and the compile cache in parts (compile-cache.tgz.N), so
# that no more than 8 files come back from a device call.
#
#   scripts/gpu_check.sh [RUNS] [REFERENCE_SCRIPT] [REFERENCE_RUNS]
#
# The stages, in ORDER (default "accuracy references variants dist sweep tune cap profile"),
# each only when asked for:
#   accuracy:   ACCURACY, runs that measure accuracy alone, several processes sharing the GPU
#               (torchrun, main.py --accuracy-only: no per-epoch evaluation, no times);
#   references: each REFERENCE_RUNS runs in a scratch folder on the same data, one of them
#               then profiled in its own process (REF_PROFILE);
#   variants:   the VARIANTS of ours, in the order given, each after its untimed warm-up;
#   dist:       DIST, timed runs of ours under torchrun (one process per GPU);
#   sweep:      SWEEP, a main.py sweep (the base and a grid, interleaved, ranked);
#   tune:       TUNE, a main.py tune search, several workers sharing the GPU in accuracy mode;
#   cap:        CAP_GB, 3 runs of the first variant with the GPU capped at that many GiB;
#   profile:    PROFILE (a variant's label), one profiled run of it (scripts/profile_run.py).
# Timing stages (all but accuracy and tune) always run alone on the GPU. Every stage stops at
# the budget (BUDGET_S seconds for the whole check, default 570): a stage cut short keeps its
# finished runs, so order what matters most first. Before any stage, every command line of
# ours is checked (scripts/plan_check.py): a bad flag is one line and exit 2 at once, not
# minutes into the check; PLAN_ONLY=1 stops there, after printing the stages it would run.
# Throughout, nvidia-smi samples the SM clock, utilization, power, temperature and the clock
# slowdown (throttle) reasons every 0.5 s; the summary gives them stage by stage.
#
# Compile cache: TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR live under CACHE_DIR, a fixed
# path (default /tmp/hlb_compile_cache) so that cached code finds the same paths next time; it
# is outside $OUT so that a check killed midway does not leave thousands of files there. At
# the start, compile-cache.tgz.* parts in CACHE_IN (default .cache/inductor/ in the checkout,
# ignored by git) are unpacked into it; at the end it is packed into $OUT in parts of 15 MiB
# if it fits CACHE_MAX_MB (default 56) packed, else its inductor part alone if that fits.
# Copy the parts that come back into .cache/inductor/ and carry that folder into the next
# check (../shared/GPU.md says how).
#
# Environment (lists: one entry per line or ';'-separated):
#   ACCURACY    "LABEL RECIPE RUNS PROCESSES [main.py flags]", e.g. "claim 94 200 4".
#   REFERENCES  "LABEL SCRIPT RUNS", e.g. "airbench .ref/airbench94_muon.py 10;
#               hiverge .ref/cifar10_speedrun.py 10"; the positional REFERENCE_SCRIPT and
#               REFERENCE_RUNS add one labelled "reference". A script's `in range(200)` run
#               loop is cut to RUNS; it reads ./cifar10/ (torchvision's layout: our files).
#   REF_PROFILE the reference to profile after its runs (default: the first; 0: none).
#   VARIANTS    "LABEL RECIPE RUNS [main.py flags]"; RECIPE may be DIR:RECIPE to run
#               DIR/main.py (another tree of ours, e.g. an earlier commit's; a relative DIR
#               is from the checkout). Default: one variant per name in RECIPE (default 94), RUNS
#               runs each, with EXTRA.
#   SWEEP       "LABEL RUNS [main.py sweep flags]", the flags read as shell words, e.g.
#               "levers 10 --prune --cell '--set activation=silu' --cell '--recipe 94tuned'".
#   DIST        "LABEL RECIPE RUNS PROCESSES [main.py flags]": timed runs under torchrun.
#   TUNE        "LABEL PROCESSES [main.py tune flags]", the flags read as shell words: that
#               many workers (torchrun) share one study in a SQLite file under TUNE_DIR
#               (default /tmp/hlb_tune: the same check run again goes on with the study);
#               --accuracy-only is added. Optuna is not on the device machine: wheels in
#               WHEELS (default .whl/ in the checkout; BENCHMARKS.md says which) are
#               installed under /tmp first.
#   HLB_DATA_DIR (default ./data), OUT (default ./gpu_check_out), DEVICE (default cuda).
#   PYTHON (default python3): the interpreter every stage runs with.
#   REF_STEPS (default 200): training steps per reference run, for its kernels per step.
#   REF_WORK (default /tmp/hlb_reference): the references' scratch folders, a fixed path too.
#   RESERVE_S (default 30): seconds of the budget kept back for the summary and the packing.
#   TARGET (default 0.94): the summary tests each mean accuracy against it.
#   PLAN_CHECK (default 1): 0 skips the check of our command lines (a few seconds; tests
#               that check it elsewhere and time their stages).
# Exit status: 0 when every stage of ours finished all its runs; else the last failing one's
# (124: cut by the budget); 2 when a command line of ours is bad (nothing has run). On a CPU,
# `DEVICE=cpu VARIANTS="s smoke 1" scripts/gpu_check.sh` exercises all but the matmul rate,
# the cap and the clocks.
set -uo pipefail
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
RUNS=${1:-50}
DEVICE=${DEVICE:-cuda}
DATA=${HLB_DATA_DIR:-data}
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-570}
RESERVE_S=${RESERVE_S:-30}        # seconds kept back for the summary and the packing
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${CACHE_DIR:-/tmp/hlb_compile_cache}
CACHE_IN=${CACHE_IN:-$here/.cache/inductor}
CACHE_MAX_MB=${CACHE_MAX_MB:-56}
REF_WORK=${REF_WORK:-/tmp/hlb_reference}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)   # absolute: the references run elsewhere
LOGS=$OUT/logs                     # packed into $OUT/logs.tgz at the end
mkdir -p "$LOGS"

# Entries of a ';'- or newline-separated list, one per line, blank ones dropped.
entries() { tr ';' '\n' <<<"$1" | sed 's/^ *//; s/ *$//' | grep -v '^$'; }
# Whether $1 is a whole number.
whole() { [[ "${1:-}" =~ ^[0-9]+$ ]]; }
malformed() { echo "error: $1 entry '$2': expected $3" >&2; exit 2; }

if [ -z "${VARIANTS:-}" ] && [ "$RUNS" != 0 ]; then     # RUNS 0: no default variant
  VARIANTS=""
  for recipe in ${RECIPE:-94}; do VARIANTS+="$recipe $recipe $RUNS ${EXTRA:-};"; done
fi
labels=() recipes=() counts=() flags=()
while IFS= read -r line; do
  read -r label recipe count rest <<<"$line"
  whole "${count:-}" || malformed VARIANTS "$line" "LABEL RECIPE RUNS [flags]"
  labels+=("$label") recipes+=("$recipe") counts+=("$count") flags+=("${rest:-}")
done < <(entries "${VARIANTS:-}")

references=()
[ -n "${2:-}" ] && references+=("reference $2 ${3:-25}")
while IFS= read -r line; do
  read -r label script count rest <<<"$line"
  whole "${count:-}" && [ -z "${rest:-}" ] || malformed REFERENCES "$line" "LABEL SCRIPT RUNS"
  references+=("$line")
done < <(entries "${REFERENCES:-}")
while IFS= read -r line; do
  read -r label recipe count procs rest <<<"$line"
  whole "${count:-}" && whole "${procs:-}" ||
    malformed ACCURACY "$line" "LABEL RECIPE RUNS PROCESSES [flags]"
done < <(entries "${ACCURACY:-}")
while IFS= read -r line; do
  read -r label recipe count procs rest <<<"$line"
  whole "${count:-}" && whole "${procs:-}" ||
    malformed DIST "$line" "LABEL RECIPE RUNS PROCESSES [flags]"
done < <(entries "${DIST:-}")
if [ -n "${SWEEP:-}" ]; then
  read -r sweep_label sweep_runs sweep_flags <<<"$SWEEP"
  whole "${sweep_runs:-}" || malformed SWEEP "$SWEEP" "LABEL RUNS [sweep flags]"
fi
if [ -n "${TUNE:-}" ]; then
  read -r tune_label tune_procs tune_flags <<<"$TUNE"
  whole "${tune_procs:-}" || malformed TUNE "$TUNE" "LABEL PROCESSES [tune flags]"
fi
ORDER=${ORDER:-accuracy references variants dist sweep tune cap profile}
for name in $ORDER; do
  [[ " accuracy references variants dist sweep tune cap profile " == *" $name "* ]] ||
    malformed ORDER "$name" "accuracy, references, variants, dist, sweep, tune, cap or profile"
done

# Every command line of ours, checked before anything runs (a DIR:RECIPE variant is another
# tree's, checked by that tree when it runs).
plan=()
while IFS= read -r line; do
  read -r label recipe count procs rest <<<"$line"
  plan+=("--recipe $recipe ${rest:-} --accuracy-only")
done < <(entries "${ACCURACY:-}")
for i in "${!labels[@]}"; do
  [[ "${recipes[$i]}" == *:* ]] || plan+=("--recipe ${recipes[$i]} ${flags[$i]}")
done
while IFS= read -r line; do
  read -r label recipe count procs rest <<<"$line"
  plan+=("--recipe $recipe ${rest:-}")
done < <(entries "${DIST:-}")
[ -n "${SWEEP:-}" ] && plan+=("sweep ${sweep_flags:-}")
[ -n "${TUNE:-}" ] && plan+=("tune --accuracy-only ${tune_flags:-}")
if [ "${#plan[@]}" -gt 0 ] && [ "${PLAN_CHECK:-1}" = 1 ]; then
  "$PYTHON" "$here/scripts/plan_check.py" "${plan[@]}" || exit 2
fi
if [ "${PLAN_ONLY:-0}" = 1 ]; then
  echo "stages, in order: $ORDER"
  echo "accuracy: $(entries "${ACCURACY:-}" | paste -sd ';')"
  echo "references: $(for r in "${references[@]}"; do echo "$r"; done | paste -sd ';')"
  echo "variants: $(entries "${VARIANTS:-}" | paste -sd ';')"
  echo "dist: $(entries "${DIST:-}" | paste -sd ';')"
  echo "sweep: ${SWEEP:-}"
  echo "tune: ${TUNE:-}"
  echo "cap: ${CAP_GB:-}; profile: ${PROFILE:-}; budget: $BUDGET_S s"
  exit 0
fi

# Seconds left for a stage, the summary's reserve kept back; 0 when the budget is spent.
left() { local s=$((BUDGET_S - SECONDS - RESERVE_S)); echo $((s > 0 ? s : 0)); }
# Run a stage under the budget: SIGTERM at the limit (main.py then keeps its finished runs
# and writes its record), SIGKILL 20 s later if it is still there.
budgeted() {
  local s; s=$(left)
  if [ "$s" -lt 5 ]; then echo "(skipped: the budget is spent)"; return 124; fi
  timeout -k 20 "$s" "$@"
}
# Mark when a stage begins (the clock samples are summarised by stage), and print its heading.
stage() {
  date "+%Y/%m/%d %H:%M:%S.%3N $1" >> "$LOGS/stages.txt"
  echo "== ${*:2}"
}
cache_files() { find "$CACHE_DIR" -type f 2>/dev/null | wc -l; }
ours_status=0
# The exit status of a stage of ours: the last failing one's is the check's.
ours() { [ "$1" = 0 ] || ours_status=$1; }
# main.py of our tree, or of another tree of ours for a DIR:RECIPE variant.
main_of() {
  local tree=$here
  [[ "$1" == *:* ]] && tree=${1%%:*} && [[ "$tree" != /* ]] && tree=$here/$tree
  echo "$tree/main.py"
}

stage setup "environment"
date -u +%Y-%m-%dT%H:%M:%SZ
sampler=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  # Only the fields this driver knows (the throttle reasons were renamed clock-event reasons).
  fields=timestamp
  for f in clocks.sm utilization.gpu power.draw temperature.gpu clocks_event_reasons.active \
           clocks_throttle_reasons.active; do
    [[ $f == *reasons* && $fields == *reasons* ]] && continue
    nvidia-smi --query-gpu="$f" --format=csv,noheader >/dev/null 2>&1 && fields+=",$f"
  done
  echo "$fields" > "$LOGS/clocks.csv"
  unbuffered=(); command -v stdbuf >/dev/null && unbuffered=(stdbuf -oL)
  "${unbuffered[@]}" nvidia-smi -lms 500 --format=csv,noheader,nounits --query-gpu="$fields" \
    >> "$LOGS/clocks.csv" 2>&1 &
  sampler=$!
  trap '[ -n "$sampler" ] && kill "$sampler" 2>/dev/null' EXIT
else
  echo "nvidia-smi not found: no clock samples"
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
git -C "$here" log -1 --format='commit %h %s' 2>/dev/null

echo "== compile cache"
rm -rf "$CACHE_DIR" && mkdir -p "$CACHE_DIR"
export TORCHINDUCTOR_CACHE_DIR=$CACHE_DIR/inductor TRITON_CACHE_DIR=$CACHE_DIR/triton
if compgen -G "$CACHE_IN/compile-cache.tgz.*" >/dev/null; then
  cat "$CACHE_IN"/compile-cache.tgz.* | tar -xz -C "$CACHE_DIR" &&
    echo "restored from $CACHE_IN: $(cache_files) files, $(du -sm "$CACHE_DIR" | cut -f1) MiB"
else
  echo "none in $CACHE_IN: every compile starts cold"
fi
cached_at_start=$(cache_files)

echo "== data"
if [ ! -d "$DATA/cifar-10-batches-py" ] && [ -f "$here/.cifar10/materialize.py" ]; then
  "$PYTHON" "$here/.cifar10/materialize.py" "$DATA" | tail -n 1 || exit 1
fi

if [ "$DEVICE" = cuda ]; then
  echo "== measured fp16/bf16 matmul rate (8192^3, mean of 20 after 3 warm-ups)"
  "$PYTHON" - <<'EOF' 2>&1 | tee "$LOGS/matmul.log"
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

records=() ref_args=() sweep_args=() tune_args=()
# A labelled run of ours under torchrun with $2 processes: its record is kept in $LOGS.
torchrun_ours() {
  local name=$1 procs=$2; shift 2
  budgeted "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$procs" \
    "$here/main.py" "$@" --device "$DEVICE" --no-save --data-dir "$DATA" \
    --json "$LOGS/ours-$name.json" 2>&1 | tee "$LOGS/ours-$name.log"
  ours "${PIPESTATUS[0]}"
  [ -f "$LOGS/ours-$name.json" ] && records+=("$LOGS/ours-$name.json")
}

# The entries of ACCURACY or DIST ($1), each under torchrun: "$2: LABEL = ..." heads each
# stage, and the rest of the arguments go to every main.py.
run_torchrun_list() {
  local list=$1 what=$2 line label recipe count procs rest
  shift 2
  while IFS= read -r line; do
    read -r label recipe count procs rest <<<"$line"
    stage "$label" "$what: $label = recipe $recipe ${rest:-}, $count runs over $procs" \
         "process(es) $*, at most $(left) s"
    # shellcheck disable=SC2086
    torchrun_ours "$label" "$procs" --recipe "$recipe" --runs "$count" "$@" ${rest:-}
  done < <(entries "$list")
}
# Accuracy mode: the processes share the GPU, no per-epoch evaluation and no times.
run_accuracy() { run_torchrun_list "${ACCURACY:-}" accuracy --accuracy-only; }
run_dist() { run_torchrun_list "${DIST:-}" "ours under torchrun"; }

run_references() {
  local entry label script count work profile start before first=1
  for entry in "${references[@]}"; do
    read -r label script count <<<"$entry"
    stage "$label" "reference $label: $script, $count runs, at most $(left) s (compile included)"
    # A copy in a scratch folder of its own, its run count cut, reading the same data.
    work=$REF_WORK/$label
    rm -rf "$work" && mkdir -p "$work"
    ln -s "$(cd "$DATA" && pwd)" "$work/cifar10"
    sed "s/in range(200)/in range($count)/" "$script" > "$work/reference.py"
    profile=${REF_PROFILE:-1}
    if [ "$profile" = "$label" ] || { [ "$profile" = 1 ] && [ "$first" = 1 ]; }; then
      cat >> "$work/reference.py" <<EOF

# Appended by scripts/gpu_check.sh: one more run under torch.profiler in this process, so the
# compiled model is reused and nothing compiles again.
if __name__ == "__main__":
    import sys
    sys.path.insert(0, "$here/scripts")
    import profile_run
    profile_run.profile_reference(main, model, "$LOGS/$label-profile.txt", ${REF_STEPS:-200})
EOF
    fi
    first=0
    start=$(date +%s) before=$(cache_files)
    (cd "$work" && budgeted "$PYTHON" reference.py) 2>&1 | tee "$LOGS/$label.log"
    echo "$label wall clock: $(( $(date +%s) - start )) s (compile, warm-up and profile" \
         "included); compile cache: $(( $(cache_files) - before )) new files"
    ref_args+=(--reference "$label=$LOGS/$label.log")
  done
}

run_variants() {
  local i label recipe
  for i in "${!labels[@]}"; do
    label=${labels[$i]} recipe=${recipes[$i]}
    stage "$label" "ours: $label = recipe $recipe ${flags[$i]}, ${counts[$i]} timed runs" \
         "after one untimed warm-up, at most $(left) s"
    # shellcheck disable=SC2086
    budgeted "$PYTHON" "$(main_of "$recipe")" --recipe "${recipe##*:}" --runs "${counts[$i]}" \
      --device "$DEVICE" --no-save --data-dir "$DATA" --json "$LOGS/ours-$label.json" \
      ${flags[$i]} 2>&1 | tee "$LOGS/ours-$label.log"
    ours "${PIPESTATUS[0]}"
    [ -f "$LOGS/ours-$label.json" ] && records+=("$LOGS/ours-$label.json")
  done
}

run_sweep() {
  [ -n "${SWEEP:-}" ] || return 0
  stage "$sweep_label" "sweep $sweep_label: ${sweep_flags:-}, $sweep_runs runs each, at most" \
       "$(left) s"
  eval "sweep_words=(${sweep_flags:-})"       # shell words: a --cell's flags come quoted
  budgeted "$PYTHON" "$here/main.py" sweep --runs "$sweep_runs" --device "$DEVICE" --no-save \
    --data-dir "$DATA" --json "$LOGS/sweep-$sweep_label.json" "${sweep_words[@]}" 2>&1 |
    tee "$LOGS/sweep-$sweep_label.log"
  ours "${PIPESTATUS[0]}"
  [ -f "$LOGS/sweep-$sweep_label.json" ] && sweep_args=(--sweep "$LOGS/sweep-$sweep_label.json")
}

# Optuna for the tune stage: as installed, else from the wheels in .whl/ (the device machine
# has no package registry), installed under /tmp and put on PYTHONPATH.
optuna_ready() {
  "$PYTHON" -c "import optuna" 2>/dev/null && return 0
  local wheels=${WHEELS:-$here/.whl}
  compgen -G "$wheels/*.whl" >/dev/null || return 1
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/hlb_site "$wheels"/*.whl >/dev/null &&
    export PYTHONPATH=/tmp/hlb_site${PYTHONPATH:+:$PYTHONPATH} &&
    "$PYTHON" -c "import optuna"
}

run_tune() {
  [ -n "${TUNE:-}" ] || return 0
  local dir=${TUNE_DIR:-/tmp/hlb_tune}
  stage "tune-$tune_label" "tune $tune_label: $tune_procs workers sharing the GPU," \
       "${tune_flags:-}, at most $(left) s"
  if ! optuna_ready; then
    echo "(skipped: optuna does not import, and .whl/ holds no wheels for it)"
    ours 1
    return
  fi
  mkdir -p "$dir"
  eval "tune_words=(${tune_flags:-})"
  budgeted "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$tune_procs" \
    "$here/main.py" tune --accuracy-only --device "$DEVICE" --no-save --data-dir "$DATA" \
    --storage "sqlite:///$dir/$tune_label.db" --json "$LOGS/tune-$tune_label.json" \
    "${tune_words[@]}" 2>&1 | tee "$LOGS/tune-$tune_label.log"
  ours "${PIPESTATUS[0]}"
  # The study comes back too: a check cut short keeps every finished trial there.
  cp "$dir/$tune_label.db" "$LOGS/tune-$tune_label.db" 2>/dev/null
  [ -f "$LOGS/tune-$tune_label.json" ] && tune_args=(--tune "$LOGS/tune-$tune_label.json")
}

run_cap() {
  [ -n "${CAP_GB:-}" ] && [ "$DEVICE" = cuda ] && [ "${#labels[@]}" -gt 0 ] || return 0
  stage cap "${labels[0]} under a ${CAP_GB} GiB memory cap, 3 runs"
  # shellcheck disable=SC2086
  budgeted "$PYTHON" "$here/scripts/capped_main.py" "$CAP_GB" --recipe "${recipes[0]}" \
    --runs 3 --no-save --data-dir "$DATA" ${flags[0]} 2>&1 | tail -n 12 | tee "$LOGS/capped.log"
}

run_profile() {
  local i
  [ -n "${PROFILE:-}" ] || return 0
  for i in "${!labels[@]}"; do
    [ "${labels[$i]}" = "$PROFILE" ] || continue
    stage "profile-$PROFILE" "profile of ${labels[$i]}: one run after a warm-up"
    # shellcheck disable=SC2086
    budgeted "$PYTHON" "$here/scripts/profile_run.py" --recipe "${recipes[$i]}" \
      --device "$DEVICE" --data-dir "$DATA" ${flags[$i]} 2>&1 | tee "$LOGS/profile-$PROFILE.log"
  done
}

for name in $ORDER; do "run_$name"; done
stage end "packing the compile cache and the logs"

# Pack the cache; if it is too large to come back, the inductor part alone: its compiled
# graphs and autotuning choices, whose Triton kernels then compile again from their source.
cached=$(cache_files)
packed=$(mktemp)
kept=""
for part in . inductor; do
  [ -e "$CACHE_DIR/$part" ] || continue
  tar -czf "$packed" -C "$CACHE_DIR" "$part"
  size_mb=$(( ($(wc -c < "$packed") + 2**20 - 1) / 2**20 ))
  if [ "$size_mb" -le "$CACHE_MAX_MB" ]; then
    split -b 15M -d -a 1 "$packed" "$OUT/compile-cache.tgz."
    kept+="packed ${part/#./all of it} into $size_mb MiB: $OUT/compile-cache.tgz.*"
    break
  fi
  kept+="${part/#./all of it} is $size_mb MiB packed, over CACHE_MAX_MB=$CACHE_MAX_MB; "
done
rm -f "$packed"

summary_args=("${records[@]}" "${ref_args[@]}" "${sweep_args[@]}" "${tune_args[@]}"
              --target "${TARGET:-0.94}")
if [ -s "$LOGS/clocks.csv" ]; then
  summary_args+=(--clocks "$LOGS/clocks.csv" --stages "$LOGS/stages.txt")
fi
{
  echo "== summary"
  "$PYTHON" "$here/scripts/gpu_summary.py" "${summary_args[@]}"
  echo "compile cache: $cached_at_start files at the start, $cached at the end; $kept"
} | tee "$OUT/summary.txt"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
exit "$ours_status"
