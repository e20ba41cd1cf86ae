#!/usr/bin/env bash
# The whole GPU plan in one run of at most 8 minutes (a 9-minute budget), most valuable step first.
#
# Here, once:   scripts/gpu-wheels                       (fills .gpu/: wheels and EWT files, ~26 MiB)
# GPU machine:  bash bench/gpu_run.sh                     (with .gpu/ copied into the checkout; logs in $OUT)
#               bash bench/gpu_run.sh --plan             prints the steps and their time caps, runs nothing
#               bash bench/gpu_run.sh scan tiers         runs the named steps only, in the order given
#
# Steps, in this order (the caps are in CAP below and add up to under 8 minutes):
#   setup           carried wheels installed; GPU name, driver, torch, transformers -> machine.log
#   sampler_peaked  bench/sampler_speed.py, gemma-2-2b shapes, peaked: the generate loop (few prefixes),
#                   Sampler hf, fast, fast:cuda-graph (target: >= 50 prefixes/s, >= 40x); when the
#                   target is missed, bench/profile_decode.py profiles one call into the same log
#   tests           pytest tests/gpu
#   sampler_flat    the same table on flat (random-weight) distributions
#   scan            bench/scan_speed.py, all 2,001 EWT dev sentences (target: < 20 s)
#   invariance_peaked, invariance_flat
#                   bench/batch_invariance.py in bf16, peaked then flat (both into invariance.log)
#   tiers           bench/sampling_tiers.py, 1,024 rows over 256,000 tokens
#   inductor        sampler_speed with fast:inductor (it compiles: last)
# Each bench gets --seconds (its cap less start-up slack) and measures what fits; `timeout` kills a
# step that overruns its cap anyway. Every line is flushed to $OUT/<step>.log as it is printed, and
# machine.log indexes the steps as they end, so a run cut at any point returns all that finished.
# Eight files in all: what a GPU call brings back.
#
# DEVICE=cpu CONFIG=tiny SCALE=0.1 PY=.venv/bin/python NO_WHEELS=1 runs the same plan here (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/posresample-gpu-run}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-gemma-2-2b}
PY=${PY:-python3}
SCALE=${SCALE:-1}   # multiplies every cap (the CPU test runs the plan with a tiny budget)
MIN_CAP=${MIN_CAP:-12}  # no step gets less, whatever SCALE: a Python start with torch takes seconds
SLACK=${SLACK:-8}   # of a step's cap, what its bench leaves for starting and stopping
STEPS=(setup sampler_peaked tests sampler_flat scan invariance_peaked invariance_flat tiers inductor)
declare -A CAP=([setup]=25 [sampler_peaked]=125 [profile]=35 [tests]=60 [sampler_flat]=60 [scan]=40
                [invariance_peaked]=25 [invariance_flat]=25 [tiers]=20 [inductor]=55)

cap() { awk -v c="${CAP[$1]}" -v s="$SCALE" -v m="$MIN_CAP" 'BEGIN { v = int(c * s + 0.5); print (v < m ? m : v) }'; }

plan() {
    local total=0 c
    echo "GPU plan: DEVICE=$DEVICE CONFIG=$CONFIG SCALE=$SCALE, logs in \$OUT ($OUT)"
    for name in "${STEPS[@]}"; do
        c=$(cap "$name"); total=$((total + c))
        printf '  %-18s cap %4d s\n' "$name" "$c"
        if [ "$name" = sampler_peaked ]; then
            c=$(cap profile); total=$((total + c))
            printf '  %-18s cap %4d s   (only when the target is missed; into sampler_peaked.log)\n' "profile" "$c"
        fi
    done
    printf '  %-18s      %4d s   (%d min %02d s; the budget is 540 s)\n' "total" "$total" $((total / 60)) $((total % 60))
}

if [ "${1:-}" = --plan ]; then plan; exit 0; fi
mkdir -p "$OUT"
INDEX="$OUT/machine.log"
status=0

