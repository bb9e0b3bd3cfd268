"""Self-consistency: the answer most of a question's sampled rationales reach."""
from mcckd.data.answers import answers_match


def majority_vote(answers, task):
    """The most frequent answer among `answers` (normalised answers; None, an output without
    one, casts no vote), or None when no sample has an answer.

    Answers that `answers_match` counts as equal ("0.5" and "1/2") vote together, under the
    spelling given first; a tie goes to the answer that was given first.
    """
    tallies = []  # [answer, votes], in order of first appearance
    for answer in answers:
        if answer is None:
            continue
        for tally in tallies:
            if answers_match(answer, tally[0], task):
                tally[1] += 1
                break
        else:
            tallies.append([answer, 1])
    if not tallies:
        return None
    return max(tallies, key=lambda tally: tally[1])[0]  # max keeps the first of equal counts
