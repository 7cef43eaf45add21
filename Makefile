# The two commands in the README do all the set-up: a venv, the project, then the job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean browser-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the dependency list changes, so a second run installs nothing.
# Under CI, pip keeps no cache: the CUDA build of torch pulls ~3 GB of nvidia wheels, and a cached
# copy beside the installed one ran a CI disk out of space (ENOSPC during pip install).
PIP_CACHE := $(if $(CI),--no-cache-dir,)
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q $(PIP_CACHE) -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/resnet-xray demo

# The report's browser test drives Debian's chromium; install it where it is missing and apt can (root).
# Without it the test skips and says why; nothing else depends on it.
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "browser-deps: installing chromium for the report's browser test"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) >/dev/null \
	      || echo "browser-deps: could not install chromium; the browser test will be skipped"; \
	  else echo "browser-deps: chromium missing and apt-get unusable here; the browser test will be skipped"; fi; \
	fi

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
