#!/usr/bin/env bash
# One H100 (or any CUDA GPU), real-size random bf16 weights from the phi2 configs, nothing
# downloaded: SigLIP on 100 frames, Whisper on 30 s, TTFT and decode tokens/s for 1 and 16
# concurrent requests on each engine; one table. Needs torch with CUDA and vllm installed.
# Budget: within 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
timeout 480 python3 bench/gpu_bench.py
