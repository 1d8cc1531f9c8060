# glowplug: `make help` lists the targets. `make test` is what CI runs; `make demo` shows the product.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include hack/versions.env
export GLOWPLUG_CACHE ?= $(HOME)/.cache/glowplug
UV := python3 -m uv
RUN := $(UV) run --locked
K8S_BIN := $(GLOWPLUG_CACHE)/bin/kubernetes-$(KUBERNETES_VERSION)
# The control plane's binaries come first on PATH for every recipe (kubectl, helm, kwok, etcd).
export PATH := $(K8S_BIN):$(GLOWPLUG_CACHE)/bin/helm-$(HELM_VERSION):$(GLOWPLUG_CACHE)/bin/kwok-$(KWOK_VERSION):$(GLOWPLUG_CACHE)/bin/etcd-$(ETCD_VERSION):$(GLOWPLUG_CACHE)/bin/containerd-$(CONTAINERD_VERSION):$(PATH)
LOCAL_KUBECONFIG := $(CURDIR)/.cluster/kubeconfig
PYTEST := $(RUN) pytest -p no:cacheprovider
# Compiled bytecode, kept outside the tree: a process that compiles torch and transformers from
# source imports them ~2.5x slower (PYTHONDONTWRITEBYTECODE=1 in the environment forces that).
export PYTHONPYCACHEPREFIX ?= $(GLOWPLUG_CACHE)/pycache
unexport PYTHONDONTWRITEBYTECODE

##@ General

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: setup
setup: ## Install uv and the locked Python environment (.venv).
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) sync --locked --all-packages

.PHONY: packages
packages: ## Install the Debian packages the cluster, image build and tests need (apt, once per machine).
	hack/install-packages.sh

.PHONY: binaries
binaries: packages ## Build the cluster's binaries once per machine (cached in $GLOWPLUG_CACHE).
	hack/build-control-plane.sh
	hack/build-kstatus.sh >/dev/null

.PHONY: images
images: packages ## Build the operator, prefetch and worker images from their Dockerfiles (buildah; layer cache in $GLOWPLUG_CACHE).
	hack/images.sh build

.PHONY: lint
lint: setup ## ruff (lint + format check), mypy (strict, operator and worker), CRD copy in the chart.
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	cmp crds/modelserver.yaml charts/glowplug/crds/modelserver.yaml

.PHONY: fmt
fmt: setup ## Format and autofix with ruff.
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

.PHONY: run
run: setup ## Run the operator here against $KUBECONFIG (the local cluster by default).
	KUBECONFIG=$${KUBECONFIG:-$(LOCAL_KUBECONFIG)} $(RUN) glowplug-operator

##@ Test

.PHONY: test
test: lint test-unit test-worker test-e2e ## Everything CI runs: lint, types, unit, worker, end-to-end.

.PHONY: test-unit
test-unit: setup binaries ## Pure unit tests (no cluster, no torch; helm renders the chart, kstatus reads statuses).
	$(PYTEST) tests/unit

.PHONY: test-worker
test-worker: setup packages ## Worker tests: prefetcher against nginx/S3, model server on tiny models (CPU).
	$(PYTEST) tests/prefetch tests/serve

.PHONY: test-e2e
test-e2e: setup ## End-to-end tests on the local cluster, kwok and real node (or on $KUBECONFIG when it is set).
	@if [[ -z "$${KUBECONFIG:-}" ]]; then $(MAKE) --no-print-directory cluster-up; fi
	KUBECONFIG=$${KUBECONFIG:-$(LOCAL_KUBECONFIG)} $(PYTEST) tests/e2e

.PHONY: test-hostile
test-hostile: setup ## The hostile-spec suite at length (400 hypothesis examples; `make test-e2e` runs 40).
	@if [[ -z "$${KUBECONFIG:-}" ]]; then $(MAKE) --no-print-directory cluster-up; fi
	GLOWPLUG_HOSTILE_EXAMPLES=$${GLOWPLUG_HOSTILE_EXAMPLES:-400} KUBECONFIG=$${KUBECONFIG:-$(LOCAL_KUBECONFIG)} \
	  $(PYTEST) -s tests/e2e/test_hostile_specs.py

.PHONY: test-api-fuzz
test-api-fuzz: setup packages ## The worker's HTTP API fuzzed at length (1000 hypothesis examples per property; `make test-worker` runs 60).
	GLOWPLUG_API_FUZZ_EXAMPLES=$${GLOWPLUG_API_FUZZ_EXAMPLES:-1000} $(PYTEST) -s tests/serve/test_api_fuzz.py

.PHONY: test-chaos
test-chaos: setup ## Crashes and restarts at length: 10 operator SIGKILLs during 20 rollouts (`make test-e2e` runs 3 in 8), kube-apiserver and etcd restarts.
	@if [[ -z "$${KUBECONFIG:-}" ]]; then $(MAKE) --no-print-directory cluster-up; fi
	GLOWPLUG_CHAOS_ROLLOUTS=$${GLOWPLUG_CHAOS_ROLLOUTS:-20} GLOWPLUG_CHAOS_KILLS=$${GLOWPLUG_CHAOS_KILLS:-10} \
	  KUBECONFIG=$${KUBECONFIG:-$(LOCAL_KUBECONFIG)} $(PYTEST) -s tests/e2e/test_chaos.py

##@ Local control plane

.PHONY: cluster-up
cluster-up: binaries images ## Start (or reuse) the control plane, kwok GPU nodes and a real node with our images.
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop every process cluster-up started and undo its changes to the host.
	hack/cluster.sh down

##@ Demo and benchmarks

.PHONY: demo
demo: setup cluster-up ## The main job end to end: CRD, operator, a ModelServer Ready, the worker answering.
	KUBECONFIG=$(LOCAL_KUBECONFIG) hack/demo.sh

.PHONY: bench
bench: setup ## List the benchmarks (run each with `uv run python bench/NAME.py --help`).
	@ls bench/*.py

.PHONY: clean
clean: cluster-down ## Stop the cluster and remove build and test leftovers (keeps the binary cache).
	rm -rf .cluster .venv .mypy_cache .ruff_cache .pytest_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
