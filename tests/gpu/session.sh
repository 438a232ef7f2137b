#!/usr/bin/env bash
# One prepared call for a lent GPU machine (see ../shared/GPU-NOTES.md): the pending GPU checks of issues 12,
# 13, 14 and 22, most important first, each step under its own timeout, in at most about 510 s. Every step appends
# its output to $OUT/gpu-session.txt as it comes and the benchmarks rewrite their JSON after each measurement,
# so a cut-off run still returns what it measured; the last step prints one summary block from those files
# ("not measured" for whatever a step did not deliver). Run from the repository root:
#   bash tests/gpu/session.sh [steps...]   steps: tests gpu data torchrun1 (default: all, in that order)
#   OUT=dir (default outputs/gpu-session)  PY=python (default python3)
#   WHEELS=dir: first install the wheels in dir (hydra-core, omegaconf, antlr4: GPU-NOTES.md) into /tmp/site
# Without a GPU, REHEARSAL=1 runs every step at tiny sizes on the CPU, one thread per process, with twice the
# time limits (starting Python with torch and Hydra takes longer on a shared 2-core machine):
#   REHEARSAL=1 OUT=/tmp/out bash tests/gpu/session.sh
# Exit status 0 when every step that ran exited 0, else 1.
#
# A step's limit stops every process the step started, not only its first one: torchrun starts its workers in
# sessions of their own, which a plain `timeout` misses, and a wedged worker would then hold the GPU (and, behind
# a pipe, the whole call) until the device call's own limit. Each step's processes carry a token in their
# environment (inherited through setsid, torchrun and DataLoader workers, and still there after a parent dies),
# so on the limit, and after every step, `stop_step` finds them all in /proc: SIGTERM, 3 s grace, SIGKILL.
# The step writes straight to the log (no pipe a leftover process could hold open).
#
# Time budget. A GPU window is one call of at most 600 s, out of 15 min of device time that include a 1-2 min
# start, so the limits below, each plus 3 s before SIGKILL, add up to about 510 s:
#   5 + 10 + 105 + 185 + 110 + 30 + 30 + 10 = 485, + 8 x 3 = 509.
# Estimates for one H200, from the figures in GPU-NOTES.md (ResNet-32 2x bs 64: bare eager 3.3k img/s,
# graphed 16k, harness eager 3.0k; bs 512 eager 27k; ResNet-50 bs 256 4.7k; PIL folder loader with 15
# workers 1.7k) and a few seconds each for torch import + model build and for a CUDA-graph capture (3 s):
#   setup       ~3 s  pip install of three pure-Python wheels (only with WHEELS)
#   tests      ~75 s  pytest + CUDA start 6 s; 9 digits runs (ResNet-32 depth 8/20) of ~2 s plus one capture
#                     per frozen depth (1-6) ~65 s; the GPU decode test 2 s
#   gpu       ~155 s  start 5 s; batch 64: bare eager + graphed 100 steps 2 + 5 s, 4 harness cases of 2 epochs
#                     x 12,800 images (8.6 s at 3.0k img/s eager, or ~3 s + capture graphed) + 2 s build each
#                     ~45 s; MEST and SpFDE 0.2+0.2 runs, 24 epochs (interval 2, so each frozen depth has a
#                     steady epoch) x 2,560 images (~20 s each eager) + up to 12 captures ~70 s; batch 512:
#                     bare 2 + 5 s, 4 cases of ~1 s + capture + build ~33 s
#   data       ~75 s  start 5 s; 4,224 JPEGs on 16 cores 4 s; bare ResNet-50, 30 steps of 256 + cuDNN
#                     autotuning 6 s; per loader (pil, gpu) 2 epochs of 3,840 images at ~1.7k img/s + 15 workers
#                     starting + capture ~15 s, then the loader alone (one epoch) and the step alone ~5 s; all
#                     candidates frozen with the fastest loader, the same ~17 s
#   torchrun1  ~40 s  two runs of ~20 s (start + CUDA 6 s; digits, ResNet-32 depth 8, 4 epochs, 4 captures)
#   summary     <1 s  reads the files above; no torch import
set -uo pipefail
OUT=${OUT:-outputs/gpu-session}
mkdir -p "$OUT"
LOG="$OUT/gpu-session.txt"
: > "$OUT/steps.tsv"
PY=${PY:-python3}
# the checkout first (not an installed copy of spfde), then the carried wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
steps=${*:-tests gpu data torchrun1}
scale=1
[ "${REHEARSAL:-0}" = 1 ] && scale=2
failed=0

