"""The benchmark scripts of bench/ import each other by module name: put bench/ on the path."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
