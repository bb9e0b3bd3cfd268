"""Mutation check of the Triton kernels: each mutant is a plausible bug written into a copy of
the sources (a dropped rescale, a swapped index, a wrong stride, a lost mask, a skipped
centring, NaN turned into -inf, ...); the tests that guard that code run on the copy, and
every mutant must make them fail ("killed"). The checkout itself is never modified.

Run from the repository root (pytest once per mutant, after one unmutated run of each test
selection, which must pass):

    python tests/ops/mutants.py            # all mutants
    python tests/ops/mutants.py NAME ...   # some of them, by name
    python tests/ops/mutants.py --list

It prints one line per mutant and "N applied, M killed"; the exit status is 1 unless every
mutant was applied and killed. tests/ops/test_mutants.py checks that each one still applies.
"""
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIVOT = "mcckd/ops/pairwise_kl_pivot.py"
KERNELS = "mcckd/ops/pairwise_kl_triton.py"
CE = "mcckd/ops/cross_entropy.py"
EDGES = "tests/ops/test_pairwise_kl_edges.py"
PRECISION = "tests/ops/test_pairwise_kl_precision.py"
TILES = "tests/ops/test_cross_entropy_tiles.py"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple  # pytest arguments: files and a -k expression

    def apply(self, text):
        """text with the mutation; ValueError unless `old` occurs exactly once."""
        if text.count(self.old) != 1:
            raise ValueError(f"{self.name}: {self.old!r} occurs {text.count(self.old)} times in {self.path}")
        return text.replace(self.old, self.new)


def pairwise(k):
    return (EDGES, PRECISION, "-k", f"triton and ({k})")


def tiles(k="triton"):
    return (TILES, "-k", k)


MUTANTS = (
    Mutant("forward: no rescale when a maximum grows", KERNELS,
           "        d_r, D, B, F, C = rescaled(d_r, D, B, F, C, s, s_r, gap, beta)\n", "",
           pairwise("sixteen_rows")),
    Mutant("rescale: q~ loses its e_r part", PIVOT, "s * D + gap * d_r", "s * D", pairwise("sixteen_rows")),
    Mutant("rescale: b not moved by the centred growth", PIVOT, "b_sum = B - beta * d_r", "b_sum = B",
           pairwise("sixteen_rows")),
    Mutant("rescale: C not moved", PIVOT, "s * (C - beta * (d_r + D))", "s * C", pairwise("sixteen_rows")),
    Mutant("merge: splits added unrescaled", KERNELS,
           "    d_s, D_s, B_s, F_s, C_s = rescaled(d_s, D_s, B_s, F_s, C_s, s, s_r, gap, beta)\n", "",
           pairwise("contribute_nothing")),
    Mutant("centring skipped", PIVOT, "    b = delta - tl.sum(delta, axis=0, keep_dims=True) / n\n",
           "    b = delta\n", pairwise("sixteen_rows")),
    Mutant("differences without their rounding error", PIVOT, "return (s_ab - s_cd) + (err_ab - err_cd)",
           "return s_ab - s_cd", pairwise("shifted")),
    Mutant("q~ without expm1 (plain difference everywhere)", PIVOT,
           "tl.abs(delta) < SERIES_LIMIT", "tl.abs(delta) < 0.0", pairwise("near_identical")),
    Mutant("expm1 series one term short", PIVOT, "tl.static_range(8, 1, -1)", "tl.static_range(8, 2, -1)",
           pairwise("near_identical")),
    Mutant("gradient: p_i not divided by d_i / d_r", PIVOT, "p = e * inv_d_r * inv_ratio", "p = e * inv_d_r",
           pairwise("sixteen_rows")),
    Mutant("gradient: swapped row sums (sum over columns)", PIVOT,
           "tl.sum(q_p, axis=0, keep_dims=True)", "tl.sum(q_p, axis=1, keep_dims=True)",
           pairwise("sixteen_rows")),
    Mutant("NaN read as -inf", KERNELS,
           "return tl.load(x_ptr + offsets, mask=mask, other=float(\"-inf\")).to(tl.float32)",
           "x = tl.load(x_ptr + offsets, mask=mask, other=float(\"-inf\")).to(tl.float32)\n"
           "    return tl.where(x != x, float(\"-inf\"), x)",
           pairwise("nan_or_plus_inf")),
    Mutant("mixed -inf not flagged", PIVOT, "(minus_inf > 0) & (minus_inf < n_true)",
           "(minus_inf > 0) & (minus_inf < 0)", pairwise("minus_inf_in_some")),
    Mutant("invalid rows not replaced by the pivot's", KERNELS,
           "        x = invalid_rows_as_pivot(x_next, valid, is_pivot)", "        x = x_next",
           pairwise("contribute_nothing")),
    Mutant("pivot is row 0 even when invalid", KERNELS,
           "is_pivot = rows == tl.min(tl.where(valid, rows, K_PAD), axis=0)", "is_pivot = rows == 0",
           pairwise("contribute_nothing or sixteen")),
    Mutant("gradient stored with the logits' strides", KERNELS,
           "offsets = g * stride_grad_g + rows.to(tl.int64)[:, None] * stride_grad_k",
           "offsets = g * stride_g + rows.to(tl.int64)[:, None] * stride_k", pairwise("strided")),
    Mutant("column stride ignored", KERNELS, "cols.to(tl.int64)[None, :] * stride_v",
           "cols.to(tl.int64)[None, :]", (EDGES, "-k", "column_strides")),
    Mutant("valid mask strides ignored", KERNELS,
           "offsets = g * stride_valid_g + rows.to(tl.int64) * stride_valid_k", "offsets = g * K + rows",
           (EDGES, "-k", "column_strides")),
    Mutant("backward: pairs counted as k squared", KERNELS,
           "pairs = (n_true * (n_true - 1)).to(tl.float32)\n    coef",
           "pairs = (n_true * n_true).to(tl.float32)\n    coef", pairwise("sixteen_rows")),
    Mutant("backward: every group gets group 0's output gradient", KERNELS,
           "tl.load(grad_out_ptr + g * stride_grad_out)", "tl.load(grad_out_ptr)", pairwise("strided")),
    Mutant("G = 0 launched", KERNELS, "    if G == 0:\n        return group_loss, stats\n", "",
           pairwise("no_groups")),
    Mutant("CE: running sum not rescaled", CE, "d = d * tl.exp(m - m_new) + ", "d = d + ", tiles()),
    Mutant("CE: ignored rows get a loss", CE, "tl.where(active, lse - z_target, 0.0)", "lse - z_target",
           tiles()),
    Mutant("CE: column stride ignored", CE, "row_ptr + cols.to(tl.int64) * stride_col",
           "row_ptr + cols.to(tl.int64)", tiles()),
    Mutant("CE: gradient column stride ignored", CE, "grad_row + cols.to(tl.int64) * stride_grad_col",
           "grad_row + cols.to(tl.int64)", tiles()),
    Mutant("CE: onehot one column off", CE, "tl.where(cols == label, p - 1.0, p)",
           "tl.where(cols == label + 1, p - 1.0, p)", tiles()),
)


