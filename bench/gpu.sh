#!/usr/bin/env bash
# The GPU checks and benchmarks, in one go on a CUDA host (about 8-10 minutes on one H100):
#   1. what the host has (GPU, driver, torch, vLLM);
#   2. the paper's model answers a real clip on the GPU through the command line (bf16);
#   3. bench/gpu_bench.py: encoder ms per video, then both engines at 1 and 16 concurrent
#      streams (TTFT, tokens/s, peak GPU memory), each figure beside its DESIGN §6 floor; vLLM
#      twice, with the LLM in bfloat16 and in FP8 (AVCHAT_QUANTIZATION=fp8, quantized at load).
# The model is phi2 when `python -m model download` has cached it, else phi2-shape (the same
# sizes, random weights, built offline in about a minute). Needs torch with CUDA and vLLM in the
# environment (pip install -r docker/requirements.txt && pip install -e .), or run it inside the image:
#   docker compose run --rm --entrypoint bench/gpu.sh avchat
# The table is printed and written to $OUT/gpu_bench.md (default bench/.cache).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
OUT=${OUT:-bench/.cache}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, vllm; assert torch.cuda.is_available(), "torch has no CUDA"; print("torch", torch.__version__, "CUDA", torch.version.cuda, "vLLM", vllm.__version__)'

PRESET=$("$PY" -c 'import sys; sys.argv=["x"]; sys.path.insert(0, "bench"); import gpu_bench; print(gpu_bench.choose_preset(None))')
echo "== $PRESET answers a real clip on the GPU (command line, bfloat16)"
timeout 300 "$PY" -m model ask --preset "$PRESET" --device cuda --dtype bfloat16 --max-tokens 16 \
  tests/media/vllama_dog_barking.mp4 "What is happening, and what do you hear?" 2>&1 | tee "$OUT/gpu_ask.txt"
grep -q "audio 64 + video 829" "$OUT/gpu_ask.txt"

echo "== engines"
timeout 480 "$PY" bench/gpu_bench.py --preset "$PRESET" "$@" | tee "$OUT/gpu_bench.md"
