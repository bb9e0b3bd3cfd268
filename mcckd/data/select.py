"""Selection: keep a question's correct rationales, drop duplicates, pick the K most diverse.

Similarity is the Jaccard index of two rationales' sets of word n-grams (lower-cased words and
punctuation marks; a text shorter than n words is one n-gram). Exact duplicates (equal up to
case and white space) and near duplicates (similarity >= a threshold, default 0.8) keep their
first occurrence. Of the rest, the K with the lowest mean pairwise similarity are chosen: by
trying every subset when there are at most `max_subsets` of them, else greedily (max-min: start
from the least similar pair, then add the rationale whose highest similarity to those chosen is
lowest). Ties go to the earlier rationales, so the choice is deterministic.
"""
import itertools
import math
import re
from dataclasses import dataclass, field

from mcckd.data.answers import answers_match, extract_answer, strip_answer_sentence

WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class Selection:
    """The rationales chosen for one question and what happened to the others.

    `dropped` counts rationales by reason: "no answer found", "wrong answer", "exact duplicate",
    "near duplicate", "not chosen". The similarities are the mean pairwise n-gram Jaccard index
    of the distinct correct rationales and of those chosen (None with fewer than two).
    """

    rationales: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    similarity_before: float | None = None
    similarity_after: float | None = None


def select_rationales(record, k, *, ngram=3, near_duplicate=0.8, max_subsets=1000):
    """The Selection of at most k correct, distinct, diverse rationales of `record`."""
    correct, dropped = correct_rationales(record)
    distinct, duplicates = remove_duplicates(correct, ngram=ngram, threshold=near_duplicate)
    dropped.update(duplicates)
    grams = [ngrams(text, ngram) for text in distinct]
    similarity = similarity_matrix(grams)
    chosen = select_diverse(similarity, k, max_subsets=max_subsets)
    dropped["not chosen"] = len(distinct) - len(chosen)
    return Selection(
        rationales=[distinct[i] for i in chosen],
        dropped=dropped,
        similarity_before=mean_pairwise(similarity, range(len(distinct))),
        similarity_after=mean_pairwise(similarity, chosen),
    )


def correct_rationales(record):
    """The rationales whose extracted answer matches the gold one, without their closing
    answer sentence, and counts of the others."""
    correct, dropped = [], {"no answer found": 0, "wrong answer": 0}
    for text in record.rationales:
        answer = extract_answer(text, record.task, question=record.question)
        if answer is None:
            dropped["no answer found"] += 1
        elif answers_match(answer, record.answer, record.task):
            correct.append(strip_answer_sentence(text))
        else:
            dropped["wrong answer"] += 1
    return correct, dropped


def remove_duplicates(texts, *, ngram=3, threshold=0.8):
    """The texts without exact and near duplicates (first kept), and counts of each."""
    kept, kept_grams, seen = [], [], set()
    dropped = {"exact duplicate": 0, "near duplicate": 0}
    for text in texts:
        key = " ".join(text.lower().split())
        grams = ngrams(text, ngram)
        is_exact_duplicate = key in seen
        seen.add(key)
        if is_exact_duplicate:
            dropped["exact duplicate"] += 1
        elif any(jaccard(grams, other) >= threshold for other in kept_grams):
            dropped["near duplicate"] += 1
        else:
            kept.append(text)
            kept_grams.append(grams)
    return kept, dropped


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
