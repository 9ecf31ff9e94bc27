# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
CORE    = $(VENV)/.installed-core
STAMP   = $(VENV)/.installed-test
NO_CUDA = if $(PIP) list 2>/dev/null | grep -Ei '^(nvidia-|triton )'; then \
	  echo "error: a CUDA package was installed next to the CPU build of torch; check constraints.txt" >&2; exit 1; fi

.PHONY: demo test env lint clean chromium

# the demo needs only the core
$(CORE): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip -c constraints.txt
	$(PIP) install --quiet torch==2.13.0 -c constraints.txt
	$(PIP) install --quiet -e . -c constraints.txt
	@$(NO_CUDA)
	touch $(CORE)

# the tests need every extra (serve, onnx, federated, dp, scale, track, tune, meds, fhir, text, dicom)
$(STAMP): $(CORE)
	$(PIP) install --quiet -e ".[test]" -c constraints.txt
	@$(NO_CUDA)
	touch $(STAMP)

env: $(STAMP)

demo: $(CORE)
	$(VENV)/bin/healthfusion demo

# the report's browser test needs Debian's chromium; install it when missing (sudo only when not root)
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-upgrade chromium \
	  || echo "warning: could not install chromium; the browser test will skip (and fail under CI=true)" >&2; \
	fi

test: $(STAMP) chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
