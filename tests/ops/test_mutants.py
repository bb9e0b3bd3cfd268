"""The mutants of tests/ops/mutants.py still apply to the sources: each one's text occurs exactly
once, and the mutated module is valid Python (running them is by hand: see that file)."""
import ast
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("mutants", Path(__file__).with_name("mutants.py"))
mutants = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mutants)


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=[m.name for m in mutants.MUTANTS])
def test_mutant_applies_once_and_parses(mutant):
    source = (mutants.ROOT / mutant.path).read_text()
    mutated = mutant.apply(source)
    assert mutated != source
    ast.parse(mutated)


def test_mutants_cover_both_pairwise_kernels_and_the_cross_entropy_kernel():
    paths = {m.path for m in mutants.MUTANTS}
    assert {mutants.PIVOT, mutants.KERNELS, mutants.CE} <= paths
    assert len(mutants.MUTANTS) >= 12
    assert len({m.name for m in mutants.MUTANTS}) == len(mutants.MUTANTS)
