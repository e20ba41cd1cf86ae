#!/usr/bin/env bash
# Issue 4's GPU checks and benchmarks for one device-tool call each, logs under $OUT.
#
# Here, once:   scripts/gpu-wheels                       (fills .gpu/: wheels and EWT files)
# Device tool:  run(command="bash bench/gpu_run.sh tests sampler", carry=[".gpu"], timeout_s=600)
#               run(command="bash bench/gpu_run.sh invariance scan tiers inductor", carry=[".gpu"], timeout_s=600)
#
# Steps (in the order given):
#   tests       pytest tests/gpu (probe on the GPU, bf16 determinism, the fast step, CUDA-graph replay)
#   sampler     bench/sampler_speed.py, gemma-2-2b shapes, peaked and flat: generate loop vs hf,
#               fast, fast:cuda-graph                                          (target: >= 50/s, >= 40x)
#   inductor    the same, peaked, with fast:inductor (compiles the step first)
#   invariance  bench/batch_invariance.py in bf16, peaked and flat
#   scan        bench/scan_speed.py, all 2,001 dev sentences                   (target: < 20 s)
#   tiers       bench/sampling_tiers.py, 1,024 rows over 256,000 tokens
# DEVICE=cpu CONFIG=tiny PY=.venv/bin/python NO_WHEELS=1 runs the same steps here (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/posresample-gpu-run}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-gemma-2-2b}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ -z "${NO_WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 POSRESAMPLE_EWT=${POSRESAMPLE_EWT:-$PWD/.gpu/ewt}
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/machine.txt"
    PREFIXES=512 BASELINE=16 INVARIANCE=32
else
    PREFIXES=8 BASELINE=2 INVARIANCE=4
fi
"$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)" | tee -a "$OUT/machine.txt"
status=0
step() {  # step NAME COMMAND...: run it, log to $OUT/NAME.log, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | grep -v -e "Warning" -e "warnings.warn" | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" = 0 ] || status=1
}
sampler() {
    step "sampler_$1" "$PY" bench/sampler_speed.py --config "$CONFIG" --device "$DEVICE" --prefixes "$PREFIXES" \
        --baseline-prefixes "$BASELINE" "${@:2}"
}
for what in "$@"; do
    case $what in
        tests) step tests "$PY" -m pytest -q -p no:cacheprovider tests/gpu ;;
        sampler) graphs=$([ "$DEVICE" = cuda ] && echo ,fast:cuda-graph)
                 sampler peaked --peaked --decode "hf,fast$graphs"
                 sampler flat --decode "hf,fast$graphs" ;;
        inductor) sampler inductor --peaked --decode fast,fast:inductor ;;
        invariance) for dist in --peaked ""; do
                        step "invariance${dist:+_peaked}" "$PY" bench/batch_invariance.py --config "$CONFIG" --device "$DEVICE" \
                            --dtype bfloat16 --prefixes "$INVARIANCE" $dist
                    done ;;
        scan) step scan "$PY" bench/scan_speed.py --config "$CONFIG" --device "$DEVICE" \
                  $([ "$DEVICE" = cuda ] || echo --sentences 50) ;;
        tiers) step tiers "$PY" bench/sampling_tiers.py --device "$DEVICE" --rows $([ "$DEVICE" = cuda ] && echo 1024 || echo 16) ;;
        *) echo "unknown step $what"; exit 2 ;;
    esac
done
exit $status
