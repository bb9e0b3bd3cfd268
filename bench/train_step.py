"""Full MCC-KD training steps on real rationale lengths: mcckd against the stacks a user picks.

    python bench/train_step.py [OUT.json] [--shape qwen2.5-0.5b] [--variants mcckd,hf_padded]
    python bench/train_step.py OUT.json --tiny          # any machine: the tiny shape on the CPU

Data (bench/step_data.py): questions whose prompt, rationale and answer lengths are drawn from
bench/lengths.json (teacher rationales), K = 4, in micro-batches of at most 4096 tokens packed
by mcckd's sampler; a step is 4 of them, about 16k real tokens. Providers and levers: the
variants below (bench/step_providers.py). Each variant is timed over the same steps after
warm-up steps (one; two when compiled); a row reports real (non-pad) tokens/s, MFU
(bench/step_models.py states the FLOP convention), the peak of CUDA memory allocated (weights,
gradients and optimizer state included) and the loss of the first micro-batch before training
(the same in every provider: a check that all compute one loss). Rows are merged into OUT.json
by (shape, variant) and written after every variant, so a run cut short keeps what it
measured. A variant that fails gets a row with its error. `--sync-check` adds, for mcckd,
every place a step waits for the GPU (`torch.cuda.set_sync_debug_mode`).
"""
import argparse
import contextlib
import gc
import json
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch._dynamo
import transformers
from common import device_slug
from step_data import LengthDistribution, draw_micro_batches, padded, sequence_lengths
from step_models import PEAK_FLOPS, SHAPES, step_flops, student_config
from step_providers import PROVIDERS
from transformers.models.qwen2 import modeling_qwen2

ROOT = Path(__file__).resolve().parents[1]

# variant -> (provider, lever options)
VARIANTS = {
    "mcckd": ("mcckd", {}),
    "hf_padded": ("hf_padded", {}),
    "liger_padded": ("liger_padded", {}),
    "liger_packed": ("liger_packed", {}),
    "mcckd-cast-per-micro-batch": ("mcckd", {"head_weight_cache": False}),
    "mcckd+liger": ("mcckd", {"liger": True}),
    "mcckd+compile": ("mcckd", {"compile": True}),
    "mcckd+compile+liger": ("mcckd", {"compile": True, "liger": True}),
}
# The four providers first, then the levers; compilation (the slowest to warm up) last.
DEFAULT_VARIANTS = {
    "qwen2.5-0.5b": ["mcckd", "hf_padded", "liger_padded", "liger_packed", "mcckd-cast-per-micro-batch",
                     "mcckd+liger", "mcckd+compile"],
    "qwen2.5-1.5b": list(VARIANTS),
    "tiny": list(VARIANTS),
}


@contextlib.contextmanager
def patches_undone(*namespaces):
    """The attributes of modules and classes as they were on entry, put back on exit: Liger
    patches transformers' Qwen2 module, which would change every model built after it."""
    saved = [(namespace, dict(vars(namespace))) for namespace in namespaces]
    try:
        yield
    finally:
        for namespace, attributes in saved:
            for name in set(vars(namespace)) - set(attributes):
                delattr(namespace, name)
            for name, value in attributes.items():
                if vars(namespace).get(name) is not value:
                    setattr(namespace, name, value)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(provider, steps, warmup, repeats):
    """(seconds of each timed step, peak GiB or None, seconds of the warm-up) over `steps`, cycled."""
    device = provider.device
    started = time.perf_counter()
    for i in range(warmup):
        provider.step(steps[i % len(steps)])
    synchronize(device)
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for i in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            provider.step(steps[i % len(steps)])
            end.record()
            torch.cuda.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            provider.step(steps[i % len(steps)])
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return seconds, peak, warmup_s


def first_loss(provider, micro_batch):
    """The loss of one micro-batch before any step; with gradients enabled, so that a compiled
    model reuses its training graph instead of compiling one without gradients."""
    with provider.autocast():
        return float(provider.loss(micro_batch).detach())


def compile_counters():
    """Graphs, graph breaks and their first reasons from torch._dynamo's counters."""
    counters = torch._dynamo.utils.counters
    breaks = counters["graph_break"]
    return {"unique_graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(breaks.values()),
            "graph_break_reasons": list(breaks)[:5]}


