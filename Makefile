# Two commands do everything on a fresh machine (see README.md):
#   make tutorial   set up .venv, get CIFAR-10, train, evaluate, execute every notebook, write figures/
#   make test       set up .venv if needed, ruff, pytest, and pytest --nbval on the notebooks
#
# Settings (environment or make VAR=value); the package resolves every default itself:
#   VAE_TUTORIAL_DATA           folder holding cifar-10-batches-py/ (default: data/, downloaded)
#   VAE_TUTORIAL_ALLOW_PARTIAL  1 to accept a copy that fails the official checksums
#   VAE_TUTORIAL_FAST           1 for the fast mode (a few hundred images, seconds)
#   PRESET                      fast | cpu | gpu (default: fast in fast mode, gpu on CUDA, else cpu)
#   TRAIN_DATA                  training root if it differs from VAE_TUTORIAL_DATA
#   EXTRA_DATA                  a second training root mixed in (offline: the exact subset)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SHARED ?= ../shared/data
VAE    := $(BIN)/python -m vae_tutorial

# Absolute, so that the notebooks (executed in notebooks/) read the same folder.
ifdef VAE_TUTORIAL_DATA
override VAE_TUTORIAL_DATA := $(abspath $(VAE_TUTORIAL_DATA))
export VAE_TUTORIAL_DATA
endif
export VAE_TUTORIAL_ALLOW_PARTIAL
export VAE_TUTORIAL_FAST
# The notebooks show the preset make trained.
ifdef PRESET
export VAE_TUTORIAL_PRESET := $(PRESET)
endif
DATA_ARGS := $(if $(PRESET),--preset $(PRESET)) $(if $(TRAIN_DATA),--data $(abspath $(TRAIN_DATA)))
RUN_ARGS  := $(DATA_ARGS) $(if $(EXTRA_DATA),--set extra_data=$(abspath $(EXTRA_DATA)))
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: tutorial test test-user-runs venv data train evaluate hvae ablations notebooks compare sweep jpeg-copy results \
        bench gpu-check clean

# The steps in order, each timed: runs/tutorial-steps.txt keeps the minutes of the last tutorial.
# Offline, TRAIN_DATA=data/cifar10-jpeg adds the decoding of that copy (jpeg-copy) as a step.
TUTORIAL_STEPS := venv $(if $(filter %data/cifar10-jpeg,$(abspath $(TRAIN_DATA))),jpeg-copy) \
                  data train evaluate hvae notebooks
tutorial:
	@mkdir -p runs && : > runs/tutorial-steps.txt && total=$$(date +%s) && \
	for step in $(TUTORIAL_STEPS); do \
	    start=$$(date +%s); $(MAKE) --no-print-directory $$step || exit 1; \
	    echo "step $$step: $$(( $$(date +%s) - start )) s" | tee -a runs/tutorial-steps.txt; \
	done && echo "total: $$(( $$(date +%s) - total )) s" | tee -a runs/tutorial-steps.txt && \
	$(BIN)/python -c "from vae_tutorial import runtime; print('machine:', runtime.hardware())" \
	    | tee -a runs/tutorial-steps.txt
	@echo "tutorial done: runs/ holds the checkpoints, notebooks executed, figures in figures/"

test: venv
	$(BIN)/ruff check .
	VAE_TUTORIAL_FAST=1 $(BIN)/python -m pytest tests notebooks --nbval --nbval-current-env \
	    --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider -rs

# Notebooks 5-8 in full mode on stand-ins for the user's own runs (other recorded runs put where
# make tutorial leaves its runs): an assert pinned to our runs fails here (longer than `test`).
test-user-runs: venv
	VAE_TUTORIAL_USER_RUNS=1 $(BIN)/python -m pytest tests/test_user_runs.py -p no:cacheprovider -v

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,site]'
	touch $(STAMP)

# Downloads and verifies the official archive into data/ unless VAE_TUTORIAL_DATA names a copy.
data: venv
	$(VAE) data $(if $(VAE_TUTORIAL_DATA),,--download)

# Offline workplaces: decode the full-size JPEG copy beside the repo into data/cifar10-jpeg.
jpeg-copy: venv
	test -f data/cifar10-jpeg/cifar-10-batches-py/test_batch || \
	    $(BIN)/python $(SHARED)/cifar10_from_jpeg.py data/cifar10-jpeg

# Each resumes where it stopped if interrupted, and does nothing once complete.
train: venv
	$(VAE) train $(RUN_ARGS) --resume

