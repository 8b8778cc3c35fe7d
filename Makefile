# Every target sets up .venv on first use, so a fresh machine needs only python3, pip and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-slow test-clients test-onnx test-keras-hub test-wheel test-peers demo bench bench-peers gpu-wheels clean

DEMO_DIR ?= runs/quickstart
DEMO_IMAGE ?= data/bccd/JPEGImages/BloodImage_00007.jpg

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The exports in real clients (MediaPipe Tasks' ObjectDetector): the optional `clients`
# extra, installed into the same venv (it pins nothing that TensorFlow needs).
CLIENTS_STAMP := $(VENV)/.clients-stamp
$(CLIENTS_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,clients]'
	touch $(CLIENTS_STAMP)

test-clients: $(CLIENTS_STAMP)
	$(PY) -m pytest -q -m clients

# The ONNX export in onnxruntime: the optional `onnx` extra (tf2onnx, onnx, onnxruntime),
# installed into the same venv (pip's dry run with constraints.txt changes no pin).
ONNX_STAMP := $(VENV)/.onnx-stamp
$(ONNX_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,onnx]'
	touch $(ONNX_STAMP)

test-onnx: $(ONNX_STAMP)
	$(PY) -m pytest -q -m onnx

# The package as users get it: `python -m build` (sdist, then the wheel from it), the
# wheel installed (not editable) into a fresh venv, tests/wheel_smoke.py run there from
# a temporary folder outside the checkout (imports, weights, BCCD, a training step, predict).
WHEEL_DIR ?= build/wheel-test
test-wheel: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt build
	rm -rf $(WHEEL_DIR)
	$(PY) -m build --outdir $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install -q -c constraints.txt $(WHEEL_DIR)/dist/*.whl
	run=$$(mktemp -d) && cp tests/wheel_smoke.py $$run && cd $$run && \
		env -u PYTHONPATH $(abspath $(WHEEL_DIR))/venv/bin/python wheel_smoke.py; \
		status=$$?; rm -rf $$run; exit $$status

# SCB on keras-hub's RetinaNet (keras_scb.integrations.keras_hub): the optional `keras-hub`
# extra, into the same venv (keras-hub 0.29.1 keeps the pinned Keras 3.15.1 / TensorFlow 2.21).
KERAS_HUB_STAMP := $(VENV)/.keras-hub-stamp
$(KERAS_HUB_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,keras-hub]'
	touch $(KERAS_HUB_STAMP)

test-keras-hub: $(KERAS_HUB_STAMP)
	$(PY) -m pytest -q -m keras_hub

# Trains configs/quickstart.cfg on the vendored BCCD, evaluates it on the test split
# (recall by scale, COCO and VOC07 metrics) and draws the detections of one image.
demo: $(STAMP)
	$(PY) -m keras_scb.train --flagfile=configs/quickstart.cfg --model_dir=$(DEMO_DIR)
	$(PY) -m exporters.predict --checkpoint=$(DEMO_DIR)/last.keras --images=$(DEMO_IMAGE) \
		--output_dir=$(DEMO_DIR)/predictions --score_threshold=0.4
	@echo "Per-class VOC07 AP on the BCCD test split (all metrics: $(DEMO_DIR)/eval/metrics.md):"
	@awk '/VOC07 11-point AP/ {f = 1} f && /^\|/ {print; p = 1; next} p {exit}' $(DEMO_DIR)/eval/metrics.md
	@echo "Example detections (score >= 0.4): $$(ls $(DEMO_DIR)/predictions/*.png)"

# Benchmarks (not tests): loss overhead, input pipeline, train step, compute bound, latency.
bench: $(STAMP)
	$(PY) benchmarks/loss_overhead.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_step.py --models ssd300,mobilenetv2-ssdlite300
	$(PY) benchmarks/compute_bound.py --models ssd300
	$(PY) benchmarks/latency.py

# torchvision's ssd300_vgg16 train step, in its own venv, for a side-by-side ratio.
PEERS_VENV ?= .venv-peers
bench-peers: $(STAMP)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PEERS_VENV)/bin/python benchmarks/torchvision_peer.py
	$(PY) benchmarks/train_step.py --models ssd300

# Converted torchvision / ssd.pytorch checkpoints against the networks themselves (pytest -m
# peers): the library, torch and torchvision in the peers venv. torch's Linux wheel from PyPI
# brings its CUDA libraries (the venv is ~5.5 GB; the tests run on the CPU). Only the peers
# file is collected: torchvision must be imported before TensorFlow (see the test's header).
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp
$(PEERS_STAMP): pyproject.toml constraints.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PEERS_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[torch]' pytest
	touch $(PEERS_STAMP)

test-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python -m pytest -q -s -m peers tests/test_peers_reference_weights.py

# Wheels for benchmarks/gpu_check.py on a GPU machine that has JAX and PyTorch but no
# TensorFlow and no package registry (Python 3.12, x86-64): fill .whl/ here, carry it
# there, then `pip install --no-index --find-links .whl keras` (README, "GPU check").
GPU_PYTHON ?= 3.12
GPU_WHEELS := keras==3.15.1 namex==0.1.0 optree==0.20.0 h5py==3.14.0 rich==15.0.0 \
	markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0 absl-py==2.5.1
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --only-binary=:all: --no-deps --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info
