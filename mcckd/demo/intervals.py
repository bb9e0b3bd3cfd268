"""The mean of paired differences over seeds and its 95% Student t-interval.

For differences d_1..d_n (n >= 2): mean m = sum(d) / n, sample standard deviation
s = sqrt(sum((d - m)^2) / (n - 1)), interval m -/+ t * s / sqrt(n), where t is the two-sided 95%
quantile of Student's t with n - 1 degrees of freedom (a table for 1..30, i.e. up to 31 seeds).
"""
import math

from mcckd.errors import InputError

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
MAX_SAMPLES = len(T_975) + 1


def t_quantile(df: int) -> float:
    """t_{0.975, df}, for 1 <= df <= 30."""
    if not 1 <= df <= len(T_975):
        raise InputError(f"the t-interval needs 2 to {MAX_SAMPLES} samples, got {df + 1}")
    return T_975[df - 1]


def mean_interval(values: list[float]) -> dict:
    """{"n", "mean", "sd", "half_width", "low", "high"}: the mean of `values` and its 95% t-interval."""
    n = len(values)
    t = t_quantile(n - 1)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = t * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half_width,
            "low": mean - half_width, "high": mean + half_width}
