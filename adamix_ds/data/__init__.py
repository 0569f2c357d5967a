"""Data for the AdaMix GPT-2 NLG experiments: E2E, WebNLG 2017, DART.

Pipeline: ``read_*`` (text records, as the reference ``format_converting_*.py`` write them) ->
``encode_records`` / ``load_nlg_dataset`` (BPE ids + labels, as ``gpt2_encode.py`` /
``data_utils.py``) -> ``collate_nlg`` (padded tensors). ``group_references`` prepares
multi-reference evaluation. Pure torch / datasets / transformers; no deepspeed.
"""
from .collate import collate_nlg
from .encoding import IGNORE_INDEX, EncodedExample, build_example, encode_record, encode_records
from .glue import (
    GLUE_TASKS,
    GlueFormatError,
    GlueTask,
    NluExample,
    collate_nlu,
    encode_glue,
    get_glue_task,
    read_glue,
    resolve_glue_file,
)
from .lmbff import (
    LMBFF_SEEDS,
    LMBFF_TASKS,
    LmBffTask,
    format_prompt,
    get_lmbff_task,
    read_lmbff,
    resolve_lmbff_file,
)
from .nlg import (
    SPLIT_FILES,
    TASKS,
    load_nlg_dataset,
    load_nlg_records,
    load_tokenizer,
    resolve_split_file,
    tokenizer_source,
)
from .paths import ASSETS_DIR, DATA_ENV, REPO_ROOT, bundled_asset, env_data_dir
from .readers import (
    SEEN_WEBNLG_CATEGORIES,
    Record,
    group_references,
    linearise_triples,
    read_dart,
    read_e2e,
    read_webnlg,
)

__all__ = [
    "ASSETS_DIR",
    "DATA_ENV",
    "REPO_ROOT",
    "bundled_asset",
    "env_data_dir",
    "Record",
    "SEEN_WEBNLG_CATEGORIES",
    "linearise_triples",
    "read_e2e",
    "read_webnlg",
    "read_dart",
    "group_references",
    "IGNORE_INDEX",
    "EncodedExample",
    "build_example",
    "encode_record",
    "encode_records",
    "TASKS",
    "SPLIT_FILES",
    "resolve_split_file",
    "load_nlg_records",
    "load_tokenizer",
    "tokenizer_source",
    "load_nlg_dataset",
    "collate_nlg",
    "NluExample",
    "GlueTask",
    "GLUE_TASKS",
    "GlueFormatError",
    "get_glue_task",
    "resolve_glue_file",
    "read_glue",
    "encode_glue",
    "collate_nlu",
    "LMBFF_SEEDS",
    "LmBffTask",
    "LMBFF_TASKS",
    "get_lmbff_task",
    "resolve_lmbff_file",
    "read_lmbff",
    "format_prompt",
]
