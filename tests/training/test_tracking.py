"""train.report_to: a Weights & Biases run (offline) holds the run's config, each step's metrics
and the evaluations, and a resumed run continues the same W&B run."""
import json
import struct
import time

import pytest
from helpers import config_of, metrics, settings

from mcckd.training.config import load_config
from mcckd.training.loop import train

wandb = pytest.importorskip("wandb")  # the optional extra: pip install -e ".[wandb]"

LOG_BLOCK = 32768  # a .wandb file is a LevelDB-style log of protobuf records in 32 KiB blocks
RECORD_HEADER = struct.Struct("<IHB")  # CRC-32C, length, kind (1 full, 2 first, 3 middle, 4 last)


def wandb_records(path):
    """The wandb_internal_pb2.Record messages of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, parts = 7, []  # after the file header: ":W&B", magic, version
    while position + RECORD_HEADER.size <= len(data):
        room = LOG_BLOCK - position % LOG_BLOCK
        if room < RECORD_HEADER.size:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, position)
        if kind == 0:  # zero padding up to the next block
            position += room
            continue
        start = position + RECORD_HEADER.size
        parts.append(data[start:start + length])
        position = start + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def finished_records(run_folder, seconds=60):
    """The records of an offline run folder once its `exit` record is written: W&B's service
    process writes the file on its own time, after `finish` has returned."""
    (path,) = run_folder.glob("run-*.wandb")
    deadline = time.monotonic() + seconds
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history_and_config(run_folder):
    """({step: {metric: value}}, {config key: value}) of a finished offline run folder."""
    history, config = {}, {}
    for record in finished_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
    return history, config


def test_an_offline_wandb_run_holds_the_metrics_and_a_resume_continues_it(records_path, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    tree = settings(records_path, out, max_steps=2, save_every=2, report_to=["jsonl", "wandb"],
                    wandb_project="mcckd-tests", alpha=0.3)
    tree["eval"] = {"data": str(records_path), "every": 2, "limit": 2, "max_new_tokens": 4}
    config_path = config_of(tree, tmp_path)
    train(load_config(config_path))
    run_id = (out / "wandb_run_id").read_text().strip()
    (first,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    history, config = history_and_config(first)
    assert config["train"]["alpha"] == 0.3 and config["train"]["report_to"] == ["jsonl", "wandb"]
    logged = metrics(out)
    assert sorted(history) == [1, 2]
    for line in logged:
        for name, value in line.items():
            if name != "step":
                assert history[line["step"]][name] == pytest.approx(value), name
    assert 0 <= history[2]["eval_accuracy"] <= 1 and history[2]["eval_n"] == 2

    train(load_config(config_path, ["train.max_steps=4"]), resume=True)
    assert (out / "wandb_run_id").read_text().strip() == run_id
    runs = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2  # one folder per process that wrote to the run: `wandb sync` joins them
    resumed_history, _ = history_and_config(next(r for r in runs if r != first))
    assert sorted(resumed_history) == [3, 4]
    (step_4,) = [line for line in metrics(out) if line["step"] == 4 and "loss" in line]
    assert resumed_history[4]["loss"] == pytest.approx(step_4["loss"])
