#!/bin/bash
# The two GPU experiments on the toy start (weights/README.md, "Trained on a GPU"), as they ran on a lent
# NVIDIA H200 (16 CPU cores) at commit shown there, each one device call:
#
#   bash tools/toy_start_gpu.sh batch      # 3 configs at once for 6 min each: batch 32 / 64, lr 1e-3 / 2e-3
#   bash tools/toy_start_gpu.sh capacity   # 700 steps at batch 32: the shipped start's shape vs a wider decoder
#
# Each renders its scenes with 14 processes (`tools/make_toy_start.py --jobs 14`), trains several configurations
# side by side on the one GPU (recipe overrides after `--`) and writes each exported start, its metrics CSV and
# the tail of each log to $OUT (default runs/toy_start_gpu). Python packages the GPU machine lacks were carried
# as wheels in .whl/ and are installed first when that folder exists.
set -u
MODE=${1:-}
case $MODE in batch|capacity) ;; *) echo "error: unknown mode '$MODE' (usage: toy_start_gpu.sh batch|capacity)" >&2; exit 2 ;; esac
OUT=${OUT:-runs/toy_start_gpu}; mkdir -p "$OUT"
T0=$(date +%s); t() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
R=/tmp/toy_start_gpu/runs; S=/tmp/toy_start_gpu/scenes; mkdir -p $R
GPU="--trainer.accelerator=gpu --data.samples_per_epoch=1000000 --data.pin_memory=true"

wait_for_scenes() {  # the first run renders; the others start once its scenes are there
  while [ ! -f $S/val/toy-val.index.json ]; do sleep 1; kill -0 "$1" 2>/dev/null || break; done
  t "scenes rendered"
}

report() {  # copy each run's metrics and log tail to $OUT and print its validation history
  for r in "$@"; do
    cp $R/$r/version_0/metrics.csv "$OUT/$r.csv" 2>/dev/null
    { echo "===== $r"; grep -vE "Warning|warn|^\s*$|━" $R/$r.log | tail -c 3000; } >> "$OUT/logs.txt"
    echo "== $r"; grep -E "^ *[0-9]+ +[0-9.]+ +[0-9.]+|wrote .* in|error" $R/$r.log | tail -12
  done
}

case $MODE in
  batch)
    TOOL="python3 tools/make_toy_start.py --size 256 --scenes $S --train-scenes 12000 --jobs 14"
    COMMON="$GPU --model.warmup_steps=150 --trainer.callbacks.init_args.every_n_train_steps=250 --trainer.max_time=00:00:06:00 --data.num_workers=4"
    $TOOL --out "$OUT/A.safetensors" --run-dir $R/A -- $COMMON --trainer.max_steps=2500 --data.batch_size=32 --model.lr_encoder=1e-3 --model.lr_decoder=1e-3 > $R/A.log 2>&1 &
    A=$!; wait_for_scenes $A
    $TOOL --out "$OUT/B.safetensors" --run-dir $R/B -- $COMMON --trainer.max_steps=1800 --data.batch_size=64 --model.lr_encoder=2e-3 --model.lr_decoder=2e-3 > $R/B.log 2>&1 &
    B=$!
    $TOOL --out "$OUT/C.safetensors" --run-dir $R/C -- $COMMON --trainer.max_steps=2500 --data.batch_size=32 --model.lr_encoder=2e-3 --model.lr_decoder=2e-3 > $R/C.log 2>&1 &
    C=$!
    wait $A; wait $B; wait $C; t "done"; report A B C ;;
  capacity)
    TOOL="python3 tools/make_toy_start.py --size 256 --scenes $S --train-scenes 4000 --jobs 14 --steps 700"
    COMMON="$GPU --model.warmup_steps=70 --trainer.val_check_interval=350 --trainer.callbacks.init_args.every_n_train_steps=350 --trainer.max_time=00:00:02:20 --data.batch_size=32 --data.num_workers=6 --model.lr_encoder=2e-3 --model.lr_decoder=2e-3"
    $TOOL --out "$OUT/E.safetensors" --run-dir $R/E -- $COMMON > $R/E.log 2>&1 &
    E=$!; wait_for_scenes $E
    $TOOL --out "$OUT/D.safetensors" --run-dir $R/D -- $COMMON --model.network.decoder_features=32 "--model.network.encoder_feature_dims=[16,32,64,64]" > $R/D.log 2>&1 &
    D=$!
    wait $E; wait $D; t "done"; report E D ;;
esac
