# Every target bootstraps .venv from requirements.txt on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv sysdeps demo test bench lint fmt clean

venv: $(STAMP)

# System packages first: a requirement is built from source with autotools (DTLSSocket).
$(STAMP): requirements.txt | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

# The demo starts from an empty database of its own each time (var/demo.sqlite3), then serves
# the console on DEMO_ADDR (DEMO_SERVE=0 to stop after the story).
DEMO_ADDR ?= 127.0.0.1:8000
demo: $(STAMP)
	rm -rf var/demo var/demo.sqlite3 var/demo-images
	FWUPD_SQLITE_PATH=var/demo.sqlite3 FIRMWARE_STORAGE_ROOT=var/demo-images DJANGO_DEBUG=1 \
	  $(PY) manage.py demo $(if $(filter 0,$(DEMO_SERVE)),,--serve $(DEMO_ADDR))

# System packages some tests use (libcoap's coap-client); tests that need them say so if absent.
sysdeps:
	-@bash scripts/install-system-deps.sh || echo "warning: system packages not installed (need root + apt)"

test: $(STAMP) sysdeps
	$(PY) -m pytest

# Every benchmark runs and prints its figures and PASS/MISS lines; a MISS fails the target only
# with BENCH_STRICT=1 (the scripts read it), an error (a benchmark that could not measure) always.
BENCH_STRICT ?= 0
bench: $(STAMP)
	@failed=""; for script in benchmarks/bench_*.py; do echo "== $$script"; \
	  BENCH_STRICT=$(BENCH_STRICT) $(PY) $$script || failed="$$failed $$script"; done; \
	  if [ -n "$$failed" ]; then echo "bench: exit status non-zero from:$$failed"; exit 1; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
