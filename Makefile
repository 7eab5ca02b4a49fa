# Every target creates .venv on first use, so a fresh machine needs only Python 3.11 and the package index.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo train test bench clean promtool

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/netsim demo

# A local village of 8 processes trains a logistic model on scikit-learn's digits (Dirichlet-split among
# them) for 15 rounds; prints each round's accuracy and the federated against the centralized model.
train: $(BIN)/.installed
	$(BIN)/netsim run --workload training --n 8 --rounds 15 --dataset digits --partition-scheme dirichlet

# promtool (Debian's prometheus package) checks and unit-tests the shipped alert rules; those tests never skip.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

test: $(BIN)/.installed promtool
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/netsim bench core --n 100 --d 100000 --k 14 --dropout 0.1

clean:
	rm -rf $(VENV) build *.egg-info
