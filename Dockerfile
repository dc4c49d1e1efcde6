# The avchat service on an NVIDIA GPU host: CUDA, vLLM, ffmpeg, the project, a non-root user.
#   docker compose up          (see docker-compose.yml and README "Serving on a GPU host")
FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's archive keeps only the newest build of each package, so exact apt pins would break
# the image at the next security update: the base image's tag fixes the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ffmpeg curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The pinned packages first (vLLM's CUDA torch is the big layer, cached across project changes).
COPY docker/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY training ./training
COPY clients ./clients
COPY scripts ./scripts
# The project itself; every dependency it shares with the list above keeps that pin.
# hadolint ignore=DL3013
RUN pip install -c /tmp/requirements.txt ".[train]" && python -c "import service.app, model, clients, deepspeed"

# Ubuntu 24.04 images already have uid 1000 ("ubuntu"): it gives way to the service's user.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid 1000 avchat \
 && mkdir -p /data/hf /data/checkpoints /data/avchat /data/batches /tmp/avchat \
 && chown -R avchat:avchat /data /tmp/avchat
USER 1000:1000
ENV HF_HOME=/data/hf AVCHAT_HOME=/data/avchat AVCHAT_TEMP_DIR=/tmp/avchat \
    AVCHAT_MODEL=phi2 AVCHAT_ENGINE=auto AVCHAT_DEVICE=cuda AVCHAT_DTYPE=bfloat16

EXPOSE 8000
# Loading phi2 (and compiling vLLM's graphs) takes minutes on a cold cache: a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/ready"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
