"""Self-consistency's majority vote."""
from mcckd.data import Record
from mcckd.evaluation.scoring import answer_row
from mcckd.evaluation.voting import majority_vote


def test_the_most_frequent_answer_wins():
    assert majority_vote(["3", "5", "5", "3", "5"], "gsm8k") == "5"


def test_outputs_without_an_answer_cast_no_vote():
    assert majority_vote([None, None, "4", None], "gsm8k") == "4"
    assert majority_vote([None, None], "gsm8k") is None
    assert majority_vote([], "csqa") is None


def test_a_tie_goes_to_the_answer_given_first():
    assert majority_vote(["B", "A", "A", "B"], "csqa") == "B"
    assert majority_vote(["A", "B", "B", "A"], "csqa") == "A"


def test_equal_numbers_vote_together():
    assert majority_vote(["0.5", "2", "1/2", "2", "0.5"], "svamp") == "0.5"  # 3 votes against 2


def test_a_row_is_scored_on_the_vote_and_shows_the_sample_that_reached_it():
    record = Record("q", "svamp", "What is 2 plus 2?", "4", [])
    texts = ["It is 5.", "2 plus 2 is 4.", "So 4.", "Therefore, the answer is 5.", "Maybe 4."]
    row = answer_row(record, texts, "svamp")
    assert row["extracted"] == "4" and row["correct"]
    assert row["generated"] == "2 plus 2 is 4."
    assert row["sample_answers"] == ["5", "4", "4", "5", "4"] and row["samples"] == texts
    wrong = answer_row(record, ["It is 5.", "5", "4"], "svamp")
    assert wrong["extracted"] == "5" and not wrong["correct"] and wrong["generated"] == "It is 5."
