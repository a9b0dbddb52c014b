# The two front-door commands (see README.md):
#   make demo   set up .venv, then run the main job on the embedded default assets
#   make test   set up .venv if needed, then run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: setup demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever the dependency lists change; the stamp makes it a no-op otherwise.
$(VENV)/.installed: pyproject.toml constraints/py311.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/py311.txt -e '.[render,cluster,train,dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python scripts/demo.py --out $(OUT)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check phieat assets render train tests bench scripts
	$(BIN)/ruff format --check phieat assets render train tests bench scripts

clean:
	rm -rf $(OUT) .pytest_cache