evaluate: venv
	$(VAE) evaluate $(if $(PRESET),--preset $(PRESET)) -k 100

# The hierarchical VAE of notebook 8 (the cpu preset trains for at most 30 minutes), on the
# main data root alone (VAE_TUTORIAL_DATA or data/): no TRAIN_DATA or EXTRA_DATA mix.
hvae: venv
	$(VAE) train --model hvae $(if $(PRESET),--preset $(PRESET)) --resume
	$(VAE) evaluate --model hvae $(if $(PRESET),--preset $(PRESET)) -k 100

# Notebook 8's ablations, one change at a time from the hierarchical VAE, each with the recipe
# of its `cpu` preset before this release's tuning (30 minutes, batch 64; results/hvae-tried.md
# has the search that changed it), on the main data root's exact images, mirrored: the five
# groups, one group of spatial latents at 16x16 with as many latent variables
# (26 x 16 x 16 = 6,656), and ConvVAE. They were recorded on one core each (taskset -c 0).
HVAE_RECIPE := --set epochs=1000 --set time_limit=30 --set batch_size=64 --set lr=1e-3 \
               --set kl_warmup_epochs=15 --set hflip=true --set grad_skip=3e6
ablations: venv
	$(VAE) train --model hvae --preset cpu $(HVAE_RECIPE) --out runs/hvae-cpu-fivegroup --resume
	$(VAE) evaluate runs/hvae-cpu-fivegroup/checkpoint.pt -k 100 --json runs/hvae-cpu-fivegroup/eval.json
	$(VAE) train --model hvae --preset cpu $(HVAE_RECIPE) --set groups=0,0,1 --set zdims=32,16,26 \
	    --out runs/hvae-cpu-onegroup --resume
	$(VAE) evaluate runs/hvae-cpu-onegroup/checkpoint.pt -k 100 --json runs/hvae-cpu-onegroup/eval.json
	$(VAE) train --model conv --preset cpu $(HVAE_RECIPE) --out runs/conv-cpu-exact --resume
	$(VAE) evaluate runs/conv-cpu-exact/checkpoint.pt -k 100 --json runs/conv-cpu-exact/eval.json

# The seed's network trained for the same wall time as ConvVAE, same data and likelihood.
compare: venv
	$(VAE) train --model seed --match-time conv --set epochs=100 $(RUN_ARGS) --resume
	$(VAE) evaluate --model seed $(if $(PRESET),--preset $(PRESET)) -k 100

# Notebook 7's rate-distortion sweep: the small `sweep` preset at five values of beta and two
# collapse counter-measures, on the main data root's first 5,085 training images.
sweep: venv
	$(BIN)/python -m vae_tutorial.sweep

# The book: README, the notebooks (their stored outputs, not re-executed) and DATA.md as a
# static site in build/site, MathJax included: nothing is fetched from the internet.
.PHONY: site
site: venv
	$(BIN)/python -m sphinx -b html -c docs -W --keep-going -q -d build/site-doctrees . build/site
	@echo "site: open build/site/index.html"

notebooks: venv
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	    echo "executing $$nb"; \
	    ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	        --ExecutePreprocessor.timeout=-1 $$nb || exit 1; \
	done
	$(BIN)/python -m vae_tutorial.nbclean $(NOTEBOOKS)

# Maintainers: record the finished runs under results/ and regenerate the README's tables
# (each line skips, with one line of error, a run this machine has not made).
results: venv
	-$(VAE) results --weights $(if $(PRESET),--preset $(PRESET))
	-$(VAE) results --model seed $(if $(PRESET),--preset $(PRESET))
	-$(VAE) results --model hvae --weights $(if $(PRESET),--preset $(PRESET))

# Maintainers: the README's Performance tables, measured on this machine (a few minutes).
bench: venv
	$(VAE) bench $(DATA_ARGS) --iwae-images 20 --json results/bench-cpu.json
	$(VAE) bench --loading-only $(DATA_ARGS) --repeats 3 --json results/bench-loading-cpu.json
	$(VAE) report --write README.md

# On a GPU machine, no venv needed: bench and two gpu runs, evaluated, in MINUTES (default 8).
gpu-check:
	$(PYTHON) -m vae_tutorial gpu-check --minutes $(or $(MINUTES),8) \
	    $(if $(TRAIN_DATA),--train-data $(abspath $(TRAIN_DATA)))

# Fast-mode leftovers only: runs/*-fast, the fast sweep and figures; full runs are kept.
clean:
	rm -rf runs/*-fast runs/sweep-fast runs/figures-fast .pytest_cache