def measure(variant, config, steps, device, args):
    """One row: build the variant, lay its data out, time it."""
    provider_name, levers = VARIANTS[variant]
    if "compile" in levers:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    started = time.perf_counter()
    provider = PROVIDERS[provider_name](config, device, compile_backend=args.compile_backend, **levers)
    data = [[provider.layout(batch).to(device) for batch in step] for step in steps]
    loss = first_loss(provider, data[0][0])
    setup_s = time.perf_counter() - started
    # a compiled model compiles in its first step: one more warm-up step
    warmup = args.warmup + (1 if levers.get("compile") else 0)
    seconds, peak, warmup_s = time_steps(provider, data, warmup, args.repeats)
    timed = [steps[i % len(steps)] for i in range(args.repeats)]
    real = sum(sum(sequence_lengths(b)) for step in timed for b in step)
    flops = sum(step_flops(config, [n for b in step for n in sequence_lengths(b)]) for step in timed)
    row = {
        "provider": provider_name, **provider.info, "loss_first_micro_batch": loss,
        "real_tokens_per_step": real / len(timed), "ms_step": 1e3 * sorted(seconds)[len(seconds) // 2],
        "ms_steps": [1e3 * s for s in seconds], "tokens_per_s": real / sum(seconds),
        "mfu": flops / sum(seconds) / PEAK_FLOPS, "peak_gib": peak, "setup_s": setup_s,
        "warmup_s": warmup_s,
    }
    if provider_name in ("hf_padded", "liger_padded"):
        slots = sum(padded(b).input_ids.numel() for step in timed for b in step)
        row["padded_tokens_per_step"] = slots / len(timed)
    if levers.get("compile"):
        row["compile"] = compile_counters()
    if args.sync_check and variant == "mcckd" and device.type == "cuda":
        row["host_syncs"] = host_syncs(provider, data[0])
    return row


def frame_name(frame):
    """'path:line function', the path from the repository root or the site-packages folder."""
    path = Path(frame.filename)
    path = path.relative_to(ROOT) if path.is_relative_to(ROOT) else frame.filename.split("site-packages/")[-1]
    return f"{path}:{frame.lineno} {frame.name}"


def host_syncs(provider, micro_batches):
    """Where one step waits for the GPU: each synchronising call, grouped by the innermost frame
    of ours (mcckd/, bench/) or, failing that, the innermost Python frame; with a count and a stack."""
    stacks = []

    def keep(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):  # other warnings are not syncs
            return
        frames = traceback.extract_stack()
        stacks.append([frame_name(f) for f in frames if not f.filename.endswith("warnings.py")])

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = keep
        torch.cuda.set_sync_debug_mode("warn")
        try:
            provider.step(micro_batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    sites = {}
    for stack in stacks:
        ours = [frame for frame in stack if frame.startswith(("mcckd/", "bench/"))]
        site = (ours or stack)[-1]
        entry = sites.setdefault(site, {"site": site, "count": 0, "stack": stack[-8:]})
        entry["count"] += 1
    return sorted(sites.values(), key=lambda s: -s["count"])


def environment(args):
    try:
        from importlib.metadata import version

        liger = version("liger-kernel")
    except Exception:  # not installed
        liger = None
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "liger_kernel": liger,
            "lengths": args.lengths, "K": args.k, "micro_batch_tokens": args.micro_batch_tokens,
            "micro_batches_per_step": args.micro_batches, "peak_tflops": PEAK_FLOPS / 1e12,
            "flop_convention": "6 x matmul weights (layers + lm_head) per real token + causal attention "
                               "6 x layers x heads x head_dim x l(l+1) per sequence; bench/step_models.py"}


def write(path, results):
    Path(path).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def run(args):
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {"rows": []}
    results.update(environment(args))
    distribution = LengthDistribution.load(args.lengths)
    for shape in args.shape:
        config = student_config(shape)
        batches = draw_micro_batches(distribution, config.vocab_size, count=args.steps * args.micro_batches,
                                     micro_batch_tokens=args.micro_batch_tokens, K=args.k, seed=0,
                                     scale=args.length_scale)
        steps = [batches[i:i + args.micro_batches] for i in range(0, len(batches), args.micro_batches)]
        for variant in args.variants or DEFAULT_VARIANTS[shape]:
            row = {"shape": shape, "variant": variant, "provider": VARIANTS[variant][0]}
            try:
                with patches_undone(modeling_qwen2, modeling_qwen2.Qwen2ForCausalLM):
                    row.update(measure(variant, config, steps, device, args))
            except Exception as error:  # recorded, and the next variant runs
                row["error"] = f"{type(error).__name__}: {error}"[:2000]
                traceback.print_exc()
            results["rows"] = [r for r in results["rows"] if (r["shape"], r["variant"]) != (shape, variant)]
            results["rows"].append(row)
            write(path, results)
            print(summary_line(row), flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def summary_line(row):
    if "error" in row:
        return f"{row['shape']} {row['variant']}: {row['error'][:200]}"
    peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f} GiB"
    return (f"{row['shape']} {row['variant']:28s} {row['ms_step']:8.1f} ms {row['tokens_per_s']:9.0f} tok/s "
            f"MFU {100 * row['mfu']:5.1f}% peak {peak} loss {row['loss_first_micro_batch']:.4f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?",
                        help="the results JSON, rows merged into it "
                             "(default: bench/results/<gpu>-train-step.json)")
    parser.add_argument("--shape", action="append", choices=SHAPES)
    parser.add_argument("--variants", type=lambda text: text.split(","),
                        help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape on the CPU, short lengths")
    parser.add_argument("--lengths", default="svamp", help="the distribution of bench/lengths.json")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--micro-batches", type=int, default=4, help="per step")
    parser.add_argument("--steps", type=int, default=4, help="distinct steps of data")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps (compiled variants: one more)")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps")
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--sync-check", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape = ["tiny"]
        args.micro_batch_tokens, args.micro_batches, args.steps = 256, 2, 1
        args.warmup, args.repeats, args.length_scale = 1, 1, 0.1
    args.shape = args.shape or ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    args.out = args.out or str(ROOT / "bench" / "results" / f"{device_slug()}-train-step.json")
    unknown = set(args.variants or ()) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    return args


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
