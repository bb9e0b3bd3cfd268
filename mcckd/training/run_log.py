"""What a run logs: the running means of its metrics, metrics.jsonl and TensorBoard."""
import json
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist


class Meter:
    """Sums of the metrics since the last log line, reduced over processes when read."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums, self.micro_batches, self.tokens, self.started = 0, 0, 0, time.perf_counter()

    def add(self, sums, micro_batches, tokens):
        self.sums = self.sums + sums
        self.micro_batches += micro_batches
        self.tokens += tokens

    def read(self, rt):
        """{"loss", "ce", "kl"}: means over all micro-batches since the last read; tokens/s."""
        counts = torch.tensor([self.micro_batches, self.tokens], dtype=torch.float64, device=self.device)
        totals = torch.cat([self.sums.double(), counts])
        if rt.world_size > 1:
            dist.all_reduce(totals)
        loss, ce, kl, micro_batches, tokens = totals.tolist()
        seconds = time.perf_counter() - self.started
        self.reset()
        return {"loss": loss / micro_batches, "ce": ce / micro_batches, "kl": kl / micro_batches,
                "tokens_per_s": tokens / seconds}


def peak_memory(device):
    """{"peak_mem_mb"}: CUDA's peak allocated memory, or the process's peak resident set."""
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class RunLog:
    """OUT/metrics.jsonl and TensorBoard scalars, written by rank 0; resumed runs drop the
    entries after their checkpoint's step, which the resumed run writes again."""

    def __init__(self, out_dir, start_step, tensorboard, *, enabled):
        self.path, self.writer, self.enabled = Path(out_dir) / "metrics.jsonl", None, enabled
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(Path(out_dir) / "tensorboard", purge_step=start_step + 1)

    def write(self, metrics):
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "step":
                    self.writer.add_scalar(name, value, metrics["step"])

    def close(self):
        if self.writer is not None:
            self.writer.close()
