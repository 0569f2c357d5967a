"""Backbones: a hub id or a local path, pretrained, or random init from a published config.

Random init needs no download for the architectures the paper uses: their published configs are
written out below (GPT-2 sizes from OpenAI's release, BERT / RoBERTa from their model cards), so
``--init random`` works on machines without the hub (tests, CI, smoke runs).

Under DeepSpeed ZeRO-3 (a ``transformers.integrations.HfDeepSpeedConfig`` alive, as the trainer
keeps one), ``transformers`` builds the model inside ``deepspeed.zero.Init``: each parameter is
partitioned as soon as its module exists, and ``from_pretrained`` loads the checkpoint into the
partitions, so no rank ever holds the whole model. This module stays free of deepspeed itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
)
from transformers import initialization as hf_init
from transformers.integrations import is_deepspeed_zero3_enabled

_LLAMA3 = {"num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "bos_token_id": 128000,
           "eos_token_id": 128001,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
# name -> (config class, published hyper-parameters that differ from the class defaults)
PUBLISHED_CONFIGS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "gpt2": (GPT2Config, {"n_embd": 768, "n_layer": 12, "n_head": 12}),
    "gpt2-medium": (GPT2Config, {"n_embd": 1024, "n_layer": 24, "n_head": 16}),
    "gpt2-large": (GPT2Config, {"n_embd": 1280, "n_layer": 36, "n_head": 20}),
    "gpt2-xl": (GPT2Config, {"n_embd": 1600, "n_layer": 48, "n_head": 25}),
    "bert-base-uncased": (BertConfig, {}),
    "bert-base-cased": (BertConfig, {"vocab_size": 28996}),
    "roberta-base": (RobertaConfig, {"vocab_size": 50265, "max_position_embeddings": 514,
                                     "type_vocab_size": 1, "layer_norm_eps": 1e-5,
                                     "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}),
    "roberta-large": (RobertaConfig, {"vocab_size": 50265, "max_position_embeddings": 514,
                                      "type_vocab_size": 1, "layer_norm_eps": 1e-5,
                                      "hidden_size": 1024, "num_hidden_layers": 24,
                                      "num_attention_heads": 16, "intermediate_size": 4096,
                                      "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}),
    # Llama-family decoders (config.json of the model cards), for planning and smoke runs
    "meta-llama/Llama-3.1-8B": (LlamaConfig, _LLAMA3 | {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32}),
    "meta-llama/Llama-3.1-70B": (LlamaConfig, _LLAMA3 | {
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64}),
    "meta-llama/Llama-2-13b-hf": (LlamaConfig, {
        "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "bos_token_id": 1,
        "eos_token_id": 2}),
}
# Hub ids with an organisation prefix map to the same published configs.
_ALIASES = {"openai-community/" + k: k for k in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
_ALIASES |= {"google-bert/bert-base-uncased": "bert-base-uncased",
             "google-bert/bert-base-cased": "bert-base-cased",
             "FacebookAI/roberta-base": "roberta-base", "FacebookAI/roberta-large": "roberta-large"}

AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "sequence_classification": AutoModelForSequenceClassification,
}
INITS = ("pretrained", "random")
META = "meta"  # for planning only: parameters without storage (adamix-ds inspect)


def load_config(name_or_path: str, **overrides: Any) -> PretrainedConfig:
    """The backbone's config: a local directory, a published config, or the hub."""
    if Path(name_or_path).is_dir():
        return AutoConfig.from_pretrained(name_or_path, **overrides)
    known = _ALIASES.get(name_or_path, name_or_path)
    if known in PUBLISHED_CONFIGS:
        config_class, values = PUBLISHED_CONFIGS[known]
        return config_class(**{**values, **overrides})
    try:
        return AutoConfig.from_pretrained(name_or_path, **overrides)
    except OSError as err:
        raise ValueError(
            f"unknown backbone {name_or_path!r}: not a local directory, not one of the published "
            f"configs {sorted(PUBLISHED_CONFIGS)}, and the hub could not provide it ({err})"
        ) from err


def load_backbone(name_or_path: str, init: str = "pretrained", task: str = "causal_lm",
                  dtype: torch.dtype | None = None, seed: int = 0,
                  **config_overrides: Any) -> PreTrainedModel:
    """Build the frozen backbone.

    Args:
        name_or_path: hub id (``gpt2-medium``) or local directory with config (+ weights).
        init: ``pretrained`` loads the weights; ``random`` builds from the config with HF's own
            initialisation (seeded), no weights needed; ``meta`` builds shapes without storage
            (counting and planning only).
        task: causal_lm | masked_lm | sequence_classification.
        config_overrides: e.g. ``num_labels=3`` for classification.
    """
    if init not in (*INITS, META):
        raise ValueError(f"--init must be one of {[*INITS, META]}, got {init!r}")
    if task not in AUTO_CLASSES:
        raise ValueError(f"task must be one of {sorted(AUTO_CLASSES)}, got {task!r}")
    auto = AUTO_CLASSES[task]
    if init == "pretrained":
        try:
            return auto.from_pretrained(name_or_path, dtype=dtype, **config_overrides)
        except OSError as err:
            raise ValueError(f"cannot load pretrained backbone {name_or_path!r}: {err}. Offline? "
                             "Pass a local directory, or --init random for a smoke run.") from err
    config = load_config(name_or_path, **config_overrides)
    if init == META:  # shapes only, no storage: any size builds on any machine
        with torch.device("meta"), hf_init.no_init_weights():
            model = auto.from_config(config, dtype=dtype)
        model.tie_weights()
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_deepspeed_zero3_enabled():
            # zero.Init construction: HF skips the constructors' init, then runs its own
            # `initialize_weights` once, on rank 0, one gathered module at a time.
            return auto.from_config(config, dtype=dtype)
        # The same two stages without ZeRO-3, so a seed gives the same weights either way (the
        # default path would also draw every constructor's init first, shifting the RNG stream).
        with hf_init.no_init_weights():
            model = auto.from_config(config, dtype=dtype)
        model.initialize_weights()
        model.tie_weights()
    return model
