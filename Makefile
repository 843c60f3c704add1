# linewatch: the targets the README names. Everything runs from a local virtual environment (.venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install run test lint bench describe clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[edge,train,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install linewatch with its extras

run: install  ## main job on embedded defaults: train + evaluate every model on bottle
	$(PY) -m training.cli train --config configs/datasets/bottle.yaml --out runs/bottle

describe: install  ## data set statistics of bottle, tire and casting
	for ds in bottle tire casting; do $(PY) -m training.cli describe --config configs/datasets/$$ds.yaml; done

test: install  ## ruff + the whole test suite
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install  ## full training/evaluation benchmark: one Markdown table per data set in bench/results/
	$(PY) -m bench.train_bench --out bench/results

clean:
	rm -rf runs .pytest_cache
