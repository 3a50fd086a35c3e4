# One venv for everything; `make test` and `make demo` set it up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= export,ort,kernels,serve,cluster,storage,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

# Released weights by default; point these at local folders when offline.
UNET ?= alimama-creative/M3DDM-Video-Outpainting
VAE ?= stable-diffusion-v1-5/stable-diffusion-v1-5
ENGINES ?= engines
PRECISION ?= both
SIZE ?= 256
# TensorRT plans: auto builds them when TensorRT and a GPU are present (yes: fail without them; no: skip).
PLANS ?= auto
WINDOWS ?=
# More `python -m export` options, e.g. EXPORT_ARGS="--attention-softmax fp16 --opt-level 4".
EXPORT_ARGS ?=

.PHONY: setup lint test test-all test-cluster test-gpu demo engines plans doctor serve bench bench-long bench-service bench-cluster bench-faults bench-host bench-encode bench-model gpu-check gpu-wheels official-env bench-official clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(if $(findstring dev,$(EXTRAS)),$(PY) -m pip install -q --no-deps lpips==0.1.4)
	touch $@

test: setup
	$(PY) -m pytest -q

# ruff (style and likely bugs, whole tree) and mypy (types of the packages); both configured in pyproject.toml.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# Also the slow tests (full-size model on the meta device and with random weights).
test-all: setup
	$(PY) -m pytest -q -m 'not gpu'

# Several Ray nodes on this machine and their faults (a node lost mid-batch, a worker killed mid-level and
# mid-job, the head gone): minutes, so marked slow and run here, not by `make test`.
test-cluster: setup
	$(PY) -m pytest -q -m slow tests/test_cluster_nodes.py tests/test_cluster.py

# The GPU tests (TensorRT, ORT CUDA, kernels); they skip, saying why, where a part is missing.
test-gpu: setup
	$(PY) -m pytest -q -m gpu

# ONNX graphs for the released weights, and TensorRT plans when TensorRT and a GPU are here.
# UNET/VAE may name local folders.
engines: setup
	$(PY) -m export --unet $(UNET) --vae $(VAE) --out $(ENGINES) --precision $(PRECISION) --size $(SIZE) \
		--plans $(PLANS) $(if $(WINDOWS),--windows $(WINDOWS)) $(EXPORT_ARGS)

# TensorRT plans for an existing engines folder, built on (and for) this machine's GPU.
plans: setup
	$(PY) -m export.tensorrt_build --engines $(ENGINES) $(if $(WINDOWS),--windows $(WINDOWS))

# Can this machine run the fast path? (GPU, drivers, TensorRT, kernels, a tiny engine vs ONNX Runtime)
doctor: setup
	$(PY) -m runtime.doctor $(if $(wildcard $(ENGINES)/manifest.json),--engines $(ENGINES))

# Offline end to end on what the project makes itself: a small random checkpoint, a synthetic clip.
demo: setup
	$(PY) -m export.demo --out build/demo

# The HTTP service on the demo engines (made first if missing): http://127.0.0.1:8000/ (OpenAPI at /docs).
serve: setup
	test -f build/demo/engines/manifest.json || $(PY) -m export.demo --out build/demo
	$(PY) -m runtime.serve --engines build/demo/engines --data build/serve

# Every GPU figure in one run, on a GPU machine with PyTorch and nothing installable: no setup step, the machine's
# own python unless this checkout has its venv (README: "On a GPU machine"). DRY=1: the same on the CPU, tiny.
GPU_CHECK_OUT ?= benchmarks/results_gpu_check$(if $(DRY),_dry_run).json
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) $(if $(DRY),--dry-run) \
		$(if $(OFFICIAL),--official $(OFFICIAL))

# The wheels the GPU machines' image lacks (pure Python, pinned as the export extra pins them), into wheels/ to bring;
# and in wheels/official the official code's own libraries (gpu_check --official installs them aside, not over the
# machine's newer ones).
gpu-wheels:
	$(PYTHON) -m pip download --no-deps -d wheels $$($(PYTHON) -m benchmarks.gpu_check --carry)
	$(PYTHON) -m pip download --no-deps -d wheels/official $(OFFICIAL_LIBS)

# Speed and memory against the official-equivalent baseline (tiny fixtures, CPU; GPU backends when present).
bench: setup
	$(PY) -m benchmarks.speed --json benchmarks/results_speed.json

# Long jobs: time saved by resuming, checkpoint cost per batch, RAM and work-dir size of a long 1080p video.
bench-long: setup
	test -f build/demo/engines/manifest.json || $(PY) -m export.demo --out build/demo
	$(PY) -m benchmarks.long_jobs --json benchmarks/results_long_jobs.json

# The service: overhead per job against the CLI, memory with 100 jobs queued.
bench-service: setup
	test -f build/demo/engines/manifest.json || $(PY) -m export.demo --out build/demo
	$(PY) -m benchmarks.service --json benchmarks/results_service.json

# One long video over Ray workers: sampling of a 600-frame plan with 1, 2, 4 CPU workers against one process.
bench-cluster: setup
	test -f build/demo/engines/manifest.json || $(PY) -m export.demo --out build/demo
	$(PY) -m benchmarks.cluster --json benchmarks/results_cluster.json

# What a lost Ray node costs runtime.batch: undisturbed against a node removed mid-batch (several nodes here).
bench-faults: setup
	test -f build/demo/engines/manifest.json || $(PY) -m export.demo --out build/demo
	$(PY) -m benchmarks.cluster_faults --json benchmarks/results_cluster_faults.json

# The host side alone (instant engine): per-stage ms per frame, wall per frame, time to the first step, peak RSS.
bench-host: setup
	$(PY) -m benchmarks.host --json benchmarks/results_host.json

# The encoder's threading: ms and KiB per frame, PSNR against lossless, and whether the bytes follow the cores.
bench-encode: setup
	$(PY) -m benchmarks.encode --json benchmarks/results_encode.json

# Against the official code itself (OFFICIAL=a checkout of alimama-creative/M3DDM-Video-Outpainting), which runs
# in a venv of its own with the libraries it was written for.
OFFICIAL ?=
OFFICIAL_VENV := build/official-venv
# The libraries the official code was written for (its requirements pin diffusers; the rest as of its release).
OFFICIAL_LIBS := diffusers==0.18.2 transformers==4.30.2 huggingface_hub==0.25.2 einops==0.8.2
official-env: $(OFFICIAL_VENV)/.installed

$(OFFICIAL_VENV)/.installed:
	test -x $(OFFICIAL_VENV)/bin/python || $(PYTHON) -m venv $(OFFICIAL_VENV)
	$(OFFICIAL_VENV)/bin/pip install -q torch==2.13.0 $(OFFICIAL_LIBS) opencv-python-headless==4.11.0.86 'numpy<2' safetensors==0.8.0
	touch $@

bench-official: setup official-env
	test -n "$(OFFICIAL)" || (echo "error: pass OFFICIAL=path/to/a/checkout/of/the/official/repository" >&2; exit 2)
	$(PY) -m benchmarks.official --repo $(OFFICIAL) --json benchmarks/results_official.json

# Full-size model build, save and load: time and peak RAM (writes a 2.6 GB checkpoint to a temp dir).
bench-model: setup
	$(PY) -m benchmarks.full_size_model

clean:
	rm -rf build $(VENV) .pytest_cache
