#!/usr/bin/env python
"""Pre-train a small GPT-2 (the GPT-2 BPE) from random init on English text that is not E2E.

    python launch/pretrain_lm.py --data_dir DATA --output_dir ~/.cache/adamix_ds/standin-gpt2-6x256

DATA holds ``webnlg/``, ``dart/`` and ``glue/`` as in the project's data folder. The default
sources are the WebNLG lexicalisations, the DART annotations that are not copies of E2E
references, and the GLUE sentences; the held-out perplexity is measured on WebNLG dev and GLUE
dev. ``--sources webnlg_pairs,dart_pairs,glue --heldout_sources webnlg_pairs,glue`` puts each
WebNLG / DART text after its triple set instead. Run the same command again to resume an
interrupted run (or to see that it is finished). The result loads as ``--backbone OUTPUT_DIR
--init pretrained`` in training, merging, export, generation and evaluation.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from adamix_ds.data import load_tokenizer
from adamix_ds.data.lm_corpus import CORPUS_SOURCES, collect_texts, pack_blocks
from adamix_ds.pretraining import PretrainConfig, pretrain

DEFAULT_SOURCES = "webnlg,dart,glue"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True,
                        help="folder with webnlg/, dart/, glue/ (or e2e/ for e2e_refs)")
    parser.add_argument("--output_dir", required=True, help="the model directory to write")
    parser.add_argument("--sources", default=DEFAULT_SOURCES,
                        help=f"comma list of {list(CORPUS_SOURCES)} (default {DEFAULT_SOURCES})")
    parser.add_argument("--heldout_sources", default="webnlg,glue",
                        help="sources whose held-out split gives the perplexity")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--save_every", type=int, default=50)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--no_resume", action="store_true")
    for f in PretrainConfig.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        cfg = PretrainConfig(**{k: getattr(args, k) for k in PretrainConfig.__dataclass_fields__})
        sources = [s.strip() for s in args.sources.split(",") if s.strip()]
        held = [s.strip() for s in args.heldout_sources.split(",") if s.strip()]
        train = collect_texts(args.data_dir, sources, "train")
        heldout = collect_texts(args.data_dir, held, "heldout")
        tokenizer = load_tokenizer()
        train_blocks = pack_blocks(train.texts, tokenizer, cfg.block_size, order_seed=cfg.seed)
        heldout_blocks = pack_blocks(heldout.texts, tokenizer, cfg.block_size, order_seed=None,
                                     max_blocks=cfg.eval_blocks)
    except (ValueError, FileNotFoundError) as err:
        print(f"pretrain_lm: error: {err}", file=sys.stderr)
        return 2
    info = {"sources": sources, "documents": train.counts, "dropped": train.dropped,
            "train_blocks": int(train_blocks.shape[0]), "digest": train.digest(),
            "heldout_sources": held, "heldout_documents": heldout.counts}
    print(f"pretrain_lm: {len(train.texts):,} documents {train.counts}, dropped {train.dropped}; "
          f"{train_blocks.numel():,} tokens in {train_blocks.shape[0]:,} blocks of "
          f"{cfg.block_size}; {cfg.max_steps} steps x {cfg.batch_size} blocks = "
          f"{cfg.max_steps * cfg.batch_size / train_blocks.shape[0]:.2f} epochs", flush=True)
    pretrain(cfg, train_blocks, heldout_blocks, tokenizer, args.output_dir, info,
             save_every=args.save_every, log_every=args.log_every, resume=not args.no_resume,
             log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
