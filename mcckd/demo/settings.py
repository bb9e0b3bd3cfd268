"""The demo's fixed choices: the student, its training, the data sizes, evaluation."""
import math
from dataclasses import dataclass

K = 4  # rationales per question
MCC_ALPHA = 0.1  # the paper's weight of the consistency term
STEPS = 9000  # of one micro-batch each (one question)
SEED = 0
# The student: about 0.47M parameters. Two layers start solving earlier than four and step
# 1.8x faster (bench/NOTES.md).
STUDENT = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}
# The README's demo results were measured with each micro-batch's own loss means averaged.
TRAINING = {
    "lr": 1e-3, "min_lr_ratio": 0.0, "grad_accum": 1, "device": "cpu", "log_every": 10, "save_every": 0,
    "keep_last": 1, "report_to": ["jsonl"], "loss_normalization": "micro_batch",
}
# Micro-batches of one question (its K rationales packed, about 370 tokens): one update per
# question, which teaches more per CPU second than fewer, larger updates (bench/NOTES.md).
MAX_LENGTH = 144  # the longest training sequence is about 125 tokens
MAX_TOKENS = K * MAX_LENGTH
# Large enough that BPE merges every word and number of the training text into one token: a
# number is one symbol, so copying it and adding are what the student learns, not digit carries.
VOCAB_SIZE = 1024
EVAL_BATCH_SIZE = 500  # the whole of a test set: 10% faster than 100 a batch, the same answers
MAX_NEW_TOKENS = 96  # the longest training target (rationale, answer sentence) is about 75 tokens
CURVE_POINTS = 7  # evaluations during each run, for the accuracy curves
PLATEAU_POINTS = 2  # a student has levelled off when its last two evaluations are this close

@dataclass(frozen=True)
class Sizes:
    """How many questions each part of the demo uses."""

    train: int = 9000  # each seen once in 9000 steps
    test: int = 500  # in each test set
    curve: int = 500  # of each test set, evaluated CURVE_POINTS times during training
    teacher_samples: int = 8  # rationales the teacher writes per training question


SIZES = Sizes()
STUDENTS = {"ce": ("CE only", 0.0), "mcc": ("MCC-KD", MCC_ALPHA)}
SPLITS = {"id": "in-distribution", "ood": "out-of-distribution"}


def curve_every(steps):
    """Steps between the evaluations for the accuracy curves, ceil(steps / CURVE_POINTS): at most
    CURVE_POINTS evaluations with the one after the final step, none a few steps before it."""
    return math.ceil(steps / CURVE_POINTS)
