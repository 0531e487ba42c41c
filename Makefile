# Two commands from a fresh clone: `make demo` (offline demo) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/supsup-fin demo

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

test-slow: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m slow

lock: $(STAMP)
	(echo "# Pinned versions CI and the Makefile install against (pip install -c constraints.txt ...)."; \
	 echo "# Regenerate with: make lock"; \
	 $(BIN)/python -m pip freeze --exclude-editable | grep -v '^supsup-fin' | sed 's/+cpu$$//') > constraints.txt

clean:
	rm -rf $(VENV) .supsup_fin .pytest_cache
