#!/usr/bin/env bash
# The training image's entry point:
#   docker compose --profile train run --rm train [more training arguments]
# runs a training stage with the shipped recipe, data from the mounted data root, one process per
# visible GPU (torchrun), writing under the checkpoint volume; arguments given are added after
# the defaults (so they win).
#   AVCHAT_STAGE      finetune (default: stage 2, from stage 1's output) or pretrain (stage 1)
#   AVCHAT_DATA_ROOT  where the manifests and media are (default /data/datasets)
#   AVCHAT_CHECKPOINTS where runs go (default /data/checkpoints): stage 1 -> stage1/, stage 2 -> stage2/
#   AVCHAT_GPUS       processes to start (default: the visible GPUs, at least 1)
# With --print as the first argument it prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${AVCHAT_STAGE:-finetune}
data=${AVCHAT_DATA_ROOT:-/data/datasets}
runs=${AVCHAT_CHECKPOINTS:-/data/checkpoints}
gpus=${AVCHAT_GPUS:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)}
case "$stage" in
  pretrain) args=(--config training/recipes/pretrain.yaml --data "$data/commonvoice.jsonl,$data/audiocaps.jsonl"
                  --output-dir "$runs/stage1") ;;
  finetune) args=(--config training/recipes/finetune.yaml --model "$runs/stage1/final"
                  --data "$data/videoinstruct.jsonl" --output-dir "$runs/stage2") ;;
  *) echo "AVCHAT_STAGE must be pretrain or finetune, not '$stage'" >&2; exit 2 ;;
esac
args+=(--data-root "$data")
cmd=(torchrun --standalone --nproc-per-node "$gpus" -m "training.$stage" "${args[@]}")
if [ "${1:-}" = "--print" ]; then
  shift
  printf '%s\n' "${cmd[@]}" "$@"
  exit 0
fi
exec "${cmd[@]}" "$@"
