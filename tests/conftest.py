"""Run Triton kernels on the CPU: the interpreter must be chosen before triton is imported.
The shared test helpers (helpers.py) are importable as `helpers`."""
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).parent))
