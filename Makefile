# jiva-py: the README's two commands (`make deploy`, `make test`) and their helpers.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv debs test lint unit deploy bench clean torture

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

debs:
	bash scripts/install-debs.sh

# style and static checks; mypy type-checks the engine (pyproject.toml [tool.mypy])
lint: venv
	$(VENV)/bin/ruff check jiva_engine tests bench
	$(VENV)/bin/ruff format --check jiva_engine tests bench
	$(VENV)/bin/mypy

# The whole suite: Debian tools, the venv, lint, then every default test.
test: debs venv lint ansible-checks
	$(PY) -m pytest -q --durations=25 tests

unit: venv
	$(PY) -m pytest -q tests/unit

# Crash torture, full run (opt-in): >= 200 faults, summary table + seed (replay: SEED=N).
# As root the replicas and the controller run on 3 network-namespace test hosts (the controller
# beside a replica, behind a floating portal address) and faults of a replica's host and of the
# controller's host (crash, link down, blackhole; the latter with failover to another host) join
# the process faults (HOSTS=0 to skip them; docs/HA.md "Torture run"). The default `make test`
# runs the short versions (tests/faults/test_torture.py).
FAULTS ?= 200
HOSTS ?= $(if $(filter 0,$(shell id -u)),1,0)
torture: venv
	$(PY) bench/torture.py --faults $(FAULTS) $(if $(SEED),--seed $(SEED)) $(if $(filter 1,$(HOSTS)),--hosts)

# Performance: tgtd vs jiva (file target, 1- and 3-replica volumes) + rebuild/resync/restart
# times; table on stdout, JSON + PNG in results/. BENCH_QUICK=1: 3 s jobs, 1 repetition.
bench: venv
	bash scripts/install-debs.sh
	$(PIP) install -q -e '.[bench,fast]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# ---- Ansible: deploy, test hosts, collection checks (owner: the Ansible part) ----------------
# make deploy            the local example volumes on this machine (inventory/local), then a table
# make teardown          stop them (add DELETE_DATA=1 to delete their data too)
# make sandbox-up NODES=4 / make sandbox-down   network-namespace test hosts (root), see .sandbox/
# make ansible-checks    ansible-lint (production profile), ansible-test sanity, molecule test
.PHONY: teardown sandbox-up sandbox-down ansible-lint ansible-sanity molecule ansible-checks
NODES ?= 3
ANSIBLE_ENV := ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg ANSIBLE_HOME=$(CURDIR)/.ansible
COLLECTION := collections/ansible_collections/jiva/storage
SANITY_ARGS ?=

deploy: venv
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-playbook playbooks/site.yml

teardown: venv
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-playbook playbooks/teardown.yml $(if $(DELETE_DATA),-e jiva_teardown_delete_data=true)

sandbox-up: venv
	$(PY) scripts/sandbox.py up --nodes $(NODES)

sandbox-down:
	$(PYTHON) scripts/sandbox.py down

ansible-lint: venv
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-lint --profile production playbooks molecule $(COLLECTION)

# ansible-test keeps its venvs and pip bootstrap under $$HOME/.ansible/test: point HOME into the
# checkout and give it an offline stand-in for the get-pip script it would download.
ansible-sanity: venv
	mkdir -p .ansible/home/.ansible/test/cache
	v=$$($(PY) -c "import ansible_test, pathlib, re; print(re.search(r\"pip='([0-9.]+)'\", (pathlib.Path(ansible_test.__file__).parent / '_internal/python_requirements.py').read_text()).group(1))") && \
	  cp scripts/ansible-test-get-pip.py .ansible/home/.ansible/test/cache/get_pip_$${v//./_}.py
	cd $(COLLECTION) && HOME=$(CURDIR)/.ansible/home $(CURDIR)/$(VENV)/bin/ansible-test sanity --python 3.11 $(SANITY_ARGS)

molecule: venv debs
	$(ANSIBLE_ENV) $(VENV)/bin/molecule test -s default

ansible-checks: ansible-lint ansible-sanity molecule

# ---- HA (owner: the health/failover part) ------------------------------------------------------
# make watch             run playbooks/failover.yml whenever a volume's API changes state, and
#                        every WATCH_INTERVAL s anyway (host-loss recovery from the control node)
# make watch WATCH_API_CA=ca.pem   the same with TLS for the management API (polls https)
# make health            the health table (add HEALTH_JSON=file to also write JSON)
.PHONY: watch health
WATCH_INTERVAL ?= 30
WATCH_POLL ?= 1
WATCH_API_CA ?=
watch: venv
	$(ANSIBLE_ENV) $(VENV)/bin/jiva ha watch --interval $(WATCH_INTERVAL) --poll $(WATCH_POLL) $(if $(WATCH_API_CA),--api-ca $(WATCH_API_CA))

health: venv
	$(ANSIBLE_ENV) $(VENV)/bin/ansible-playbook playbooks/health.yml $(if $(HEALTH_JSON),-e jiva_health_file=$(HEALTH_JSON))
