#!/usr/bin/env bash
# One prepared call for a lent GPU machine (see ../shared/GPU-NOTES.md): the GPU checks of issues 12, 13
# and 14, most important first, each under its own timeout, every result appended to $OUT/gpu-session.txt
# as it comes (a cut-off run still returns what it measured). Run from the repository root:
#   bash tests/gpu/session.sh [steps...]      steps: tests gpu data ddp (default: all, in that order)
# Without a GPU the steps skip or run their CPU rehearsal sizes (REHEARSAL=1), so the script can be
# tried here first: REHEARSAL=1 OUT=/tmp/out bash tests/gpu/session.sh
set -uo pipefail
OUT=${OUT:-outputs/gpu-session}
mkdir -p "$OUT"
LOG="$OUT/gpu-session.txt"
PY=${PY:-python3}
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
steps=${*:-tests gpu data ddp}

note() { echo "$*" | tee -a "$LOG"; }
run() {  # run SECONDS COMMAND...: one step, its output appended to the log
    local limit=$1; shift
    note "## $(date -u +%H:%M:%S) $* (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 40
    note "## exit ${PIPESTATUS[0]}"
}

note "# $(date -u) $(hostname) $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
if [ "${REHEARSAL:-0}" = 1 ]; then
    GPU_ARGS=(--batch-sizes 16 --train-size 64 --steps 3 --run-size 256 --run-epochs 4 device=cpu model.width=1
              model.depth=8 dataset.test_size=64)
    DATA_ARGS=(--generate 64 --batch-size 16 --steps 3 model=resnet32 model.width=1 model.depth=8
               dataset.image_size=32 dataset.workers=2 device=cpu)
else
    GPU_ARGS=()
    DATA_ARGS=(--generate 6400 dataset.workers=15)
fi
for step in $steps; do
    case $step in
        tests)  # issue 12 (graphs on/off same masks, capture time, memory falls with freezing), 13 (GPU decode)
            run 200 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py \
                tests/test_folders.py::test_gpu_decode_on_cuda_matches_the_cpu_indices ;;
        gpu)    # issue 12: harness vs bare model at batch 64 and 512, frozen speed-up, memory vs plan, SpFDE wall-clock
            run 300 $PY -m spfde.bench gpu "${GPU_ARGS[@]}" ;;
        data)   # issue 13: ResNet-50 on a generated JPEG folder, bare model vs each loader, frozen epoch time
            run 300 $PY -m spfde.bench data "${DATA_ARGS[@]}" ;;
        ddp)    # issue 14: torchrun with one process on the GPU equals a plain run
            args=(experiment=quickstart epochs=2 logger=none progress=false)
            run 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m spfde.run "${args[@]}" \
                hydra.run.dir="$OUT/ddp-torchrun"
            run 120 $PY -m spfde.run "${args[@]}" hydra.run.dir="$OUT/ddp-plain"
            run 30 $PY -c "import json,sys; a,b=(json.load(open(f'$OUT/ddp-{n}/summary.json')) for n in ('torchrun','plain'));
skip=('train_time_s','run_id','run_dir','cuda_graphs_capture_s');
d=[k for k in b if k not in skip and a.get(k)!=b[k]]; print('torchrun nproc=1 == plain:', not d, d)" ;;
        *) note "unknown step $step (tests gpu data ddp)" ;;
    esac
done
note "# done $(date -u +%H:%M:%S)"
