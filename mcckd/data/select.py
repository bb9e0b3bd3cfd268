"""Selection: keep a question's correct rationales, drop duplicates, pick the K most diverse.

A rationale is correct when the answer read out of it (answers.py) matches the gold one; what
it keeps for training is `training_rationale` (reasoning.py): its think block as `think` says,
its closing answer statement stripped. Similarity is the Jaccard index of two rationales' sets
of word n-grams (lower-cased words and punctuation marks; a text shorter than n words is one
n-gram). Exact duplicates (equal up to case and white space) and near duplicates (similarity
>= a threshold, default 0.8) keep their first occurrence. Of the rest, the K with the lowest
mean pairwise similarity are chosen: by trying every subset when there are at most
`max_subsets` of them, else greedily (max-min: start from the least similar pair, then add the
rationale whose highest similarity to those chosen is lowest). Ties go to the earlier
rationales, so the choice is deterministic.
"""
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass, field

from mcckd.data.answers import answers_match, extract_answer
from mcckd.data.reasoning import training_rationale
from mcckd.data.tasks import resolve_task

WORD = re.compile(r"\w+|[^\w\s]")
# Why a rationale is left out, in the order the stages decide it.
DROP_REASONS = (
    "no answer found",
    "wrong answer",
    "empty rationale",
    "exact duplicate",
    "near duplicate",
    "not chosen",
)


@dataclass(frozen=True)
class Drop:
    """One rationale left out: its position in the record's rationales, the reason (one of
    DROP_REASONS), the answer read out of it (None when none was found) and, for a duplicate,
    the position of the rationale it repeats."""

    index: int
    reason: str
    extracted: str | None = None
    duplicate_of: int | None = None


@dataclass
class Selection:
    """The rationales chosen for one question and what happened to the others.

    `drops` lists every rationale left out, `dropped` counts them by reason. The similarities
    are the mean pairwise n-gram Jaccard index of the distinct correct rationales and of those
    chosen (None with fewer than two).
    """

    rationales: list[str]
    drops: list[Drop] = field(default_factory=list)
    similarity_before: float | None = None
    similarity_after: float | None = None

    @property
    def dropped(self):
        """Counter of the reasons of `drops`."""
        return Counter(drop.reason for drop in self.drops)


def select_rationales(record, k, *, task=None, think="keep", ngram=3, near_duplicate=0.8, max_subsets=1000):
    """The Selection of at most k correct, distinct, diverse rationales of `record`.

    Args:
        record: a Record.
        k: rationales to keep at most.
        task: the task (a name or a Task) the answers are read by; default: the record's own.
        think: what the kept rationales hold of a think block: keep, unwrap or strip.
    """
    task = resolve_task(task if task is not None else record.task)
    correct, drops = correct_rationales(record, task, think)
    indices = [index for index, _, _ in correct]
    texts = [text for _, text, _ in correct]
    distinct = []
    for position, duplicate in enumerate(find_duplicates(texts, ngram=ngram, threshold=near_duplicate)):
        if duplicate is None:
            distinct.append(position)
        else:
            reason, of = duplicate
            drops.append(Drop(indices[position], reason, correct[position][2], indices[of]))
    grams = [ngrams(texts[position], ngram) for position in distinct]
    similarity = similarity_matrix(grams)
    chosen = select_diverse(similarity, k, max_subsets=max_subsets)
    drops += [Drop(indices[distinct[i]], "not chosen", correct[distinct[i]][2])
              for i in range(len(distinct)) if i not in chosen]
    return Selection(
        rationales=[texts[distinct[i]] for i in chosen],
        drops=sorted(drops, key=lambda drop: drop.index),
        similarity_before=mean_pairwise(similarity, range(len(distinct))),
        similarity_after=mean_pairwise(similarity, chosen),
    )


def correct_rationales(record, task, think="keep"):
    """(index, training text, answer) of each rationale whose answer matches the gold one, and
    the Drops of the others."""
    correct, drops = [], []
    for index, text in enumerate(record.rationales):
        answer = extract_answer(text, task, question=record.question)
        if answer is None:
            drops.append(Drop(index, "no answer found"))
        elif not answers_match(answer, record.answer, task):
            drops.append(Drop(index, "wrong answer", answer))
        else:
            kept = training_rationale(text, think)
            if kept:
                correct.append((index, kept, answer))
            else:
                drops.append(Drop(index, "empty rationale", answer))
    return correct, drops


def find_duplicates(texts, *, ngram=3, threshold=0.8):
    """Per text, None when it is kept, else (reason, position of the kept text it repeats):
    "exact duplicate" (equal up to case and white space) or "near duplicate" (n-gram Jaccard
    similarity >= threshold to a kept text). The first occurrence is kept."""
    kept, kept_grams, seen, found = [], [], {}, []
    for position, text in enumerate(texts):
        key = " ".join(text.lower().split())
        grams = ngrams(text, ngram)
        if key in seen:
            found.append(("exact duplicate", seen[key]))
            continue
        seen[key] = position
        near = next((of for of, other in zip(kept, kept_grams) if jaccard(grams, other) >= threshold), None)
        if near is not None:
            found.append(("near duplicate", near))
        else:
            kept.append(position)
            kept_grams.append(grams)
            found.append(None)
    return found


def ngrams(text, n):
    """The set of word n-grams of `text` (one n-gram, all its words, when it has fewer)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a, b):
    """|a & b| / |a | b| of two sets (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def similarity_matrix(grams):
    """[n][n] pairwise Jaccard similarities of n n-gram sets, as nested lists."""
    n = len(grams)
    similarity = [[1.0] * n for _ in range(n)]
    for i, j in itertools.combinations(range(n), 2):
        similarity[i][j] = similarity[j][i] = jaccard(grams[i], grams[j])
    return similarity


def mean_pairwise(similarity, indices):
    """Mean similarity over the pairs of `indices`, None when there is no pair."""
    pairs = list(itertools.combinations(indices, 2))
    if not pairs:
        return None
    return sum(similarity[i][j] for i, j in pairs) / len(pairs)


def select_diverse(similarity, k, *, max_subsets=1000):
    """Sorted indices of the k items of lowest mean pairwise similarity (all when n <= k)."""
    n = len(similarity)
    if n <= k:
        return list(range(n))
    if k < 2:
        return list(range(k))
    if math.comb(n, k) <= max_subsets:
        return most_diverse_subset(similarity, k)
    return greedy_max_min(similarity, k)


def most_diverse_subset(similarity, k):
    """The k-subset of lowest total pairwise similarity, by trying them all (first on ties)."""
    best, best_total = None, math.inf
    for subset in itertools.combinations(range(len(similarity)), k):
        total = sum(similarity[i][j] for i, j in itertools.combinations(subset, 2))
        if total < best_total:
            best, best_total = subset, total
    return list(best)


def greedy_max_min(similarity, k):
    """k indices chosen greedily: the least similar pair, then each time the item whose
    highest similarity to those chosen is lowest."""
    n = len(similarity)
    first = min(itertools.combinations(range(n), 2), key=lambda pair: similarity[pair[0]][pair[1]])
    chosen = list(first)
    closest = [max(similarity[i][first[0]], similarity[i][first[1]]) for i in range(n)]
    while len(chosen) < k:
        candidates = [i for i in range(n) if i not in chosen]
        best = min(candidates, key=lambda i: closest[i])
        chosen.append(best)
        closest = [max(closest[i], similarity[i][best]) for i in range(n)]
    return sorted(chosen)
