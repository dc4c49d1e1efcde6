#!/usr/bin/env bash
# Starts the service on the built-in default model, asks it about a sample clip, prints the
# answer, and keeps serving on http://127.0.0.1:${PORT:-8000} until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${PORT:-8000}
CLIP=${CLIP:-model/demo/sample.mp4}
QUESTION=${QUESTION:-What colour is the square, and what do you hear?}

"$PY" -m service --host 127.0.0.1 --port "$PORT" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 300); do
  if curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then break; fi
  kill -0 $server 2>/dev/null || { echo "the service failed to start" >&2; exit 1; }
  sleep 0.5
done
echo
echo "POST /v1/video/chat  video=$CLIP  prompt=\"$QUESTION\""
curl -fsS "http://127.0.0.1:$PORT/v1/video/chat" -F "video=@$CLIP" -F "prompt=$QUESTION" -F max_tokens=32 \
  | "$PY" -c '
import json, sys
r = json.load(sys.stdin)
u = r["usage"]
d = u["prompt_tokens_details"]
print("answer:", r["choices"][0]["message"]["content"])
print("tokens: prompt %d (audio %d, video %d, text %d), completion %d; video_id %s" % (
    u["prompt_tokens"], d["audio_tokens"], d["video_tokens"], d["text_tokens"], u["completion_tokens"], r["video_id"]))'
if [ "${AVCHAT_MODEL:-demo}" = demo ]; then
  echo
  echo "note: the built-in demo model is a toy, trained on synthetic clips (a coloured square moving over a tone"
  echo "or noise): it knows those colours and sounds and nothing else. To ask about real videos, serve real weights"
  echo "(AVCHAT_MODEL=phi2 or a trained checkpoint; README, \"Serving on a GPU host\")."
fi
echo
echo "serving on http://127.0.0.1:$PORT (Ctrl-C to stop); the page: http://127.0.0.1:$PORT/"
wait $server