note() { echo "$*" | tee -a "$LOG"; }
now_ms() { date +%s%3N; }
step_processes() {  # step_processes TOKEN: the PIDs of the live processes whose environment carries TOKEN
    local file
    for file in $(grep -lsxzF "SPFDE_SESSION_STEP=$1" /proc/[0-9]*/environ); do
        file=${file#/proc/}
        echo "${file%/environ}"
    done
}
stop_step() {  # stop_step TOKEN: SIGTERM every process of the step, 3 s grace, then SIGKILL what is left
    local pids
    pids=$(step_processes "$1")
    [ -n "$pids" ] || return 0
    kill -TERM $pids 2>/dev/null
    for _ in $(seq 30); do
        sleep 0.1
        pids=$(step_processes "$1")  # again: what it started meanwhile too
        [ -n "$pids" ] || return 0
    done
    kill -KILL $pids 2>/dev/null
}
current=""  # the running step's token, for an interrupted session
trap '[ -n "$current" ] && stop_step "$current"; note "# interrupted"; exit 1' INT TERM
run() {  # run NAME SECONDS COMMAND...: one step, its output appended to the log, its exit and time to steps.tsv
    local name=$1 limit=$(($2 * scale)); shift 2
    local start=$SECONDS rc pid deadline offset
    note "## $(date -u +%H:%M:%S) $name: $* (limit ${limit}s)"
    current="$$-$name-$RANDOM"
    offset=$(wc -c < "$LOG")
    env SPFDE_SESSION_STEP="$current" "$@" >> "$LOG" 2>&1 &
    pid=$!
    deadline=$(($(now_ms) + limit * 1000))
    while kill -0 "$pid" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        stop_step "$current"
        wait "$pid"
        rc=124  # as timeout(1) says it
    else
        wait "$pid"
        rc=$?
        stop_step "$current"  # whatever the step left running
    fi
    current=""
    tail -c +$((offset + 1)) "$LOG" | tail -n 40
    note "## exit $rc after $((SECONDS - start)) s"
    echo "$name $rc $((SECONDS - start))" >> "$OUT/steps.tsv"
    [ "$rc" = 0 ] || failed=1
}

note "# $(date -u) $(hostname) $($PY --version 2>&1) $(timeout 5 nvidia-smi -L 2>/dev/null | head -n 1)"
if [ -n "${WHEELS:-}" ]; then
    run setup 10 $PY -m pip install -q --no-deps --no-index --target /tmp/site "$WHEELS"/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=$PYTHONPATH:/tmp/site
if [ "${REHEARSAL:-0}" = 1 ]; then
    export OMP_NUM_THREADS=1  # tiny sizes gain nothing from more threads, and a busy shared CPU loses ~10x
    GPU_ARGS=(--batch-sizes 16 32 --train-size 64 --steps 2 --run-size 128 --run-epochs 4 device=cpu model.width=1
              model.depth=8 dataset.image_size=16 dataset.test_size=32)
    DATA_ARGS=(--generate 40 --batch-size 8 --steps 2 model=resnet32 model.width=1 model.depth=8
               dataset.image_size=32 dataset.workers=2 device=cpu)
    RUN_ARGS=(dataset.image_size=8)  # the digits' own 8x8 pixels
else
    GPU_ARGS=()  # empty: every array is expanded as ${A[@]+"${A[@]}"}, which bash < 4.4 needs under set -u
    DATA_ARGS=(dataset.workers=15)
    RUN_ARGS=()
fi
for step in $steps; do
    case $step in
        tests)  # issue 12 (graphs on/off same masks, capture time, memory falls with freezing), 13 (GPU decode)
            run tests 105 $PY -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests.xml" tests/test_gpu.py \
                tests/data/test_folders.py::test_gpu_decode_on_cuda_matches_the_cpu_indices ;;
        gpu)    # issue 12: harness vs bare model at batch 64 and 512, frozen speed-up, memory vs plan, SpFDE wall-clock
            run gpu 185 $PY -m spfde.bench gpu --json "$OUT/bench-gpu.json" ${GPU_ARGS[@]+"${GPU_ARGS[@]}"} ;;
        data)   # issue 13: ResNet-50 on a generated JPEG folder, bare model vs each loader, frozen epoch time
            run data 110 $PY -m spfde.bench data --json "$OUT/bench-data.json" ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} ;;
        torchrun1)  # issue 14: torchrun with one process (no process group) gives a plain run's results
            args=(experiment=quickstart model.depth=8 epochs=4 interval=1 freeze=0.1 sieve=0.2 deterministic=true
                  logger=none progress=false ${RUN_ARGS[@]+"${RUN_ARGS[@]}"})
            rm -rf "$OUT/torchrun1"  # two new runs, not a resume of an earlier session's
            run torchrun 30 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m spfde.run \
                ${args[@]+"${args[@]}"} hydra.run.dir="$OUT/torchrun1/torchrun"
            run plain 30 $PY -m spfde.run ${args[@]+"${args[@]}"} hydra.run.dir="$OUT/torchrun1/plain" ;;
        _test)  # tests/test_gpu_session.py only: the command in $TEST_STEP as a step with a 2 s limit
            run _test 2 bash -c "$TEST_STEP" ;;
        *) note "unknown step $step (tests gpu data torchrun1)"; failed=1 ;;
    esac
done
run summary 10 $PY tests/gpu/summary.py "$OUT"
note "# done $(date -u +%H:%M:%S)"
exit $failed
