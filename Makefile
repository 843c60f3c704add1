# linewatch: the targets the README names. Everything runs from a local virtual environment (.venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATASETS ?= $(or $(LINEWATCH_DATASETS),../shared/datasets)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install system-deps run review train test test-fast lint bench bench-train bench-export bench-pipeline bench-casting-sweep bench-auto bench-s3 bench-rollout bench-nn bench-graph bench-peer bench-loo bench-objective bench-position bench-type-tail bench-decode bench-score describe clean soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[edge,train,review,dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install linewatch with its extras

system-deps:  ## Debian packages the tests need (mosquitto, PostgreSQL server, Chromium for the review page, shellcheck); installs them when missing and root
	@missing=""; \
	  { command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  test -x /usr/bin/chromium || missing="$$missing chromium"; \
	  command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    else echo "missing Debian packages:$$missing (run as root: apt-get install$$missing)"; fi; \
	  fi

run: install  ## main job: build the demo bundle (train + int8 export on bottle), run the agent on a demo folder
	$(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle
	$(VENV)/bin/linewatch-agent demo --config configs/agent.default.yaml --images $(DATASETS)/mvtec_ad/bottle/test

REVIEW_PORT ?= 8501
review: install  ## the review page on the demo database (after `make run`), http://127.0.0.1:$(REVIEW_PORT), log in as demo
	$(VENV)/bin/linewatch-review serve --config configs/review.default.yaml --port $(REVIEW_PORT)

train: install  ## train + evaluate every model on bottle, print the metrics table
	$(VENV)/bin/linewatch-train train --config configs/datasets/bottle.yaml --out runs/bottle

describe: install  ## data set statistics of bottle, tire and casting
	for ds in bottle tire casting; do $(VENV)/bin/linewatch-train describe --config configs/datasets/$$ds.yaml; done

test: install system-deps  ## what CI runs: ruff (lint + format), mypy (strict on edge_agent, model_export), every test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q --durations=25

test-fast: install system-deps  ## the edit loop (under 2 minutes): ruff and the unit tests that train nothing (no services; shellcheck from system-deps)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow" tests/unit

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: bench-train bench-export bench-pipeline  ## every benchmark; Markdown tables in bench/results/

bench-train: install  ## train + evaluate every model on bottle, tire, casting: one table per data set
	$(PY) -m bench.train_bench --out bench/results

bench-auto: install  ## PatchCore from dataset-only configs (the search chooses), type head, int8 export; bench/results/autoconfig.md
	$(PY) -m bench.autoconfig_bench --out bench/results

bench-casting-sweep: install  ## how the casting PatchCore settings were chosen (tuning vs holdout part of the test split)
	$(PY) -m bench.casting_sweep

bench-export: install  ## int8 export of the bench runs: sizes, latency, throughput, AUROC float vs int8
	$(PY) -m bench.export_bench --out bench/results

clean:
	rm -rf runs bundles data .pytest_cache

bench-pipeline: install system-deps  ## edge pipeline frames/s and latency vs scoring alone (needs bundles/demo-bottle)
	$(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle
	$(PY) -m bench.pipeline_bench --bundle bundles/demo-bottle
	$(PY) -m bench.profile_stages --bundle bundles/demo-bottle

bench-s3: install system-deps  ## S3 requests per 1,000 frames, per-frame objects vs batches, monthly cost per camera
	$(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle
	$(PY) -m bench.s3_requests --bundle bundles/demo-bottle --datasets $(DATASETS)

bench-rollout: install  ## frames/s around a bundle swap (the running agent loads, warms and swaps) vs steady
	$(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle
	$(PY) -m bench.rollout_bench --bundle bundles/demo-bottle --datasets $(DATASETS)

bench-graph: install  ## the int8 scorer graph against a bare Lite0 graph of the same depth, the type tail, inspect with and without it (demo bundle)
	$(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle
	$(PY) -m bench.graph_bench --bundle bundles/demo-bottle

bench-nn: install  ## nearest-neighbour search, exact vs clustered, on casting's int8 bundle (bundles/auto/casting, from make bench-auto)
	$(PY) -m bench.nn_bench --bundle $(or $(NN_BUNDLE),bundles/auto/casting) --config configs/datasets/casting.yaml

bench-score: install  ## image score (mean of the map's top pixels): whole-map partition vs largest(), score and whole frame (after make bench-auto)
	$(PY) -m bench.score_bench

bench-loo: install  ## leave-one-out scores (without own rows, with stand-ins, midpoint) against held-out normals; the runs of make bench-auto
	$(PY) -m bench.loo_bench --out bench/results

bench-decode: install  ## decoding: camera-sized JPEG frames full against reduced; PNG frames by libspng against OpenCV
	$(PY) -m bench.decode_bench --out bench/results

bench-objective: install  ## settings search: its synthetic objective and low-false-alarm ones against real test figures, every candidate (~20 min)
	$(PY) -m bench.objective_bench --out bench/results

bench-position: install  ## per-position scaling of patch distances, test split and search objective (needs make bench-auto's bundles)
	$(PY) -m bench.position_bench --out bench/results

bench-type-tail: install  ## type head: macro F1 and int8 tail time of cheaper deep features than stage 7 (needs make bench-auto's runs)
	$(PY) -m bench.type_tail_bench --out bench/results

soak: install system-deps  ## fault and load suite: 10,000 frames, SIGKILLs, broker restarts, S3 outage, a burst
	$(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle
	$(PY) -m bench.soak --bundle bundles/demo-bottle --datasets $(DATASETS) --work runs/soak

# the peer benchmark has its own virtual environment: anomalib + torch + OpenVINO + ONNX Runtime, and linewatch's
# edge side only (no TensorFlow)
PEER_VENV  ?= .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed
PEER_ARGS  ?=

$(PEER_STAMP): bench/peer/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --quiet -r bench/peer/requirements.txt
	$(PEER_VENV)/bin/pip install --quiet -e ".[edge]"
	touch $(PEER_STAMP)

bench-peer: $(PEER_STAMP)  ## linewatch int8 vs anomalib 2.7.0 PatchCore/PaDiM (torch, ONNX Runtime, OpenVINO) on bottle, same Lite0 weights, own .venv-peer; bench/results/peer.md (PEER_ARGS=--quick: smoke run)
	test -f bundles/demo-bottle/manifest.json || { $(MAKE) install && $(PY) -m model_export.demo_bundle --config configs/datasets/bottle.yaml --out bundles/demo-bottle; }
	HF_HUB_OFFLINE=1 $(PEER_VENV)/bin/python -m bench.peer.peer_bench --data $(DATASETS)/mvtec_ad/bottle $(PEER_ARGS)
