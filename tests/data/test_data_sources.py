"""Reading inputs: CSV, parquet, saved datasets, the local Hugging Face cache, GSM8K's layout,
named fields; errors name the file and the line or row."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml

from mcckd.cli import main
from mcckd.data import Record, read_records
from mcckd.data.records import Fields
from mcckd.errors import InputError
from mcckd.training import periodic_eval
from mcckd.training.config import load_config
from mcckd.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    {"id": "a", "question": "Is 3 + 4 seven?", "answer": "yes", "rationales": ["3 + 4 = 7, so yes.", "Yes."]},
    {"id": "b", "question": "Is the sky green?\nThink first.", "answer": "no",
     "rationales": ["It is blue, so no."]},
]
EXPECTED = [
    Record("a", "strategyqa", "Is 3 + 4 seven?", "yes", ["3 + 4 = 7, so yes.", "Yes."]),
    Record("b", "strategyqa", "Is the sky green?\nThink first.", "no", ["It is blue, so no."]),
]
GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A shop has 1,000 pens and buys 234 more. How many pens?",
     "answer": "1000 + 234 = 1234\n#### 1,234"},
]


def as_csv(path, rows):
    """The rows as a CSV file, the rationales cell a JSON array, through pandas."""
    frame = pd.DataFrame([{**row, "rationales": json.dumps(row["rationales"])} for row in rows])
    frame.to_csv(path, index=False)
    return path


def test_csv_parquet_and_saved_datasets_read_alike(tmp_path):
    as_csv(tmp_path / "data.csv", ROWS)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "data.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    for source in ("data.csv", "data.parquet", "saved"):
        assert read_records(tmp_path / source, "strategyqa") == EXPECTED, source


def test_a_csv_cell_is_text_and_may_hold_one_rationale(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffquestion,answer,rationales\n\"Name it\nin full\",007,\"Just 007, the agent.\"\n"
                     .encode("utf-8"))  # a byte-order mark, a quoted line break, a leading zero
    (record,) = read_records(path, "svamp")
    assert (record.question, record.answer, record.rationales) == ("Name it\nin full", "7",
                                                                   ["Just 007, the agent."])
    assert record.id == "svamp-0"


@pytest.mark.parametrize("text, message", [
    ("question,answer\nq1,1\n,2\n", "data.csv: row 1: the question must be a non-empty string"),
    ("question,answer\nq1,1,3\nq2,2\n", "data.csv: cannot read as csv: Length of header"),
    ("question,answer\nq1,1\nq2,2,3\n", "data.csv: cannot read as csv: Error tokenizing data. C error: "
                                        "Expected 2 fields in line 3, saw 3"),
    ("prompt,answer\nq1,1\n", "data.csv: row 0: expected the keys question/answer/rationales"),
])
def test_csv_errors_name_the_row_or_line(tmp_path, text, message):
    (tmp_path / "data.csv").write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as error:
        read_records(tmp_path / "data.csv", "svamp")
    assert str(error.value).startswith(str(tmp_path / message))


def test_invalid_utf8_in_a_csv_names_its_line(tmp_path):
    (tmp_path / "data.csv").write_bytes(b"question,answer\nq1,1\nq\xff2,2\n")
    with pytest.raises(InputError, match=r"data.csv:3: not valid UTF-8 \(byte 2 of the line, 0xff\)"):
        read_records(tmp_path / "data.csv", "svamp")


def test_parquet_errors_name_the_row(tmp_path):
    pd.DataFrame([*ROWS, {**ROWS[0], "id": "c", "answer": "maybe"}]).to_parquet(tmp_path / "data.parquet")
    with pytest.raises(InputError) as error:
        read_records(tmp_path / "data.parquet", "strategyqa")
    assert str(error.value) == (f"{tmp_path / 'data.parquet'}: row 2: "
                                "answer 'maybe' is not a valid strategyqa answer")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="broken.parquet: cannot read as parquet"):
        read_records(tmp_path / "broken.parquet", "strategyqa")


def test_a_dataset_dict_needs_its_split(tmp_path):
    other = [{**row, "id": row["id"] + "-test"} for row in ROWS]
    splits = {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(other)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    test_ids = [r.id for r in read_records(tmp_path / "saved", "strategyqa", split="test")]
    assert test_ids == ["a-test", "b-test"]
    with pytest.raises(InputError, match="has the splits train, test: choose one"):
        read_records(tmp_path / "saved", "strategyqa")
    with pytest.raises(InputError, match="no split 'valid'; the dataset has train, test"):
        read_records(tmp_path / "saved", "strategyqa", split="valid")
    with pytest.raises(InputError, match=r"bad\[train\]: row 1: answer 'maybe' is not a valid strategyqa"):
        bad = [ROWS[0], {**ROWS[1], "answer": "maybe"}]
        datasets.DatasetDict({"train": datasets.Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "bad"))
        read_records(tmp_path / "bad", "strategyqa", split="train")


def test_a_folder_that_is_no_dataset_and_a_split_of_a_file_are_errors(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="folder: a folder, but not a dataset saved with save_to_disk"):
        read_records(tmp_path / "folder")
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(InputError, match="a split was given"):
        read_records(tmp_path / "data.jsonl", "strategyqa", split="train")


def cache_gsm8k(cache, rows):
    """Put `rows` into a Hugging Face datasets cache as `load_dataset("openai/gsm8k", "main")`
    leaves it: the prepared Arrow table under openai___gsm8k/main/0.0.0/<hash>/."""
    source = cache.parent / "gsm8k_test.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    builder = datasets.load_dataset_builder("json", data_files={"test": str(source)},
                                            cache_dir=str(cache.parent / "build"))
    builder.download_and_prepare()
    target = cache / "openai___gsm8k" / "main" / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, target)
    info = json.loads((target / "dataset_info.json").read_text())
    info.update(config_name="main", dataset_name="gsm8k")
    (target / "dataset_info.json").write_text(json.dumps(info))
    (target / "json-test.arrow").rename(target / "gsm8k-test.arrow")


def test_a_dataset_in_the_local_cache_is_read_by_its_hub_name(tmp_path):
    cache_gsm8k(tmp_path / "cache", GSM8K_ROWS)
    environment = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
                   "PYTHONPATH": str(ROOT)}
    script = ("from mcckd.data import read_records; records = read_records('hf:openai/gsm8k:main', "
              "'gsm8k', split='test'); print([(r.id, r.answer) for r in records])")
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('gsm8k-0', '72'), ('gsm8k-1', '1234')]"
    argv = ["eval", "--model", "m", "--data", "hf:nobody/nothing", "--task", "gsm8k",
            "--out", str(tmp_path / "o")]
    missing = subprocess.run([sys.executable, "-m", "mcckd", *argv], env=environment, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.startswith("mcckd: error: hf:nobody/nothing: cannot load the dataset:")


def test_gsm8k_layout_gives_the_gold_after_the_marks(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS))
    records = read_records(path, "gsm8k")
    assert [(r.id, r.answer, r.rationales) for r in records] == [("gsm8k-0", "72", []),
                                                                 ("gsm8k-1", "1234", [])]
    assert records[0].question == GSM8K_ROWS[0]["question"]
    empty_gold = {"question": "q", "answer": "none ####"}
    path.write_text(json.dumps(GSM8K_ROWS[0]) + "\n" + json.dumps(empty_gold) + "\n")
    with pytest.raises(InputError, match=r"gsm8k.jsonl:2: nothing follows #### in the answer"):
        read_records(path, "gsm8k")


def test_named_fields_map_another_layout(tmp_path):
    rows = [{"problem": "What is 2 + 5?", "solution": "7", "samples": ["2 + 5 = 7."], "answer": "no"}]
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    fields = Fields(question="problem", answer="solution", rationales="samples")
    assert read_records(path, "svamp", fields=fields) == [Record("svamp-0", "svamp", "What is 2 + 5?", "7",
                                                                 ["2 + 5 = 7."])]
    with pytest.raises(InputError, match=r"other.jsonl:1: no field 'text' \(the question field\); "
                                         r"the record has problem, solution, samples, answer"):
        read_records(path, "svamp", fields=Fields(question="text"))
    with pytest.raises(InputError, match=r"other.jsonl:1: expected the keys .*or name the fields"):
        read_records(path, "svamp")


def test_prepare_reads_a_csv_with_named_fields(tmp_path, capsys):
    frame = pd.DataFrame([{"q": "What is 3 + 4?", "gold": "7", "outs": json.dumps(["3 + 4 = 7.", "So 7."])}])
    frame.to_csv(tmp_path / "teacher.csv", index=False)
    argv = ["prepare", str(tmp_path / "teacher.csv"), "--task", "svamp", "--k", "2", "--out",
            str(tmp_path / "out.jsonl"), "--question-field", "q", "--answer-field", "gold",
            "--rationales-field", "outs"]
    assert main(argv) == 0
    assert read_records(tmp_path / "out.jsonl") == [Record("svamp-0", "svamp", "What is 3 + 4?", "7",
                                                           ["3 + 4 = 7.", "So 7."])]


def test_train_and_its_evaluation_read_datasets_with_named_fields(tmp_path, monkeypatch):
    """data.train: a parquet file with other field names; eval.data: a saved dataset's split."""
    rows = [{"q": f"What is {i} plus 2?", "gold": str(i + 2),
             "outs": [f"{i} plus 2 is {i + 2}.", f"So {i + 2}."]} for i in range(4)]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    held_out = [{"question": row["q"], "answer": f"so\n#### {row['gold']}"} for row in rows[:2]]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(held_out)}).save_to_disk(str(tmp_path / "test"))
    evaluated = []
    monkeypatch.setattr(periodic_eval, "evaluate_model",
                        lambda model, tokenizer, records, task, **options: evaluated.append(records) or {})
    config = load_config(None, [
        f"data.train={tmp_path / 'train.parquet'}", "data.task=svamp", "data.question_field=q",
        "data.answer_field=gold", "data.rationales_field=outs", "data.num_rationales=2", "data.max_length=64",
        "data.max_tokens=256", f"eval.data={tmp_path / 'test'}", "eval.split=test", "eval.every=1",
        "model.config={model_type: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, "
        "num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64}",
        "model.attn_backend=sdpa", "train.device=cpu", "train.max_steps=1",
        f"train.out_dir={tmp_path / 'run'}", "train.tensorboard=false", "train.progress_bar=false"])
    result = train(config)
    assert result["step"] == 1
    assert yaml_data(tmp_path / "run" / "config.yaml")["question_field"] == "q"
    assert [[(r.question, r.answer) for r in records] for records in evaluated] == [
        [("What is 0 plus 2?", "2"), ("What is 1 plus 2?", "3")]]


def yaml_data(path):
    """The data section of a run's config.yaml."""
    return yaml.safe_load(path.read_text())["data"]
