"""Run Triton kernels on the CPU: the interpreter must be chosen before triton is imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
