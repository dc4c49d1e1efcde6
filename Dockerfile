# The avchat service on an NVIDIA GPU host: CUDA, vLLM, ffmpeg, the project, a non-root user.
#   docker compose up          (see docker-compose.yml and README "Serving on a GPU host")
FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ffmpeg curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# vLLM first (its CUDA torch wheel is the big layer, cached across project changes). 0.32 runs
# prompt embeddings in the V1 engine and is the release the CPU build in CI tests.
RUN pip install "vllm==0.32.0"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY training ./training
COPY clients ./clients
COPY scripts ./scripts
RUN pip install ".[train]" && python -c "import service.app, model, clients, deepspeed"

RUN useradd --create-home --uid 1000 avchat \
 && mkdir -p /data/hf /data/checkpoints /data/avchat /tmp/avchat \
 && chown -R avchat:avchat /data /tmp/avchat
USER avchat
ENV HF_HOME=/data/hf AVCHAT_HOME=/data/avchat AVCHAT_TEMP_DIR=/tmp/avchat \
    AVCHAT_MODEL=phi2 AVCHAT_ENGINE=auto AVCHAT_DEVICE=cuda AVCHAT_DTYPE=bfloat16

EXPOSE 8000
# Loading phi2 (and compiling vLLM's graphs) takes minutes on a cold cache: a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/ready || exit 1
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
