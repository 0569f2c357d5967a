"""adamix-ds: AdaMix (Mixture-of-Adaptations, Wang et al., EMNLP 2022) for DeepSpeed training.

The library is pure torch: modules, routing, losses, merging and checkpoints run in a plain Python
process; only ``adamix_ds.training`` and ``launch/`` import deepspeed.
"""
from .config import AdaMixConfig, ConfigError
from .experts import AdapterExperts, LoRAExperts
from .inject import InjectionReport, adamix_layers, adaptation_parameters, inject_adamix
from .layers import AdaMixAdapter, AdaMixLoRA
from .merging import fold_lora, merge_experts, unfold_lora
from .routing import Router

__version__ = "0.1.0"
__all__ = ["AdaMixConfig", "ConfigError", "AdapterExperts", "LoRAExperts", "InjectionReport",
           "adamix_layers", "adaptation_parameters", "inject_adamix", "AdaMixAdapter",
           "AdaMixLoRA", "fold_lora", "merge_experts", "unfold_lora", "Router"]