def copy_of_checkout(destination):
    """The package, the tests and the pytest settings under `destination`."""
    for folder in ("mcckd", "tests"):
        shutil.copytree(ROOT / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pytest.ini", "pyproject.toml"):
        shutil.copy(ROOT / name, destination / name)


def failed(mutant, mutate=True):
    """(the tests failed, seconds): run the mutant's tests on a copy of the checkout, mutated
    unless `mutate` is False (the baseline, where they must pass)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        copy_of_checkout(copy)
        target = copy / mutant.path
        if mutate:
            target.write_text(mutant.apply(target.read_text()))
        env = {**os.environ, "PYTHONPATH": str(copy), "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                 *mutant.tests], cwd=copy, env=env, capture_output=True, text=True)
        if result.returncode not in (0, 1):  # 5: nothing collected, else an error of pytest itself
            raise RuntimeError(f"{mutant.name}: pytest exited {result.returncode}\n{result.stdout[-2000:]}")
        return result.returncode == 1, time.monotonic() - start


def main(argv):
    if "--list" in argv:
        print("\n".join(m.name for m in MUTANTS))
        return 0
    chosen = [m for m in MUTANTS if not argv or m.name in argv]
    for tests in dict.fromkeys(m.tests for m in chosen):  # each selection passes unmutated
        baseline = next(m for m in chosen if m.tests == tests)
        if failed(baseline, mutate=False)[0]:
            print(f"the unmutated sources fail: pytest {' '.join(tests)}")
            return 1
    applied = killed_count = 0
    for mutant in chosen:
        mutant.apply((ROOT / mutant.path).read_text())
        applied += 1
        dead, seconds = failed(mutant)
        killed_count += dead
        print(f"{'killed  ' if dead else 'SURVIVED'} {seconds:5.0f} s  {mutant.name}", flush=True)
    print(f"{applied} applied, {killed_count} killed")
    return 0 if applied == killed_count == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
