"""Benchmark results as short tables, and optionally as plots.

`python bench/report.py RESULTS.json [--plot OUT.png]`, RESULTS.json being either

- the kernel benchmarks' (bench/results/<gpu>.json): per shape, each provider's time and peak
  memory, its time over mcckd's, its peak memory over eager torch's, and (pairwise) the share of
  the copy bandwidth measured in the same run for mcckd's rows;
- or bench/train_step.py's (bench/results/<gpu>-train-step.json): per shape, each variant's
  real tokens/s, its ratio to the best peer, MFU, peak memory, padding and first loss, then the
  goals (mcckd >= 1.3x the best peer at no more memory, >= 1.5x the padded HF step, >= 45% MFU
  at the 1.5B shape).
"""
import argparse
import json
from collections import defaultdict

SHAPE_KEYS = {
    "pairwise_sym_kl": ("G", "K", "V", "dtype"),
    "fused_linear_mcc": ("N", "d", "V", "G", "K", "dtype"),
}
PEERS = ("hf_padded", "liger_padded", "liger_packed")
GOALS = {"over_best_peer": 1.3, "over_padded": 1.5, "mfu_1.5b": 0.45}


def by_shape(rows, keys):
    shapes = defaultdict(dict)
    for row in rows:
        shapes[tuple(row[k] for k in keys)][row["provider"]] = row
    return shapes


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def kernel_cell(name, row, ours, eager_peak):
    ms, peak = row.get("ms_fwd_bwd"), row.get("peak_mb")
    speedup = f" x{ms / ours:.2f}" if ours and ms and name != "mcckd" else ""
    relative = peak is not None and eager_peak and name != "torch"
    memory = f" ({peak / eager_peak:.3f} of eager)" if relative else ""
    return f"{name} {fmt(ms, '.3f')} ms {fmt(peak, '.0f')} MB{memory}{speedup}"


def print_kernel_table(results):
    copy = results.get("copy_gbps")
    print(f"{results['gpu']}, torch {results['torch']}, triton {results['triton']}, "
          f"copy {fmt(copy, '.0f')} GB/s")
    for section, keys in SHAPE_KEYS.items():
        for shape, providers in by_shape(results.get(section, []), keys).items():
            ours = providers.get("mcckd", {}).get("ms_fwd_bwd")
            eager_peak = providers.get("torch", {}).get("peak_mb")
            cells = [kernel_cell(name, row, ours, eager_peak) for name, row in sorted(providers.items())]
            shares = [f"{name} {100 * row['gbps'] / copy:.0f}%" for name, row in sorted(providers.items())
                      if name.startswith("mcckd") and row.get("gbps") and copy]
            share = f" | of copy: {', '.join(shares)}" if shares else ""
            label = " ".join(f"{k}={v}" for k, v in zip(keys, shape))
            print(f"{section} {label}: " + "; ".join(cells) + share)


def best(rows, names):
    """The fastest row among `names` that ran (no error), or None."""
    candidates = [r for r in rows if r.get("provider") in names and "error" not in r]
    return max(candidates, key=lambda r: r["tokens_per_s"], default=None)


def train_goals(shape, rows):
    """Lines saying, for one shape, where the best mcckd variant stands against each goal."""
    ours, peer = best(rows, ("mcckd",)), best(rows, PEERS)
    padded = next((r for r in rows if r["variant"] == "hf_padded" and "error" not in r), None)
    lines = []
    if ours and peer:
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
        lean = ours["peak_gib"] is None or ours["peak_gib"] <= peer["peak_gib"]
        lines.append(f"  {ours['variant']} / best peer {peer['variant']}: {ratio:.2f}x "
                     f"(goal {GOALS['over_best_peer']}x at no more memory: "
                     f"{'met' if ratio >= GOALS['over_best_peer'] and lean else 'not met'})")
    if ours and padded:
        ratio = ours["tokens_per_s"] / padded["tokens_per_s"]
        lines.append(f"  {ours['variant']} / hf_padded: {ratio:.2f}x (goal {GOALS['over_padded']}x: "
                     f"{'met' if ratio >= GOALS['over_padded'] else 'not met'})")
    if ours and shape == "qwen2.5-1.5b":
        lines.append(f"  MFU {100 * ours['mfu']:.1f}% (goal {100 * GOALS['mfu_1.5b']:.0f}%: "
                     f"{'met' if ours['mfu'] >= GOALS['mfu_1.5b'] else 'not met'})")
    return lines


def print_train_table(results):
    print(f"{results['gpu']}, torch {results['torch']}, transformers {results['transformers']}, "
          f"liger-kernel {results.get('liger_kernel')}; lengths: {results['lengths']}, "
          f"{results['micro_batches_per_step']} micro-batches of <= {results['micro_batch_tokens']} tokens "
          "a step")
    shapes = defaultdict(list)
    for row in results["rows"]:
        shapes[row["shape"]].append(row)
    for shape, rows in shapes.items():
        peer = best(rows, PEERS)
        print(f"{shape}:")
        for row in rows:
            if "error" in row:
                print(f"  {row['variant']:28s} error: {row['error'][:120]}")
                continue
            ratio = f"x{row['tokens_per_s'] / peer['tokens_per_s']:.2f}" if peer else "-"
            slots = row.get("padded_tokens_per_step")
            padding = f" padded x{slots / row['real_tokens_per_step']:.2f}" if slots else ""
            print(f"  {row['variant']:28s} {row['tokens_per_s']:9.0f} tok/s {ratio:>6s} of best peer, "
                  f"MFU {100 * row['mfu']:4.1f}%, peak {fmt(row['peak_gib'], '.1f')} GiB, "
                  f"{row['ms_step']:.1f} ms a step of {row['real_tokens_per_step']:.0f} tokens{padding}, "
                  f"loss {row['loss_first_micro_batch']:.4f} [{row.get('attention')}]")
        for line in train_goals(shape, rows):
            print(line)


def plot_kernels(results, path):
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
            series = sorted((r["V"], r["ms_fwd_bwd"], r.get("peak_mb"))
                            for r in rows if r["provider"] == provider and pick(r))
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


def plot_train(results, path):
    """Real tokens/s and peak memory of every variant, one row of panels per shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = defaultdict(list)
    for row in results["rows"]:
        if "error" not in row:
            shapes[row["shape"]].append(row)
    fig, axes = plt.subplots(len(shapes), 2, figsize=(12, 4.5 * len(shapes)), squeeze=False)
    for (speed_ax, mem_ax), (shape, rows) in zip(axes, shapes.items()):
        names = [r["variant"] for r in rows]
        colours = ["tab:blue" if r["provider"] == "mcckd" else "tab:gray" for r in rows]
        speed_ax.barh(names, [r["tokens_per_s"] for r in rows], color=colours)
        mem_ax.barh(names, [r["peak_gib"] or 0 for r in rows], color=colours)
        speed_ax.set(title=f"{shape}: real tokens/s", xlabel="tokens/s")
        mem_ax.set(title=f"{shape}: peak memory", xlabel="GiB")
        for ax in (speed_ax, mem_ax):
            ax.invert_yaxis()
    fig.suptitle(f"MCC-KD training step on {results['gpu']} ({results['lengths']} lengths)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--plot", help="write a PNG here")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    if "providers" in results:
        parser.error(f"{args.results} holds the fixed-length step of an earlier bench/train_step.py: "
                     "run it again")
    train = "rows" in results
    (print_train_table if train else print_kernel_table)(results)
    if args.plot:
        (plot_train if train else plot_kernels)(results, args.plot)


if __name__ == "__main__":
    main()
