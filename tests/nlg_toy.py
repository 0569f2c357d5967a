"""A toy AdaMix checkpoint trained for real (a few dozen AdamW steps on the bundled E2E sample),
written exactly as the trainer writes it: adaptation tensors + the run's preset in the metadata."""
from __future__ import annotations

from pathlib import Path

import torch

from adamix_ds.backbones import load_backbone
from adamix_ds.checkpoint import save_adaptation
from adamix_ds.data import collate_nlg, load_nlg_dataset, load_tokenizer
from adamix_ds.inject import inject_adamix
from adamix_ds.preset import Preset
from adamix_ds.tasks.nlg import adamix_forward

TOY_PRESET = {
    "backbone": "gpt2",
    "init": "random",
    "backbone_config": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 160},
    "task": "e2e",
    "max_seq_len": 64,
    "adamix": {"method": "lora", "num_experts": 4, "rank": 4, "alpha": 16, "lora_dropout": 0.0,
               "targets": ["q", "v"], "share": "up", "consistency_weight": 1.0,
               "routing_seed": 7},
    "train": {"seed": 11, "lr": 0.02},
}


def train_toy_checkpoint(directory: Path, steps: int = 10, batch_size: int = 4) -> Path:
    """Train the toy preset for ``steps`` AdamW steps and save its adaptation to ``directory``."""
    preset = Preset.from_dict(TOY_PRESET, source="tests/nlg_toy.py")
    model = load_backbone(preset.backbone, init=preset.init, seed=preset.train.seed,
                          **preset.backbone_config)
    router = inject_adamix(model, preset.adamix).router
    tokenizer = load_tokenizer()
    data = load_nlg_dataset("e2e", "train", tokenizer=tokenizer, max_seq_len=preset.max_seq_len)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=preset.train.lr)
    model.train()
    torch.manual_seed(0)
    for step in range(steps):
        rows = [data[(step * batch_size + i) % len(data)] for i in range(batch_size)]
        batch = collate_nlg(rows, pad_id=tokenizer.eos_token_id)
        loss = adamix_forward(model, batch, router, preset.adamix).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        router.advance()
    return save_adaptation(model, directory, preset.adamix,
                           extra={"step": steps, "preset": preset.to_dict()})
