# `make demo` and `make test` each do all set-up on a fresh clone, then run.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := data/demo
RUN     := runs/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m data_prep demo --out $(DEMO)
	$(BIN)/python -m training --config training/configs/tiny.yaml --output $(RUN) --resume auto

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(RUN) $(DEMO)