# run NAME LOG COMMAND...: the command under a hard cap; its lines go to $OUT/LOG as they come
run() {
    local name=$1 log=$2; shift 2
    local c t0 rc
    c=$(cap "$name"); t0=$SECONDS
    echo "== $name: start (cap ${c} s): $*" | tee -a "$INDEX"
    timeout --signal=TERM --kill-after=5 "$c" "$@" 2>&1 | tee -a "$OUT/$log"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (cap reached)')" | tee -a "$INDEX"
    [ "$rc" = 0 ] || status=1
}

budget() { echo $(($(cap "$1") - SLACK)); }

if [ "$DEVICE" = cuda ]; then
    PREFIXES=512 BASELINE=16 INVARIANCE=32 ROWS=1024 SENTENCES=""
else
    PREFIXES=16 BASELINE=4 INVARIANCE=4 ROWS=16 SENTENCES="--sentences 50"
fi

setup() {  # run under bash -c: `timeout` cannot run a shell function
    if [ -z "${NO_WHEELS:-}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
            || { echo "wheel install failed"; return 1; }
    fi
    if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
    "$PY" -c "import sys, torch, transformers
print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
}

sampler() {  # sampler NAME ARGS...
    local name=$1; shift
    run "$name" "$name.log" "$PY" bench/sampler_speed.py --config "$CONFIG" --device "$DEVICE" --prefixes "$PREFIXES" \
        --baseline-prefixes "$BASELINE" --seconds "$(budget "$name")" "$@"
}

graphs=$([ "$DEVICE" = cuda ] && echo ,fast:cuda-graph)
step() {
    case $1 in
        setup) export PY DEVICE NO_WHEELS=${NO_WHEELS:-}; run setup machine.log bash -c "$(declare -f setup); setup" ;;
        sampler_peaked)
            sampler sampler_peaked --peaked --decode "hf,fast$graphs"
            if ! grep -q ": met$" "$OUT/sampler_peaked.log" 2>/dev/null; then
                run profile sampler_peaked.log "$PY" bench/profile_decode.py --config "$CONFIG" --device "$DEVICE" --peaked \
                    --decode fast --prefixes "$([ "$DEVICE" = cuda ] && echo 32 || echo 4)"
            fi ;;
        tests) run tests tests.log "$PY" -m pytest -q -p no:cacheprovider tests/gpu ;;
        sampler_flat) sampler sampler_flat --decode "hf,fast$graphs" ;;
        scan) run scan scan.log "$PY" bench/scan_speed.py --config "$CONFIG" --device "$DEVICE" $SENTENCES \
                  --seconds "$(budget scan)" ;;
        invariance_peaked|invariance_flat)
            run "$1" invariance.log "$PY" bench/batch_invariance.py --config "$CONFIG" --device "$DEVICE" --dtype bfloat16 \
                --prefixes "$INVARIANCE" --seconds "$(budget "$1")" $([ "$1" = invariance_peaked ] && echo --peaked) ;;
        tiers) run tiers tiers.log "$PY" bench/sampling_tiers.py --device "$DEVICE" --rows "$ROWS" --seconds "$(budget tiers)" ;;
        inductor) sampler inductor --peaked --decode fast,fast:inductor ;;
        *) echo "unknown step $1 (steps: ${STEPS[*]}; or --plan)"; exit 2 ;;
    esac
}

if [ -z "${NO_WHEELS:-}" ]; then export PYTHONPATH=/tmp/site:$PWD; else export PYTHONPATH=$PWD; fi
export PYTHONUNBUFFERED=1 POSRESAMPLE_EWT=${POSRESAMPLE_EWT:-$PWD/.gpu/ewt}
plan | tee -a "$INDEX"
if [ $# -eq 0 ]; then set -- "${STEPS[@]}"; fi
[ "$1" = setup ] || step setup  # the wheels and the versions come first, whatever was asked
for name in "$@"; do step "$name"; done
echo "== done: $([ $status = 0 ] && echo 'every step exited 0' || echo 'some step failed or hit its cap')" | tee -a "$INDEX"
exit $status
