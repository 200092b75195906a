# Two entry points: `make bench` (the main job) and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU/CUDA torch wheel to install; override e.g. TORCH_SPEC="torch==2.11.0".
TORCH_SPEC ?= torch==2.13.0

.PHONY: test bench gpu-check aot clean

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

test: $(VENV)/.ready
	$(PY) -m pytest -q

bench: $(VENV)/.ready
	$(PY) -m benchmarks.run

# On a GPU machine, with its own torch and Triton (no venv): tests, AOT check, benchmark, plots.
# SESSION=full runs the standard suite instead (resumable; see benchmarks/gpu_session.sh).
SESSION ?= quick
gpu-check:
	bash benchmarks/gpu_session.sh $(SESSION)

aot: $(VENV)/.ready
	$(PY) -m triton_lstm.aot

clean:
	rm -rf $(VENV) .pytest_cache
