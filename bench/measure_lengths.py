"""Measure the token lengths of real MCC-KD training sequences; write bench/lengths.json.

`python bench/measure_lengths.py --source svamp=SVAMP/train.json [--source gsm8k=GSM8K/test.json]
--out bench/lengths.json`: each SOURCE is a file in the MCC-KD paper's published JSON layout
(`{"instruction", "output", "label"}`). The records go through the same stages as a training run:
`prepare_records` keeps the K=4 most diverse rationales that reach the gold answer, and
`tokenize_records` builds the training sequences ([BOS] prompt | rationale | answer sentence |
answer | "." | EOS) and drops those over `data.max_length` (512). Only histograms of the lengths
are written, never text.

Token counts: no Qwen tokenizer can be downloaded here, so the sequences are counted with a
byte-level BPE fitted to the same texts (`train_word_tokenizer`, digits split one by one as
Qwen2's pre-tokenizer splits them) with a vocabulary large enough that every frequent word is
one token, as a 151k-token vocabulary makes everyday English. The characters per token this
gives are written beside the histograms, with the count at a smaller vocabulary to show how
much the estimate depends on it.
"""
import argparse
import json
import re
from collections import Counter

from mcckd.data import prepare_records, read_records, tokenize_records
from mcckd.models.word_tokenizer import train_word_tokenizer
from mcckd.training.config import DataConfig

K = 4
VOCAB_SIZE = 16384  # saturates on these corpora: every word seen often enough is one token
SMALL_VOCAB_SIZE = 4096
BIN_WIDTH = 8  # tokens per histogram bin of the prompt and target lengths


def histogram(values, width):
    """{"bin_width", "first", "counts"}: counts[i] = values in [first + i w, first + (i + 1) w)."""
    first = min(values) // width * width
    counts = Counter((v - first) // width for v in values)
    return {"bin_width": width, "first": first, "counts": [counts.get(i, 0) for i in range(max(counts) + 1)]}


def one_line_lists(text):
    """JSON text with every list of integers on one line."""
    return re.sub(r"\[[\d,\s]*\]", lambda m: "[" + ", ".join(re.findall(r"\d+", m.group(0))) + "]", text)


def sequence_lengths(questions):
    """Per question: prompt tokens, answer tokens; per rationale: target tokens (all after the prompt)."""
    prompts, answers, targets = [], [], []
    for question in questions:
        prompts.append(question.rationales[0].target_start)
        answers.append(len(question.answer_ids))
        targets += [len(r.input_ids) - r.target_start for r in question.rationales]
    return prompts, answers, targets


def characters_per_token(texts, tokenizer):
    characters = sum(len(text) for text in texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return characters / tokens


def measure(name, path, task):
    records, report = prepare_records(read_records(path, task), K)
    texts = [r.question for r in records] + [t for r in records for t in r.rationales]
    tokenizer = train_word_tokenizer(texts, VOCAB_SIZE)
    questions, dropped = tokenize_records(records, tokenizer, max_length=DataConfig.max_length)
    prompts, answers, targets = sequence_lengths(questions)
    rationales = [len(q.rationales) for q in questions]
    return {
        "source": name,
        "questions": len(questions),
        "rationales_per_question": dict(sorted(Counter(rationales).items())),
        "tokenizer": f"byte-level BPE, {VOCAB_SIZE} tokens, digits split, fitted to these texts",
        "chars_per_token": round(characters_per_token(texts, tokenizer), 3),
        f"chars_per_token_at_{SMALL_VOCAB_SIZE}": round(
            characters_per_token(texts, train_word_tokenizer(texts, SMALL_VOCAB_SIZE)), 3),
        "mean_prompt_tokens": round(sum(prompts) / len(prompts), 1),
        "mean_target_tokens": round(sum(targets) / len(targets), 1),
        "prompt_tokens": histogram(prompts, BIN_WIDTH),
        "target_tokens": histogram(targets, BIN_WIDTH),
        "answer_tokens": histogram(answers, 1),
        "dropped": {**dropped, "questions without a correct rationale": report.questions_read - len(records)},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", required=True, metavar="TASK=PATH",
                        help="a task name (svamp, gsm8k, ...) and its file in the paper's layout")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    distributions = {}
    for source in args.source:
        task, _, path = source.partition("=")
        distributions[task] = measure(task, path, task)
        row = distributions[task]
        print(f"{task}: {row['questions']} questions, prompt {row['mean_prompt_tokens']} and target "
              f"{row['mean_target_tokens']} tokens on average, {row['chars_per_token']} characters a token")
    text = json.dumps({"K": K, "distributions": distributions}, indent=1)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(one_line_lists(text) + "\n")


if __name__ == "__main__":
    main()
