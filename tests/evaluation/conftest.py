"""The memorised student, trained once for all the evaluation tests; `memorised.py` is
importable as `memorised`."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from memorised import memorised_student  # noqa: E402 - needs the path above


@pytest.fixture(scope="session")
def memorised():
    """(model, tokenizer, records, expected generations) of the student of `memorised.py`."""
    return memorised_student()
