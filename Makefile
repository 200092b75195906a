# Two entry points: `make bench` (the main job) and `make test`. Each creates $(VENV) when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU/CUDA torch wheel to install; override e.g. TORCH_SPEC="torch==2.11.0".
DEFAULT_TORCH := torch==2.13.0
TORCH_SPEC ?= $(DEFAULT_TORCH)
# Triton and numpy for the kernels; CI also runs the tests against the GPU machines' Triton 3.6
# (`make test-triton36`; its interpreter needs numpy < 2.4).
TRITON_SPEC ?= triton==3.9.0
NUMPY_SPEC ?= numpy

.PHONY: test test-triton36 bench gpu-check gpu-wheels aot clean

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)" "$(NUMPY_SPEC)"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

test: $(VENV)/.ready
	$(PY) -m pytest -q -n auto --dist worksteal

# The GPU machines run sm_90: the ahead-of-time check compiles for it alone here. PyTorch's nn.LSTM
# tests take every few cases here (see tests/test_torch_nn_lstm_port.py), and their run on the CPU
# path, which runs no Triton code, only with another torch than `make test`'s.
test-triton36:
	TRITON_LSTM_AOT_ARCH=90 TRITON_LSTM_PORT_THIN=1 \
	TRITON_LSTM_PORT_CPU_PATH=$(if $(filter $(DEFAULT_TORCH),$(TORCH_SPEC)),0,1) \
	$(MAKE) test VENV=.venv-triton36 TRITON_SPEC="triton==3.6.0" NUMPY_SPEC="numpy<2.4"

bench: $(VENV)/.ready
	$(PY) -m benchmarks.run

# On a GPU machine, with its own torch and Triton (no venv): tests, benchmark, plots.
# SESSION=full runs the full option product and the standard suite instead (resumable; see
# benchmarks/gpu_session.sh).
SESSION ?= quick
gpu-check:
	bash benchmarks/gpu_session.sh $(SESSION)

# The test packages the GPU machines lack, as wheels in .whl/ for their Python 3.12 (gpu-check
# installs them from there; they have no network).
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl expecttest

aot: $(VENV)/.ready
	$(PY) -m triton_lstm.aot

clean:
	rm -rf $(VENV) .venv-triton36 .pytest_cache
