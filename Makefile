# adamix-ds: `make test` and `make demo` set up their own virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned, so that no later package pulls a multi-GB CUDA build on a CPU machine.
# On a GPU machine: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.adamix-ds-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,peft,train]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow and not multirank" tests

demo: $(STAMP)
	$(VENV)/bin/adamix-ds inspect --backbone gpt2-medium --init random --method adapter \
		--experts 8 --bottleneck 8 --share up
	$(VENV)/bin/adamix-ds inspect --backbone gpt2-medium --init random --method lora \
		--experts 8 --rank 4 --targets q,v --share up

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
