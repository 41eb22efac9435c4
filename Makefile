# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
# torch is pinned first so pip picks the CPU wheel where the machine offers one (find-links) and the
# CUDA build from PyPI on a GPU machine; scripts/fix_cpu_torchvision.py is a no-op on the latter.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0 torchvision==0.28.0
OUT ?= runs/demo

.PHONY: demo test test-slow lint format env clean

$(BIN)/vlmgrpo: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	$(BIN)/python scripts/fix_cpu_torchvision.py
	touch $(BIN)/vlmgrpo

env: $(BIN)/vlmgrpo

demo: env
	$(BIN)/vlmgrpo demo --output-dir $(OUT)

test: env
	$(BIN)/python -m pytest -q

test-slow: env
	$(BIN)/python -m pytest -q -m "slow"

lint: env
	$(BIN)/ruff check src tests bench scripts && $(BIN)/ruff format --check src tests bench scripts

format: env
	$(BIN)/ruff format src tests bench scripts && $(BIN)/ruff check --fix src tests bench scripts

clean:
	rm -rf $(VENV) runs
