#!/usr/bin/env bash
# lmms-eval's own command line (0.7.3, in .venv-lmms: make install-lmms-eval) on the local task
# avchat_clips_mc (this folder) against a running service, offline. Results go under OUT_DIR.
#
#   training/benchmarks/lmms_eval/run.sh BASE_URL OUT_DIR [frames|video_url]
#
#   frames     lmms-eval's default: it samples MAX_FRAMES (4) frames itself and sends them as
#              image_url parts (PNG data: URLs), answered as one video without its sound
#   video_url  pass_video_url=True: it sends the clip as a file:// video_url; the service must
#              allow the clips' folder (AVCHAT_ALLOWED_LOCAL_MEDIA_PATH=tests/media) and
#              decodes it itself, frames and sound
#
# The mode is the third argument, else $LMMS_MODE, else frames. MODEL (default: the first id the
# service lists at BASE_URL/models), OPENAI_API_KEY (default: unused; a key from AVCHAT_API_KEYS
# where the service has keys), LMMS_EVAL (the lmms-eval executable). lmms-eval writes a failed
# request as its reply and still exits 0: this script exits 1 if any reply is such a failure.
set -euo pipefail

usage="usage: $0 BASE_URL OUT_DIR [frames|video_url]"
base_url=${1:?$usage}
out=${2:?$usage}
mode=${3:-${LMMS_MODE:-frames}}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
lmms_eval=${LMMS_EVAL:-$root/.venv-lmms/bin/lmms-eval}

if [ ! -x "$lmms_eval" ]; then
  echo "$lmms_eval not found: run make install-lmms-eval (or set LMMS_EVAL)" >&2
  exit 2
fi
case $mode in
  frames) media_args="max_frames_num=${MAX_FRAMES:-4}" ;;
  video_url) media_args="pass_video_url=True" ;;
  *)
    echo "mode is frames or video_url, not $mode; $usage" >&2
    exit 2
    ;;
esac

export OPENAI_API_KEY=${OPENAI_API_KEY:-unused}
model=${MODEL:-$(curl -fsS --max-time 10 -H "Authorization: Bearer $OPENAI_API_KEY" "$base_url/models" |
  "$(dirname "$lmms_eval")/python" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')}

mkdir -p "$out"
# No hub: the task's questions are a local JSON lines file, read by datasets' json builder.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_DATASETS_CACHE=${HF_DATASETS_CACHE:-$out/.hf_datasets}
started=$(mktemp "$out/.started.XXXXXX")
trap 'rm -f "$started"' EXIT
# One request at a time (lmms-eval's default is 32 in flight), and a failure is not retried.
"$lmms_eval" eval \
  --model openai \
  --model_args "model=$model,base_url=$base_url,num_concurrent=1,max_retries=1,$media_args" \
  --tasks avchat_clips_mc \
  --include_path "$here" \
  --batch_size 1 \
  --log_samples \
  --output_path "$out" 2>&1 | tee "$out/lmms_eval.log"

# lmms-eval exits 0 after an error of its own, and writes a failed request as its reply.
results=$(find "$out" -name '*_results.json' -newer "$started" | head -n 1)
if [ -z "$results" ]; then
  echo "lmms-eval wrote no results; see $out/lmms_eval.log" >&2
  exit 1
fi
if grep -q 'attempts failed' "$out/lmms_eval.log"; then
  echo "requests to $base_url failed; see $out/lmms_eval.log" >&2
  exit 1
fi
echo "results: $results"
