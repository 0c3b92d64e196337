# opdgeo developer tasks. `make demo` installs into .venv and runs the demo; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here (not in pyproject) so the set-up uses the local CPU wheel; users keep a range.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo figures test lint typecheck check bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/opdgeo demo demo --format table

# The README's figures: the demo family's regime map and a synthetic OPD-like trajectory.
figures: install
	$(VENV)/bin/opdgeo demo demo -q --format csv --plot demo/figures > /dev/null
	$(PY) -c "from opdgeo.synthetic import write_trajectory; write_trajectory('demo/trajectory')"
	mkdir -p demo/trajectory-steps && mv demo/trajectory/checkpoint-* demo/trajectory-steps/ 2>/dev/null || true
	$(VENV)/bin/opdgeo trajectory demo/trajectory/base demo/trajectory-steps -q --format csv --plot demo/figures-trajectory > /dev/null
	mkdir -p docs && cp demo/figures/regime_map.png demo/figures-trajectory/trajectory.png docs/

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check opdgeo tests bench
	$(VENV)/bin/ruff format --check opdgeo tests bench

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

bench: install
	$(PY) bench/bench_compare.py --out bench/RESULTS.md

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
