# Two commands do everything on a fresh machine (see README.md):
#   make tutorial   set up .venv, get CIFAR-10, train, evaluate, execute every notebook, write figures/
#   make test       set up .venv if needed, ruff, pytest, and pytest --nbval on the notebooks
#
# Settings (environment or make VAR=value):
#   VAE_TUTORIAL_DATA           folder holding cifar-10-batches-py/ (default: data/, downloaded)
#   VAE_TUTORIAL_ALLOW_PARTIAL  1 to accept a copy that fails the official checksums
#   VAE_TUTORIAL_FAST           1 for the fast mode (a few hundred images, seconds)
#   TRAIN_DATA                  training root if it differs from VAE_TUTORIAL_DATA
#   EXTRA_DATA                  a second training root mixed in (offline: the exact subset)
#   PRESET                      fast | cpu | gpu (default: cpu, or fast when VAE_TUTORIAL_FAST=1)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SHARED ?= ../shared/data

ifdef VAE_TUTORIAL_DATA
override VAE_TUTORIAL_DATA := $(abspath $(VAE_TUTORIAL_DATA))
export VAE_TUTORIAL_DATA
endif
export VAE_TUTORIAL_ALLOW_PARTIAL
export VAE_TUTORIAL_FAST
ifeq ($(VAE_TUTORIAL_FAST),1)
PRESET ?= fast
else
PRESET ?= cpu
endif
TRAIN_DATA ?= $(or $(VAE_TUTORIAL_DATA),data)
RUN        := runs/conv-$(PRESET)
export VAE_TUTORIAL_RUN := $(abspath $(RUN))
NOTEBOOKS  := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: tutorial test venv data train evaluate notebooks compare jpeg-copy results bench clean

tutorial: venv data train evaluate notebooks
	@echo "tutorial done: checkpoint $(RUN)/checkpoint.pt, notebooks executed, figures in figures/"

test: venv
	$(BIN)/ruff check .
	VAE_TUTORIAL_FAST=1 $(BIN)/python -m pytest tests notebooks --nbval --nbval-current-env \
	    --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Downloads and verifies the official archive into data/ unless VAE_TUTORIAL_DATA names a copy.
data: venv
	$(BIN)/python -m vae_tutorial data $(if $(VAE_TUTORIAL_DATA),,--download)

# Offline workplaces: decode the full-size JPEG copy beside the repo into data/cifar10-jpeg.
jpeg-copy: venv
	test -f data/cifar10-jpeg/cifar-10-batches-py/test_batch || \
	    $(BIN)/python $(SHARED)/cifar10_from_jpeg.py data/cifar10-jpeg

# Resumes from the last finished epoch if interrupted; does nothing once complete.
train: venv
	$(BIN)/python -m vae_tutorial train --preset $(PRESET) --data $(abspath $(TRAIN_DATA)) \
	    --test-data $(or $(VAE_TUTORIAL_DATA),$(abspath data)) --out $(RUN) \
	    $(if $(EXTRA_DATA),--set extra_data=$(abspath $(EXTRA_DATA))) \
	    $(if $(wildcard $(RUN)/checkpoint.pt),--resume)

evaluate: venv
	$(BIN)/python -m vae_tutorial evaluate $(RUN)/checkpoint.pt -k 100 --json $(RUN)/eval.json

# The seed's network trained for the same wall time as ConvVAE, same data and likelihood.
compare: venv
	$(BIN)/python -m vae_tutorial train --preset $(PRESET) --model seed \
	    --data $(abspath $(TRAIN_DATA)) --test-data $(or $(VAE_TUTORIAL_DATA),$(abspath data)) \
	    --out runs/seed-$(PRESET) --set epochs=100 \
	    $(if $(EXTRA_DATA),--set extra_data=$(abspath $(EXTRA_DATA))) \
	    --set time_limit=$(shell $(BIN)/python -c "import json;print(round(sum(h['seconds'] for h in json.load(open('$(RUN)/history.json')))/60,2))")
	$(BIN)/python -m vae_tutorial evaluate runs/seed-$(PRESET)/checkpoint.pt -k 100 \
	    --json runs/seed-$(PRESET)/eval.json

notebooks: venv
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	    echo "executing $$nb"; \
	    ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	        --ExecutePreprocessor.timeout=-1 $$nb || exit 1; \
	done
	$(BIN)/python -m vae_tutorial.nbclean $(NOTEBOOKS)

# Maintainers: record the full run under results/ (history, evaluation, half-precision weights).
results: venv
	mkdir -p results/conv-$(PRESET)
	cp $(RUN)/history.json $(RUN)/eval.json results/conv-$(PRESET)/
	$(BIN)/python -m vae_tutorial export $(RUN)/checkpoint.pt results/conv-$(PRESET)/model-fp16.pt
	cd results/conv-$(PRESET) && sha256sum model-fp16.pt > model-fp16.pt.sha256
	if [ -f runs/seed-$(PRESET)/eval.json ]; then mkdir -p results/seed-$(PRESET) && \
	    cp runs/seed-$(PRESET)/history.json runs/seed-$(PRESET)/eval.json results/seed-$(PRESET)/; fi
	$(BIN)/python -m vae_tutorial report --write README.md

# Maintainers: the README's Performance tables, measured on this machine (a few minutes).
bench: venv
	$(BIN)/python -m vae_tutorial bench --data $(TRAIN_DATA) \
	    --test-data $(or $(VAE_TUTORIAL_DATA),data) --iwae-images 20 --json results/bench-cpu.json
	$(BIN)/python -m vae_tutorial bench --loading-only --data $(TRAIN_DATA) --repeats 3 \
	    --json results/bench-loading-cpu.json
	$(BIN)/python -m vae_tutorial report --write README.md

clean:
	rm -rf runs/fast runs/figures-fast .pytest_cache
