# The two commands in the README do all the set-up: a venv, the project, then the job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the dependency list changes, so a second run installs nothing.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/resnet-xray demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
