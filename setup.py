"""mcckd: Multi-CoT Consistent Knowledge Distillation with fused Triton kernels."""
import shutil
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from native_build import build_native, in_place_path  # noqa: E402


class BuildNative(build_ext):
    """The native CPU ops through CMake (native_build.py); an install without them still succeeds."""

    def build_extension(self, ext):
        output = Path(self.get_ext_fullpath(ext.name))
        # An editable install imports mcckd from the source tree, where native.py looks for it.
        if build_native(output, Path(self.build_temp) / "native") and self.editable_mode:
            shutil.copyfile(output, in_place_path())

    def copy_extensions_to_source(self):
        built = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        if all(path.exists() for path in built):
            super().copy_extensions_to_source()


setup(
    name="mcckd",
    version="0.2.0",
    description="Multi-CoT Consistent Knowledge Distillation (MCC-KD) with fused Triton kernels",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mcckd", "mcckd.*"]),
    ext_modules=[Extension("mcckd._native", sources=[])],
    cmdclass={"build_ext": BuildNative},
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
