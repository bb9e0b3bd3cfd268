"""mcckd: Multi-CoT Consistent Knowledge Distillation with fused Triton kernels."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="mcckd",
    version="0.2.0",
    description="Multi-CoT Consistent Knowledge Distillation (MCC-KD) with fused Triton kernels",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mcckd", "mcckd.*"]),
    install_requires=[
        # torch is pinned by the installer (CPU build in CI, CUDA build on GPUs): a range here.
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",  # the GPU kernels only
        "transformers>=4.48",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "peft>=0.13",
        "datasets>=3.0",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        "matplotlib>=3.8",
    ],
    extras_require={
        # wandb in the test extra: the tracking test then runs in CI instead of skipping
        "test": ["pytest>=8.0", "pytest-benchmark>=4.0", "ruff==0.17.6", "liger-kernel>=0.5", "wandb>=0.17"],
        "bench": ["pytest-benchmark>=4.0", "matplotlib>=3.8"],
        "flash": ["flash-attn>=2.6"],
        "liger": ["liger-kernel>=0.5"],
        "wandb": ["wandb>=0.17"],  # train.report_to: [wandb]
        "dev": ["pytest>=8.0", "pytest-benchmark>=4.0", "ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["mcckd=mcckd.cli:main"]},
)
