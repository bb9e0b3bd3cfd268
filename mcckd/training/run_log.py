"""What a run logs: the running means of its metrics, and the trackers they go to."""
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mcckd.training.trackers import TRACKERS


class Meter:
    """This process's sums of its parts of each step's [loss, ce, kl] since the last log line,
    the steps and the tokens; read, they are reduced over processes into the mean over those
    steps of each step's loss, ce and kl. Its state goes into every checkpoint, so the first
    line after a resume is the line the run never stopped would have written."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums = torch.zeros(3, device=self.device)
        self.steps, self.tokens, self.started = 0, 0, time.perf_counter()

    def add(self, sums, tokens):
        """One step: `sums` [3] this process's part of its loss, ce and kl; `tokens` its tokens."""
        self.sums = self.sums + sums
        self.steps += 1
        self.tokens += tokens

    def read(self, rt):
        """{"loss", "ce", "kl"}: means over the steps since the last read; tokens/s. Resets."""
        counts = torch.tensor([self.tokens], dtype=torch.float64, device=self.device)
        totals = torch.cat([self.sums.double(), counts])
        if rt.world_size > 1:
            dist.all_reduce(totals)
        loss, ce, kl, tokens = totals.tolist()
        steps, seconds = max(self.steps, 1), time.perf_counter() - self.started
        self.reset()
        return {"loss": loss / steps, "ce": ce / steps, "kl": kl / steps, "tokens_per_s": tokens / seconds}

    def state_dict(self):
        """The sums, steps and tokens since the last read (CPU), for a checkpoint."""
        return {"sums": self.sums.cpu(), "steps": self.steps, "tokens": self.tokens}

    def load_state_dict(self, state):
        """Continue from `state_dict()`; the throughput clock restarts now."""
        self.reset()
        self.sums, self.steps, self.tokens = state["sums"].to(self.device), state["steps"], state["tokens"]


def peak_memory(device):
    """{"peak_mem_mb"}: CUDA's peak allocated memory, or the process's peak resident set."""
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class RunLog:
    """The trackers of `train.report_to` (`trackers.py`), written by rank 0 only.

    A resumed run starts at its checkpoint's step: each tracker drops or overwrites what was
    logged after it, which the resumed run logs again with the same values."""

    def __init__(self, out_dir, start_step, config, *, enabled):
        names = config.train.report_to if enabled else []
        self.trackers = [TRACKERS[name](Path(out_dir), start_step, config) for name in names]

    def write(self, metrics):
        """Log {"step", name: value, ...} to every tracker."""
        for tracker in self.trackers:
            tracker.write(metrics)

    def close(self):
        for tracker in self.trackers:
            tracker.close()
