# Every target sets up what it needs: a fresh machine only needs `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test check bench bench-backlog bench-checkout bench-optimizer bench-containers bench-dashboard bench-fleet services image install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/infrax demo

services:
	@bash scripts/ensure-services.sh
	@sh scripts/setup-podman.sh
	@sh scripts/setup-browser.sh
	@sh scripts/setup-task-tools.sh

image: $(STAMP) services
	$(VENV)/bin/infrax image build

# Static checks first: they take seconds and say exactly where.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# In random order (pytest-randomly): the seed is printed at the top; PYTEST_ARGS=--randomly-seed=N
# repeats that order, PYTEST_ARGS="-p no:randomly" runs in file order.
test: check services
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) services
	$(VENV)/bin/infrax bench --backend embedded --backend production
	$(PY) benchmarks/containers.py
	$(PY) benchmarks/backlog.py --backend embedded --backend production
	$(PY) benchmarks/checkout.py
	$(PY) benchmarks/dashboard.py

# A million queued partitions behind two busy containers, on SQLite and on PostgreSQL + RabbitMQ.
bench-backlog: $(STAMP) services
	$(PY) benchmarks/backlog.py --backend embedded --backend production

bench-dashboard: $(STAMP) services
	$(PY) benchmarks/dashboard.py

bench-checkout: $(STAMP)
	$(PY) benchmarks/checkout.py

bench-containers: $(STAMP) services
	$(PY) benchmarks/containers.py

# 50 workers over 5 network namespaces, 10,000 trivial partitions, 1,000 idle workers (root: namespaces).
bench-fleet: $(STAMP) services
	$(PY) benchmarks/fleet.py

bench-optimizer: $(STAMP)
	$(PY) benchmarks/optimizer.py

clean:
	rm -rf $(VENV) .infrax .pytest_cache
