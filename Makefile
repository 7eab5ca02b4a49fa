# Every target creates .venv on first use, so a fresh machine needs only Python 3.11 and the package index.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/netsim demo

test: $(BIN)/.installed
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/netsim bench core --n 100 --d 100000 --k 14 --dropout 0.1

clean:
	rm -rf $(VENV) build *.egg-info
