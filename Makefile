# Every target a user needs. `make help` lists them; each one installs first if needed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A fresh machine gets this torch first (the CPU wheel where one lies on disk); a CUDA torch that is
# already in the venv, or in $(PYTHON) (reused through --system-site-packages), is kept and pinned.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The package and its dependencies go in with uv (from PyPI; 19 s against pip's 66 s on 2 cores, no cache, the
# same versions), which pip puts in the venv first. pip does it instead with INSTALLER=pip, in a venv that reuses
# the system's CUDA torch (uv does not see system site packages and would fetch torch again) and when uv fails
# (uv does not read pip.conf: a machine that reaches only a pip-configured mirror).
INSTALLER ?= uv

# Training data: DOMAIN random draws each subject's acquisition from what a multi-centre cohort spans
# (pipeline/data/domains.yaml; fixed: one protocol, SPACING=2 its grid). The shifted-domain test set is drawn
# from ranges outside the training ones, with another seed: measured beside the in-domain test split.
# 96 subjects, 12 held out: more acquisitions at the same training steps (84 training subjects vs 36) lifted the
# shifted-domain test Dice 0.605 -> 0.658 and in-domain 0.767 -> 0.842 (one seed; bundle docs); ~2 min more synthesis
SUBJECTS ?= 96
TEST_FRACTION ?= 0.125
DOMAIN ?= random
SPACING ?=
SEED ?= 0
DATA_DIR ?= data/synthetic
MANIFEST ?= data_manifests/synthetic.json
SHIFTED_SUBJECTS ?= 16
SHIFTED_DIR ?= data/shifted
SHIFTED_MANIFEST ?= data_manifests/shifted.json
TRAIN_DIR ?= outputs/train
PRED_DIR ?= outputs/predictions
EVAL_DIR ?= outputs/evaluation
SHIFTED_OUT ?= outputs/shifted
INDEPENDENT_DIR ?= data/independent
INDEPENDENT_MANIFEST ?= data_manifests/independent.json
INDEPENDENT_OUT ?= outputs/independent
BUNDLE ?= bundles/stroke_mri_segmentation
TRAIN_CONFIG ?= $(BUNDLE)/configs/train.yaml
# `make plan` writes the plan of MANIFEST here (and its fingerprint beside it); `make train PLAN=$(PLAN_OUT)` uses it
PLAN_OUT ?= outputs/plans/$(basename $(notdir $(MANIFEST))).yaml
# MODEL: a checkpoint or bundle for `make infer`; default: the best checkpoint of the last training.
# (looked up when the recipe runs, so `make demo` finds the checkpoint its own training wrote)
LAST_BEST = $$(ls -t $(TRAIN_DIR)/checkpoints/best-*.ckpt 2>/dev/null | head -n 1)

