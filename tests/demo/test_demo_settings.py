"""The demo's curve cadence: CURVE_POINTS evaluations, the last two about a spacing apart."""
import pytest

from mcckd.demo.settings import CURVE_POINTS, STEPS, curve_every


def evaluated_steps(steps):
    """The steps the training loop evaluates at: every `curve_every` steps and the final one."""
    every = curve_every(steps)
    return [step for step in range(1, steps + 1) if step % every == 0 or step == steps]


@pytest.mark.parametrize("steps", [STEPS, 7000, 7001, 8999, 9006])
def test_the_curve_has_its_points_and_no_evaluation_just_before_the_last(steps):
    evaluated = evaluated_steps(steps)
    assert len(evaluated) == CURVE_POINTS
    assert evaluated[-1] == steps
    assert evaluated[-1] - evaluated[-2] > curve_every(steps) - CURVE_POINTS


def test_a_run_shorter_than_the_curve_evaluates_after_every_step():
    assert evaluated_steps(3) == [1, 2, 3]
