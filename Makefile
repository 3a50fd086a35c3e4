# One venv for everything; `make test` and `make demo` set it up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= export,ort,kernels,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

# Released weights by default; point these at local folders when offline.
UNET ?= alimama-creative/M3DDM-Video-Outpainting
VAE ?= stable-diffusion-v1-5/stable-diffusion-v1-5
ENGINES ?= engines
PRECISION ?= both
SIZE ?= 256

.PHONY: setup test test-all demo engines bench bench-model clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

test: setup
	$(PY) -m pytest -q

# Also the slow tests (full-size model on the meta device and with random weights).
test-all: setup
	$(PY) -m pytest -q -m 'not gpu'

# ONNX graphs (and, later, TensorRT plans) for the released weights; UNET/VAE may name local folders.
engines: setup
	$(PY) -m export --unet $(UNET) --vae $(VAE) --out $(ENGINES) --precision $(PRECISION) --size $(SIZE)

# Offline end to end on what the project makes itself: a small random checkpoint, a synthetic clip.
demo: setup
	$(PY) -m export.demo --out build/demo

# Speed and memory against the official-equivalent baseline (tiny fixtures, CPU; GPU backends when present).
bench: setup
	$(PY) -m benchmarks.speed --json benchmarks/results_speed.json

# Full-size model build, save and load: time and peak RAM (writes a 2.6 GB checkpoint to a temp dir).
bench-model: setup
	$(PY) -m benchmarks.full_size_model

clean:
	rm -rf build $(VENV) .pytest_cache
