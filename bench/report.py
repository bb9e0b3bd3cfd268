"""The results JSON as a short table, and optionally as a plot.

`python bench/report.py RESULTS.json [--plot OUT.png]`: per shape, each provider's time and
peak memory, mcckd's speed-up over each provider, and (pairwise) mcckd's share of the copy
bandwidth measured in the same run.
"""
import argparse
import json
from collections import defaultdict

SHAPE_KEYS = {
    "pairwise_sym_kl": ("G", "K", "V", "dtype"),
    "fused_linear_mcc": ("N", "d", "V", "G", "K", "dtype"),
}


def by_shape(rows, keys):
    shapes = defaultdict(dict)
    for row in rows:
        shapes[tuple(row[k] for k in keys)][row["provider"]] = row
    return shapes


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(results):
    print(f"{results['gpu']}, torch {results['torch']}, triton {results['triton']}, "
          f"copy {fmt(results.get('copy_gbps'), '.0f')} GB/s")
    for section, keys in SHAPE_KEYS.items():
        for shape, providers in by_shape(results.get(section, []), keys).items():
            ours = providers.get("mcckd", {}).get("ms_fwd_bwd")
            cells = []
            for name, row in sorted(providers.items()):
                ms, peak = row["ms_fwd_bwd"], row["peak_mb"]
                speedup = f" x{ms / ours:.2f}" if ours and ms and name != "mcckd" else ""
                cells.append(f"{name} {fmt(ms, '.3f')} ms {fmt(peak, '.0f')} MB{speedup}")
            share = ""
            mcckd = providers.get("mcckd", {})
            if mcckd.get("gbps") and results.get("copy_gbps"):
                share = f" | {100 * mcckd['gbps'] / results['copy_gbps']:.0f}% of copy"
            label = " ".join(f"{k}={v}" for k, v in zip(keys, shape))
            print(f"{section} {label}: " + "; ".join(cells) + share)


def plot(results, path):
    """Time and peak memory against V per provider, one row of panels per section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [s for s in SHAPE_KEYS if results.get(s)]
    fig, axes = plt.subplots(len(sections), 2, figsize=(11, 4 * len(sections)), squeeze=False)
    for (time_ax, mem_ax), section in zip(axes, sections):
        rows = results[section]
        # The slice measured at the most vocabulary sizes: (G, K) for pairwise, N for fused.
        key = (lambda r: (r["G"], r["K"])) if section == "pairwise_sym_kl" else (lambda r: r["N"])
        fixed = max({key(r) for r in rows}, key=lambda k: (len({r["V"] for r in rows if key(r) == k}), k))
        pick = lambda r, fixed=fixed, key=key: key(r) == fixed  # noqa: E731
        for provider in sorted({r["provider"] for r in rows}):
            series = sorted(
                (r["V"], r["ms_fwd_bwd"], r["peak_mb"]) for r in rows if r["provider"] == provider and pick(r)
            )
            series = [s for s in series if s[1] is not None]
            if series:
                vs, ms, mb = zip(*series)
                time_ax.plot(vs, ms, marker="o", label=provider)
                mem_ax.plot(vs, mb, marker="o", label=provider)
        shape = f"G={fixed[0]}, K={fixed[1]}" if section == "pairwise_sym_kl" else f"N={fixed}"
        title = f"{section} ({shape})"
        time_ax.set(title=f"{title}: fwd+bwd time", xlabel="V", ylabel="ms")
        mem_ax.set(title=f"{title}: peak extra memory", xlabel="V", ylabel="MiB")
        time_ax.legend()
        mem_ax.legend()
    fig.suptitle(f"mcckd kernels on {results['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--plot", help="write a PNG here")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    print_table(results)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
