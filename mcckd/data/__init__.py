"""The data pipeline, stage by stage: records -> answers -> selection -> tokenisation -> packing.

`mcckd prepare` (prepare.py) runs the first three on teacher output; the training loop runs
the last two.
"""
from mcckd.data.answers import TASKS, answers_match, extract_answer, normalize_answer
from mcckd.data.packing import IGNORE_INDEX, PackedBatch, TokenBudgetBatchSampler, pack_questions
from mcckd.data.prepare import PrepareReport, prepare_records
from mcckd.data.prompts import FORMATS, PromptFormat, bind_format
from mcckd.data.records import Record, read_records, write_records
from mcckd.data.select import Drop, Selection, select_diverse, select_rationales
from mcckd.data.tasks import Task, load_task_file, resolve_task
from mcckd.data.tokenize import (
    TokenizedQuestion,
    TokenizedRationale,
    encode_prompt,
    tokenize_record,
    tokenize_records,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "TASKS",
    "Drop",
    "PackedBatch",
    "PrepareReport",
    "PromptFormat",
    "Record",
    "Selection",
    "Task",
    "TokenBudgetBatchSampler",
    "TokenizedQuestion",
    "TokenizedRationale",
    "answers_match",
    "bind_format",
    "encode_prompt",
    "extract_answer",
    "load_task_file",
    "normalize_answer",
    "pack_questions",
    "prepare_records",
    "read_records",
    "resolve_task",
    "select_diverse",
    "select_rationales",
    "tokenize_record",
    "tokenize_records",
    "write_records",
]
