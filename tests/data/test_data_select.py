"""Correctness filter, duplicate removal and diversity selection on constructed examples."""
import itertools

import pytest

from mcckd.data import Record, select_diverse, select_rationales
from mcckd.data.select import find_duplicates, jaccard, ngrams


def symmetric(n, pairs, default):
    """An n x n similarity matrix: `pairs` {(i, j): s}, `default` elsewhere, 1 on the diagonal."""
    matrix = [[1.0 if i == j else default for j in range(n)] for i in range(n)]
    for (i, j), value in pairs.items():
        matrix[i][j] = matrix[j][i] = value
    return matrix


# Items 0 and 1 are the least similar pair, but each resembles everything else (0.6), while
# 2, 3 and 4 hardly resemble one another (0.15): the best 3-subset is {2, 3, 4} (total 0.45),
# and greedy max-min, which starts from the pair (0, 1), cannot reach it.
TRAP = symmetric(5, {(0, 1): 0.1, (2, 3): 0.15, (2, 4): 0.15, (3, 4): 0.15}, 0.6)


def test_exact_search_finds_the_least_similar_subset():
    assert select_diverse(TRAP, 3) == [2, 3, 4]


def test_greedy_max_min_when_subsets_are_too_many():
    assert select_diverse(TRAP, 3, max_subsets=5) == [0, 1, 2]


def test_greedy_max_min_adds_the_farthest_item():
    # (2, 3) is the least similar pair; then 4 (closest chosen at 0.2) beats 0 and 1 (0.9).
    similarity = symmetric(5, {(0, 1): 0.9, (0, 2): 0.9, (1, 2): 0.9, (2, 3): 0.05, (3, 4): 0.2,
                               (2, 4): 0.1}, 0.1)
    assert select_diverse(similarity, 3, max_subsets=1) == [2, 3, 4]
    assert select_diverse(similarity, 3) == [2, 3, 4]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_exact_search_agrees_with_brute_force(k):
    values = [0.31, 0.05, 0.72, 0.44, 0.18, 0.9, 0.27, 0.63, 0.12, 0.5, 0.38, 0.81, 0.22, 0.09, 0.56]
    pairs = dict(zip(itertools.combinations(range(6), 2), values))
    similarity = symmetric(6, pairs, 0.0)
    totals = {subset: sum(pairs[pair] for pair in itertools.combinations(subset, 2))
              for subset in itertools.combinations(range(6), k)}
    assert select_diverse(similarity, k) == list(min(totals, key=totals.get))


def test_fewer_items_than_k_are_all_kept():
    assert select_diverse(symmetric(3, {}, 0.5), 4) == [0, 1, 2]


def test_ngrams_and_jaccard():
    assert ngrams("So 3 + 4 = 7.", 3) == {("so", "3", "+"), ("3", "+", "4"), ("+", "4", "="),
                                          ("4", "=", "7"), ("=", "7", ".")}
    assert ngrams("Yes.", 3) == {("yes", ".")}
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0


APPLES = "Start with 12 apples. Twenty more arrive. Together that makes 32 apples in the basket."
COUNTING = "Counting on from twenty by twelve reaches thirty-two, written 32 as digits."
# half of APPLES, half of COUNTING: similar to both, while they share nothing
MIXED = "Start with 12 apples. Twenty more arrive. Counting on from twenty by twelve reaches 32."


def test_select_rationales_filters_deduplicates_and_picks_the_diverse_pair():
    near_apples = APPLES.replace("basket.", "basket now.")
    assert jaccard(ngrams(APPLES, 3), ngrams(near_apples, 3)) >= 0.8
    record = Record("q", "svamp", "Tom has 12 apples and gets 20 more. How many?", "32", [
        MIXED,
        "12 + 20 = 30. The answer is 30.",  # wrong
        "I am not sure how to do this.",  # no answer
        APPLES,
        "  start with 12 APPLES. twenty more arrive. Together that makes 32 apples in the basket.",  # exact
        near_apples,  # near
        COUNTING,
    ])
    selection = select_rationales(record, 2)
    assert selection.rationales == [APPLES, COUNTING]
    assert selection.dropped == {"no answer found": 1, "wrong answer": 1, "exact duplicate": 1,
                                 "near duplicate": 1, "not chosen": 1}
    grams = [ngrams(text, 3) for text in (MIXED, APPLES, COUNTING)]
    before = (jaccard(grams[0], grams[1]) + jaccard(grams[0], grams[2]) + jaccard(grams[1], grams[2])) / 3
    assert selection.similarity_before == pytest.approx(before)
    assert selection.similarity_after == 0.0 < before


def test_near_duplicate_threshold_is_configurable():
    texts = [APPLES, APPLES.replace("basket.", "basket now.")]
    assert find_duplicates(texts, threshold=0.8) == [None, ("near duplicate", 0)]
    assert find_duplicates(texts, threshold=0.99) == [None, None]
    assert find_duplicates([*texts, texts[1].upper()], threshold=0.99) == [None, None, ("exact duplicate", 1)]


def test_multiple_choice_rationales_are_checked_against_the_letter():
    question = "Where is money kept? Answer Choices:\nA. bank\nB. tree\nC. river"
    record = Record("c", "csqa", question, "A", [
        "Money is kept safe in a vault. Therefore, the answer is a bank.",
        "Trees do not hold money. The answer is (B).",
        "The answer is A.",
    ])
    selection = select_rationales(record, 4)
    assert selection.rationales == ["Money is kept safe in a vault.", record.rationales[2]]
    assert selection.dropped["wrong answer"] == 1


@pytest.mark.parametrize("text, stripped", [
    ("12 - 3 = 9 apples are left.\nTherefore, the answer is 9.", "12 - 3 = 9 apples are left."),
    ("He pays 3 x 6 = $18. So the final answer is $18 .", "He pays 3 x 6 = $18."),
    ("Banks keep money. The answer is (A).", "Banks keep money."),
    ("12 - 3 = 9, so 9 apples are left.", "12 - 3 = 9, so 9 apples are left."),
    ("The answer is 9.", "The answer is 9."),
])
def test_closing_answer_sentence_is_stripped(text, stripped):
    record = Record(id="q", task="svamp" if "(A)" not in text else "csqa", question="Q? (A) bank (B) farm",
                    answer="A" if "(A)" in text else ("18" if "$18" in text else "9"), rationales=[text])
    assert select_rationales(record, 1).rationales == [stripped]