.PHONY: help install install-browser data validate preview plan train cv infer evaluate shifted independent bundle demo norm-study bench bench-plan mlflow-ui test test-fast lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the package with its dev tools (idempotent)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	    echo "install: $(PYTHON) has a CUDA torch; the venv reuses it (--system-site-packages)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@$(PY) -c "import torch" 2>/dev/null || \
	  $(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	@$(PY) -c "from importlib.metadata import version; print('torch==' + version('torch'))" > $(VENV)/constraints.txt
	@echo "install: keeping $$(cat $(VENV)/constraints.txt)"
	@if [ "$(INSTALLER)" = uv ] && ! grep -qs "include-system-site-packages = true" $(VENV)/pyvenv.cfg \
	  && $(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode \
	     -c $(VENV)/constraints.txt -e '.[dev]'; then echo "install: installed with uv"; \
	else echo "install: installing with pip"; $(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[dev]'; fi
	@touch $@

install-browser: ## Chromium from the system packages (apt), for the report viewer's headless-browser test
	@if command -v chromium >/dev/null; then echo "install-browser: $$(chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null && chromium --version; \
	else sudo apt-get install -y chromium; fi

data: $(MANIFEST) $(SHIFTED_MANIFEST) ## synthesise SUBJECTS=96 training/test subjects (DOMAIN=random) and 16 shifted-domain test subjects

$(MANIFEST): | $(STAMP)
	$(PY) -m pipeline synth --domain $(DOMAIN) --out $(DATA_DIR) --subjects $(SUBJECTS) --seed $(SEED) \
	  $(if $(SPACING),--spacing $(SPACING)) --test-fraction $(TEST_FRACTION) --manifest $(MANIFEST) --preview $(DATA_DIR)/preview.png

$(SHIFTED_MANIFEST): | $(STAMP)
	$(PY) -m pipeline synth --domain shifted --out $(SHIFTED_DIR) --subjects $(SHIFTED_SUBJECTS) \
	  --seed $$(( $(SEED) + 1000 )) --all-testing --manifest $(SHIFTED_MANIFEST) --preview $(SHIFTED_DIR)/preview.png

$(INDEPENDENT_MANIFEST): | $(STAMP)
	$(PY) benchmarks/independent_cases.py $(INDEPENDENT_DIR) --cases 18 --manifest $(INDEPENDENT_MANIFEST)

validate: $(MANIFEST) ## check every file of MANIFEST
	$(PY) -m pipeline validate $(MANIFEST)

preview: $(MANIFEST) ## PNG montage of a few cases of MANIFEST
	$(PY) -m pipeline preview $(MANIFEST) --out $(DATA_DIR)/preview.png

plan: $(MANIFEST) ## fingerprint MANIFEST and plan spacing, patch, DynUNet and batch for BUDGET=cpu -> PLAN_OUT
	$(PY) -m pipeline plan --datalist $(MANIFEST) --budget $(or $(BUDGET),cpu) --out $(PLAN_OUT)

train: $(MANIFEST) ## train the default 3D U-Net on MANIFEST (PLAN=outputs/plans/x.yaml merges a plan; ARGS="--ID VALUE ...")
	$(PY) -m pipeline train $(if $(PLAN),--config $(TRAIN_CONFIG) $(PLAN)) --datalist $(MANIFEST) \
	  --output_dir $(TRAIN_DIR) $(ARGS)

cv: $(MANIFEST) ## FOLDS-fold cross-validation on MANIFEST into CV_DIR (PLAN= as for train; ARGS="--ID VALUE ...")
	$(PY) -m pipeline cv --folds $(or $(FOLDS),5) $(if $(PLAN),--config $(TRAIN_CONFIG) --config $(PLAN)) \
	  --datalist $(MANIFEST) --output_dir $(or $(CV_DIR),outputs/cv) $(ARGS)

infer: $(MANIFEST) ## segment MANIFEST's test split with MODEL (default: the last training's best) into PRED_DIR
	@model="$${MODEL:-$(LAST_BEST)}"; \
	test -n "$$model" || { echo "no checkpoint in $(TRAIN_DIR)/checkpoints: run 'make train' first"; exit 1; }; \
	set -x; $(PY) -m pipeline infer --model "$$model" --datalist $(MANIFEST) --output $(PRED_DIR) --overwrite $(ARGS)

evaluate: $(MANIFEST) ## ISLES'22 metrics, plots and report.html of PRED_DIR in EVAL_DIR (logged to the training's MLflow run)
	@run_id=$$(cat $(TRAIN_DIR)/mlflow_run_id.txt 2>/dev/null); set -x; \
	$(PY) -m pipeline evaluate --datalist $(MANIFEST) --predictions $(PRED_DIR) --output $(EVAL_DIR) \
	  $${run_id:+--run-id $$run_id}

shifted: $(SHIFTED_MANIFEST) ## segment and evaluate the shifted-domain test set with MODEL; metrics shifted/* in the training's MLflow run
	@model="$${MODEL:-$(LAST_BEST)}"; run_id=$$(cat $(TRAIN_DIR)/mlflow_run_id.txt 2>/dev/null); \
	test -n "$$model" || { echo "no checkpoint in $(TRAIN_DIR)/checkpoints: run 'make train' first"; exit 1; }; \
	set -x; $(PY) -m pipeline infer --model "$$model" --datalist $(SHIFTED_MANIFEST) --output $(SHIFTED_OUT)/predictions \
	  --overwrite $(ARGS) && \
	$(PY) -m pipeline evaluate --datalist $(SHIFTED_MANIFEST) --predictions $(SHIFTED_OUT)/predictions \
	  --output $(SHIFTED_OUT)/evaluation --name shifted $${run_id:+--run-id $$run_id}

independent: $(INDEPENDENT_MANIFEST) ## segment and evaluate 18 cases of a second, independent simulator with MODEL; metrics independent/* in MLflow
	@model="$${MODEL:-$(LAST_BEST)}"; run_id=$$(cat $(TRAIN_DIR)/mlflow_run_id.txt 2>/dev/null); \
	test -n "$$model" || { echo "no checkpoint in $(TRAIN_DIR)/checkpoints: run 'make train' first"; exit 1; }; \
	set -x; $(PY) -m pipeline infer --model "$$model" --datalist $(INDEPENDENT_MANIFEST) \
	  --output $(INDEPENDENT_OUT)/predictions --overwrite $(ARGS) && \
	$(PY) -m pipeline evaluate --datalist $(INDEPENDENT_MANIFEST) --predictions $(INDEPENDENT_OUT)/predictions \
	  --output $(INDEPENDENT_OUT)/evaluation --name independent $${run_id:+--run-id $$run_id}

bundle: $(STAMP) ## export the last training's best checkpoint (or FROM=outputs/cv: the fold ensemble) into BUNDLE
	@ckpt="$${FROM:-$(LAST_BEST)}"; \
	test -n "$$ckpt" || { echo "no checkpoint in $(TRAIN_DIR)/checkpoints: run 'make train' first"; exit 1; }; \
	set -x; $(PY) -m pipeline export --checkpoint "$$ckpt" --bundle $(BUNDLE)

demo: ## everything on a fresh machine: install, data, train, infer, evaluate, export and verify the bundle
	@start=$$(date +%s); \
	rm -rf $(TRAIN_DIR) $(PRED_DIR) $(EVAL_DIR) $(SHIFTED_OUT) outputs/bundle_predictions; \
	$(MAKE) --no-print-directory install && installed=$$(date +%s) && \
	$(MAKE) --no-print-directory data && synthesised=$$(date +%s) && \
	$(MAKE) --no-print-directory train && trained=$$(date +%s) && \
	$(MAKE) --no-print-directory infer evaluate shifted bundle ARGS=--save-prob && \
	$(PY) -m monai.bundle run --config_file $(BUNDLE)/configs/inference.yaml --bundle_root $(BUNDLE) \
	  --datalist $(MANIFEST) --output_dir outputs/bundle_predictions --overwrite true --mni_location false && \
	echo && $(PY) -m pipeline compare in-domain=$(EVAL_DIR) shifted=$(SHIFTED_OUT)/evaluation \
	  --out outputs/domains.md && \
	end=$$(date +%s) && echo && echo "demo finished in $$(( end - start )) s: install $$(( installed - start )) s," \
	  "data $$(( synthesised - installed )) s, training $$(( trained - synthesised )) s, inference, evaluation and" \
	  "the bundle $$(( end - trained )) s" && \
	echo "  reports:     $(EVAL_DIR)/report.html (in-domain), $(SHIFTED_OUT)/evaluation/report.html (shifted): viewer, calibration" && \
	echo "  lesions:     $(PRED_DIR)/lesions.csv, $(SHIFTED_OUT)/predictions/lesions.csv (one row per lesion, MNI location)" && \
	echo "  bundle:      $(BUNDLE) (python -m monai.bundle run --config_file $(BUNDLE)/configs/inference.yaml --bundle_root $(BUNDLE) --datalist ...)" && \
	echo "  MLflow run:  $$(cat $(TRAIN_DIR)/mlflow_run_id.txt) in sqlite:///mlflow.db; open the UI with: make mlflow-ui"

norm-study: $(MANIFEST) ## train each normalisation (configs/norm/*.yaml) for EPOCHS=10 -> outputs/norm_study/study.{md,png}
	$(PY) -m pipeline study --variants bundles/stroke_mri_segmentation/configs/norm/*.yaml --output outputs/norm_study \
	  --datalist $(MANIFEST) --max_epochs $(or $(EPOCHS),10) $(ARGS)

bench: $(MANIFEST) $(SHIFTED_MANIFEST) ## speed, memory, Dice vs MONAI baselines, robustness -> benchmarks/results*.{json,md} (REPEATS=3, MODEL=)
	$(PY) benchmarks/bench_inference.py --repeats $(or $(REPEATS),3)
	$(PY) benchmarks/bench_training.py --repeats $(or $(REPEATS),3)
	$(PY) benchmarks/bench_accuracy.py --datalist $(MANIFEST) --shifted $(SHIFTED_MANIFEST) $(if $(MODEL),--model $(MODEL))
	$(PY) benchmarks/bench_robustness.py --datalist $(SHIFTED_MANIFEST) --training-datalist $(MANIFEST) \
	  $(if $(MODEL),--model $(MODEL))

bench-plan: $(STAMP) ## planned vs fixed at the same training time on 1 mm, 2 mm and 5 mm-slice synthetic sets -> benchmarks/results_plan.md (~20 min)
	$(PY) benchmarks/bench_plan.py $(if $(EPOCHS),--epochs $(EPOCHS))

mlflow-ui: $(STAMP) ## MLflow UI on the local store at http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

test: $(STAMP) ## run the whole test suite (slow tests included)
	$(PY) -m pytest

test-fast: $(STAMP) ## run the tests not marked slow
	$(PY) -m pytest -m "not slow"

lint: $(STAMP) ## ruff over the package, tests and benchmarks
	$(VENV)/bin/ruff check pipeline tests benchmarks

clean: ## remove generated data, outputs and caches (keeps .venv)
	rm -rf data outputs .pytest_cache .ruff_cache $(MANIFEST) $(SHIFTED_MANIFEST) $(INDEPENDENT_MANIFEST)
