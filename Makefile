# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench clean

# pip's and setuptools' chatter goes to $(INSTALL_LOG); it is printed only when the install fails.
INSTALL_LOG := $(VENV)/install.log
QUIETLY = >>$(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); exit 1; }

$(BIN)/python:
	@echo "installing into $(VENV) (log: $(INSTALL_LOG))"
	@$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip $(QUIETLY)

# torch first, pinned: any other spec pulls a multi-GB CUDA build on this box.
$(STAMP): $(BIN)/python pyproject.toml
	@$(BIN)/pip install -q torch==2.13.0 $(QUIETLY)
	@$(BIN)/pip install -q -e ".[dev]" $(QUIETLY)
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Quiet by design: one line per stage and a summary; Ray's and Prefect's logs go to out/demo/_logs/demo.log.
demo: $(STAMP)
	@$(BIN)/semid sample --out out/demo_catalog.csv --n 3000
	@$(BIN)/semid run --catalog out/demo_catalog.csv --out out --name demo --run-id demo
	@$(BIN)/semid inspect out/demo/demo --codes 2 --per-code 3
	@echo "semantic IDs: out/demo/demo/semantic_ids/  report: out/demo/demo/quality.html"


bench: $(STAMP)
	$(BIN)/python bench/assign.py
	$(BIN)/python bench/fit.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) out .pytest_cache
