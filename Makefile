# labkit: `make run-all` runs every notebook for every configuration; `make test` runs the tests.
PYTHON ?= python3
# A CPU build by default, so a laptop or CI does not pull several GB of CUDA; on a GPU cluster:
#   make setup TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
TORCH ?= torch==2.13.0
PROFILE ?= smoke
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run-all test lab report hand-in grade slurm bench nsys clean
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

# Two workers, a test file each, one math thread per process: most tests wait on notebook kernels and child
# processes part of the time. Then the tests that time real processes against limits, alone.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(PY) -m pytest -q -m serial

# Jupyter refuses to start as root without --allow-root (a container, a cluster's login as root).
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

report: setup
	$(PY) -m labkit.report --profile $(PROFILE)

# Students: collect the notebooks you ran, with your answers, into runs/<profile>/students/<NAME>.zip.
hand-in: setup
	@test -n "$(NAME)" || { echo "usage: make hand-in NAME=your_name [PROFILE=$(PROFILE)]"; exit 2; }
	$(PY) -m labkit.report.grading $(NAME) --profile $(PROFILE)

# Instructors: unpack the hand-ins under runs/<profile>/students/, then one page per student per lab.
grade: setup
	$(PY) -m labkit.report --grade --profile $(PROFILE)

# One SLURM job per notebook x configuration (arrays where they fit), then the report job:
#   make slurm PROFILE=gpu [ONLY="05 07"] [CONFIG="ddp fsdp"] [PARTITION=p] [ACCOUNT=a] [TIME=02:00:00] [CPUS=8]
#              [RUNS_DIR=runs] [DRY_RUN=1]
slurm: setup
	$(PY) -m labkit.launch.slurm --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(if $(CONFIG),--config $(CONFIG)) \
	  $(if $(PARTITION),--partition $(PARTITION)) $(if $(ACCOUNT),--account $(ACCOUNT)) $(if $(TIME),--time $(TIME)) \
	  $(if $(CPUS),--cpus-per-task $(CPUS)) $(if $(RUNS_DIR),--runs-dir $(RUNS_DIR)) $(if $(DRY_RUN),--dry-run)

# Throughput of the fast paths against the baselines (PROFILE=bench on a GPU; smoke checks it runs); BUDGET=S: start
# no row that would end more than S seconds after the first began.
bench: setup
	$(PY) -m labkit.bench --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(if $(BUDGET),--budget-s $(BUDGET))

# Nsight Systems timeline of one configuration, NVTX phase ranges and CUDA memory use included (nsys on the PATH):
#   make nsys CONFIG=params/02_dataloader_workers/workers_2.yaml PROFILE=gpu   -> runs/gpu/nsys/<notebook>_<config>.nsys-rep
nsys: setup
	$(PY) -m labkit.timeline --config $(CONFIG) --profile $(PROFILE)

clean:
	rm -rf runs reports
