"""The training tests' records: synthetic addition questions (`helpers.synthetic_records`)."""
import pytest
from helpers import synthetic_records

from mcckd.data import write_records


@pytest.fixture(scope="module")
def records_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_records(path, synthetic_records())
    return path
