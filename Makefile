# opdgeo developer tasks. `make demo` installs into .venv and runs the demo; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here (not in pyproject) so the set-up uses the local CPU wheel; users keep a range.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo demo-zoo zoo zoo-sweep zoo-grid figures html-screenshot test lint typecheck check bench lineage-null clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/opdgeo demo demo --format table
	@if [ -f $(ZOO_CKPT)/rlvr/model.safetensors ]; then $(MAKE) --no-print-directory demo-zoo; fi

# Real SFT / OPD / RLVR runs of the regime zoo (seed 0, committed bf16 checkpoints, 4.5 MB each):
# SFT measured from the base, OPD and RLVR from the SFT checkpoint, as in OPDG.
ZOO_CKPT ?= zoo/checkpoints/seed0
demo-zoo: install
	$(VENV)/bin/opdgeo compare $(ZOO_CKPT)/base $(ZOO_CKPT)/sft --format table
	$(VENV)/bin/opdgeo compare $(ZOO_CKPT)/sft $(ZOO_CKPT)/opd $(ZOO_CKPT)/rlvr --format table

# Train the regime zoo for two seeds on the CPU and regenerate zoo/RESULTS.md (~20 min, 2 cores).
zoo: install
	$(PY) -m zoo all --seeds 0 1

# The zoo's learning-rate / steps / initialisation experiments (after `make zoo`, ~5 min; writes
# zoo/experiments/sweep.json, which the report includes).
zoo-sweep: install
	$(PY) -m zoo sweep
	$(PY) -m zoo report --seeds 0 1

# The zoo's training grid: SFT / RLVR / OPD at four learning rates (1e-6 .. 3e-5), two
# independent seeds, each with its own base, teacher and SFT anchor; then opdgeo on every run
# (zoo/grid/features.csv) and the feature exploration (zoo/grid/EXPLORE.md). Checkpoints go to
# the ignored zoo/runs/grid/ (same seeds and settings each time, but not bit for bit: two
# trainings of seed 0's base on this VM drifted apart after step 100); a finished stage whose
# settings match is not retrained.
# Two torch threads; passive OpenMP waiting keeps a shared machine from spinning.
zoo-grid: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m zoo grid --seeds 0 1

# The README's figures: the demo family's regime map and a synthetic OPD-like trajectory.
figures: install
	$(VENV)/bin/opdgeo demo demo -q --format csv --plot demo/figures > /dev/null
	$(PY) -c "from opdgeo.synthetic import write_trajectory; write_trajectory('demo/trajectory')"
	mkdir -p demo/trajectory-steps && mv demo/trajectory/checkpoint-* demo/trajectory-steps/ 2>/dev/null || true
	$(VENV)/bin/opdgeo trajectory demo/trajectory/base demo/trajectory-steps -q --format csv --plot demo/figures-trajectory > /dev/null
	mkdir -p docs && cp demo/figures/regime_map.png demo/figures-trajectory/trajectory.png docs/

# docs/html-report.png: the demo family's HTML report (demo/report.html) in headless chromium
# (apt-get install chromium).
html-screenshot: install
	$(PY) docs/html_report_screenshot.py

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check opdgeo tests bench zoo
	$(VENV)/bin/ruff format --check opdgeo tests bench zoo

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

# About 45 min on 2 idle cores (sizes tiny..Qwen2-1.5B shapes, naive baselines included, and
# Qwen2.5-7B shapes with 2 of 28 layers, 6 GB in /tmp, deleted after; the standard tier and naive
# timed on its first layer); the fast tier of commit ad1e1dd (before issue 15) is timed on small.
# BENCH_ARGS="--sizes tiny,small" for a quick look, or --device cuda for bench/RESULTS-gpu.md.
BENCH_ARGS ?= --sizes tiny,small,medium,large,7b --layers 2 --sample-from 7b --sample-layers 1 \
	--exact-max-size small --error-size small --baseline ad1e1dd --delete-after 7b
bench: install
	$(PY) bench/bench_compare.py $(BENCH_ARGS)

# opdgeo lineage calibration: p-values of independently initialised / trained pairs (KS, false
# positive rate), power on derived pairs, bytes for a Qwen2.5-7B-shaped pair (~10 min on 2 busy
# cores); writes bench/LINEAGE_NULL.md and bench/lineage_null.json (quoted by docs/lineage.md).
lineage-null: install
	$(PY) bench/lineage_null.py

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
