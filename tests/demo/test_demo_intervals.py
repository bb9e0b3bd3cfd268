"""The seed study's statistics on made-up numbers, against values worked out by hand, and the
parsing of `--seeds`."""
import argparse
import math

import pytest

from mcckd.demo.intervals import MAX_SAMPLES, mean_interval, t_quantile
from mcckd.demo.study import parse_seeds
from mcckd.errors import InputError


def test_three_differences_by_hand():
    # mean 2, sd sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1, half width t(0.975, 2) * 1 / sqrt(3)
    interval = mean_interval([1.0, 2.0, 3.0])
    half = 4.303 / math.sqrt(3)
    assert interval["n"] == 3 and interval["mean"] == pytest.approx(2) and interval["sd"] == pytest.approx(1)
    assert interval["half_width"] == pytest.approx(half)
    assert (interval["low"], interval["high"]) == pytest.approx((2 - half, 2 + half))


def test_two_differences_by_hand():
    # d = [0.1, -0.3]: mean -0.1, sd sqrt((0.2^2 + 0.2^2) / 1) = 0.2 sqrt(2), t(0.975, 1) = 12.706
    interval = mean_interval([0.1, -0.3])
    half = 12.706 * 0.2 * math.sqrt(2) / math.sqrt(2)
    assert interval["mean"] == pytest.approx(-0.1)
    assert (interval["low"], interval["high"]) == pytest.approx((-0.1 - half, -0.1 + half))


def test_equal_differences_give_a_zero_width_interval():
    interval = mean_interval([0.05] * 8)
    assert interval["mean"] == pytest.approx(0.05) and interval["half_width"] == pytest.approx(0, abs=1e-15)


def test_t_table_matches_known_quantiles():
    assert [t_quantile(df) for df in (1, 7, 10, 30)] == [12.706, 2.365, 2.228, 2.042]
    quantiles = [t_quantile(df) for df in range(1, MAX_SAMPLES)]
    assert quantiles == sorted(quantiles, reverse=True)


@pytest.mark.parametrize("n", [1, MAX_SAMPLES + 1])
def test_too_few_or_too_many_samples_are_refused(n):
    with pytest.raises(InputError, match="2 to 31 samples"):
        mean_interval([0.0] * n)


@pytest.mark.parametrize(("text", "seeds"), [
    ("0-7", list(range(8))),
    ("0,3,5", [0, 3, 5]),
    ("0-2, 9", [0, 1, 2, 9]),
    ("4-5", [4, 5]),
])
def test_seeds_are_parsed(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("3", "2 to 31 seeds"),
    ("0-40", "2 to 31 seeds"),
    ("7-0", "runs backwards"),
    ("0,1,1", "appears twice"),
    ("0-3,2", "appears twice"),
    ("a-b", "like 0-7"),
    ("-1,2", "like 0-7"),
    ("1,,2", "like 0-7"),
])
def test_bad_seeds_are_refused(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_seeds(text)
