#!/usr/bin/env bash
# One training job on a GPU machine for a fixed budget, then the same run goes on on a CPU.
#
#   bash scripts/train-gpu.sh carry
#       here, before: copies the CROHME folder (../shared/data/crohme, or $HMER_DATA) and wheels
#       of the pure-Python dependencies a bare GPU image lacks into .gpu/ (git-ignored, ~25 MB),
#       for the GPU machine's copy of the repository (carry ".gpu").
#   bash scripts/train-gpu.sh run OUT [CONFIG] [MINUTES] [hmer train options ...]
#       there, in the repository root: hmer train CONFIG (default configs/comer-small.toml)
#       --device cuda for MINUTES of training (default 6; validation and checkpoints not
#       counted), loader workers on all cores but two, the same batches as on a CPU. Writes to
#       OUT: release.safetensors (fp16, best validation), eval-2014-greedy.json (that release on
#       the CROHME 2014 test ink, rendered, greedy), log.csv, eval.csv, config.json, train.log,
#       and last.pt in 15 MiB parts (what comes back from such machines is size-limited).
#       Pass --set train.epochs=N sized to the budget, so that the cosine schedule ends with it,
#       and --set train.val_every=K so that validation does not take the time of many epochs.
#   bash scripts/train-gpu.sh join OUT RUN_DIR
#       here, after: puts last.pt and the logs into RUN_DIR; then
#       hmer train RUN_DIR/config.json --run-dir RUN_DIR --resume --device cpu \
#           --set train.max_minutes=0 --set train.num_workers=1
#       goes on on the CPU from the GPU run's last batch (its config, optimizer and schedule).
# DEVICE (default cuda), EVAL_SPLIT (default 2014) and PYTHON (default python3) may be set; the
# tests run the same steps with DEVICE=cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
shift || true

case "$cmd" in
carry)
    src=${HMER_DATA:-../shared/data/crohme}
    python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    mkdir -p .gpu/wheels
    rm -rf .gpu/crohme && cp -r "$src" .gpu/crohme
    "$python" -m pip download -q --no-deps --only-binary=:all: -d .gpu/wheels \
        "defusedxml>=0.7" "latex2mathml>=3.75"
    du -sh .gpu
    ;;
run)
    [ $# -ge 1 ] || { echo "usage: $0 run OUT [CONFIG] [MINUTES] [hmer train options]" >&2; exit 2; }
    out=$1
    config=${2:-configs/comer-small.toml}
    minutes=${3:-6}
    shift $(($# < 3 ? $# : 3))
    run=${RUN_DIR:-/tmp/hmer-gpu-run}
    mkdir -p "$out" "$run"
    py=${PYTHON:-python3}
    device=${DEVICE:-cuda}
    site=/tmp/hmer-site
    if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/wheels/*.whl
    fi
    export PYTHONPATH=$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}
    export HMER_DATA=${HMER_DATA:-$PWD/.gpu/crohme} HMER_CACHE=${HMER_CACHE:-/tmp/hmer-cache}
    export PYTHONUNBUFFERED=1
    if [ "$device" != cpu ]; then
        "$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('torch', torch.__version__, torch.cuda.get_device_name(0))"
    fi
    cores=$(nproc)
    workers=$((cores > 3 ? cores - 2 : 1))
    # the training process needs few threads on a GPU; the loader workers take the cores
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$py" -m hmer train "$config" --run-dir "$run" \
        --resume --device "$device" \
        --set train.max_minutes="$minutes" --set train.num_workers="$workers" \
        --set train.test_every=0 "$@" 2>&1 | tee "$out/train.log"
    cp "$run"/log.csv "$run"/eval.csv "$run"/config.json "$out"/
    "$py" -m hmer export "$run/best.pt" -o "$out/release.safetensors"
    OMP_NUM_THREADS=$cores "$py" -m hmer evaluate --model "$out/release.safetensors" \
        --split "${EVAL_SPLIT:-2014}" --beam 1 --json > "$out/eval-2014-greedy.json"
    cat "$out/eval-2014-greedy.json"
    split -b 15M "$run/last.pt" "$out/last.pt.part-"
    ;;
join)
    [ $# -eq 2 ] || { echo "usage: $0 join OUT RUN_DIR" >&2; exit 2; }
    mkdir -p "$2"
    cat "$1"/last.pt.part-* > "$2/last.pt.tmp" && mv "$2/last.pt.tmp" "$2/last.pt"
    cp "$1"/log.csv "$1"/eval.csv "$1"/config.json "$2"/
    echo "resume: hmer train CONFIG --run-dir $2 --resume --device cpu"
    ;;
*)
    sed -n '2,25p' "$0" >&2
    exit 2
    ;;
esac
