# labkit: `make run-all` runs every notebook for every configuration; `make test` runs the tests.
PYTHON ?= python3
# A CPU build by default, so a laptop or CI does not pull several GB of CUDA; on a GPU cluster:
#   make setup TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
TORCH ?= torch==2.13.0
PROFILE ?= smoke
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run-all test lab report slurm bench clean
setup: $(STAMP)

# Reinstalls only when the dependency list changes, so a second `make setup` does nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run-all: setup
	$(PY) -m labkit.launch.runall --profile $(PROFILE) $(if $(FORCE),--force) $(if $(ONLY),--only $(ONLY)); \
	status=$$?; $(PY) -m labkit.report --profile $(PROFILE); exit $$status

test: setup
	$(PY) -m pytest -q

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

report: setup
	$(PY) -m labkit.report --profile $(PROFILE)

# One SLURM job per notebook x configuration (arrays where they fit), then the report job:
#   make slurm PROFILE=gpu [ONLY="05 07"] [PARTITION=p] [ACCOUNT=a] [TIME=02:00:00] [DRY_RUN=1]
slurm: setup
	$(PY) -m labkit.launch.slurm --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(if $(PARTITION),--partition $(PARTITION)) \
	  $(if $(ACCOUNT),--account $(ACCOUNT)) $(if $(TIME),--time $(TIME)) $(if $(DRY_RUN),--dry-run)

# Throughput of the fast paths against the baselines (PROFILE=bench on a GPU; smoke checks it runs).
bench: setup
	$(PY) -m labkit.bench --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf runs reports
