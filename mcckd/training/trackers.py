"""Where a run's metrics go, by name in `train.report_to`:

    jsonl        OUT/metrics.jsonl, one JSON object a line, each line fsynced
    tensorboard  OUT/tensorboard/ (torch.utils.tensorboard)
    wandb        a Weights & Biases run (`pip install -e ".[wandb]"`), its files in OUT/wandb/;
                 its id is kept in OUT/wandb_run_id, so a resumed run continues the same run.
                 WANDB_PROJECT, WANDB_ENTITY and WANDB_MODE (offline) work as usual;
                 train.wandb_project names the project.

Each tracker is built with (out_dir, start_step, config): a resumed run starts at its
checkpoint's step, and a tracker drops what was logged after it (metrics.jsonl cuts those lines,
and a line torn by a crash; TensorBoard purges the steps; W&B keeps the values it has, which the
resumed run logs again unchanged), and logs the run's config where it can.
"""
import dataclasses
import json
import secrets

from mcckd.data.resumable import append_line, complete_lines, replace_lines
from mcckd.errors import InputError

METRICS = "metrics.jsonl"
WANDB_RUN_ID = "wandb_run_id"


def logged_step(line, path, number):
    """The step of one line of metrics.jsonl."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}:{number}: not a line of metrics written by mcckd train") from None


class JsonlTracker:
    """OUT/metrics.jsonl: the lines up to start_step are kept, the rest (and a torn last line) cut."""

    def __init__(self, out_dir, start_step, config):
        path = out_dir / METRICS
        lines = complete_lines(path)
        kept = [line for number, line in lines
                if line.strip() and logged_step(line, path, number) <= start_step]
        if len(kept) < len(lines):
            replace_lines(path, kept)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "ab")

    def write(self, metrics):
        append_line(self.handle, metrics)

    def close(self):
        self.handle.close()


class TensorBoardTracker:
    """OUT/tensorboard/: one scalar per metric and step; the steps after start_step are purged."""

    def __init__(self, out_dir, start_step, config):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(out_dir / "tensorboard", purge_step=start_step + 1)

    def write(self, metrics):
        for name, value in metrics.items():
            if name != "step":
                self.writer.add_scalar(name, value, metrics["step"])

    def close(self):
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run with the run's config; a resumed run continues the run whose id
    OUT/wandb_run_id holds, a fresh run starts a new one."""

    def __init__(self, out_dir, start_step, config):
        try:
            import wandb
        except ImportError:
            raise InputError("config key 'train.report_to' lists wandb, which is not installed: "
                             "pip install wandb (or the mcckd extra: pip install -e \".[wandb]\")") from None
        id_file = out_dir / WANDB_RUN_ID
        if start_step > 0 and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = secrets.token_hex(8)  # W&B ids: letters and digits
            out_dir.mkdir(parents=True, exist_ok=True)
            replace_lines(id_file, [f"{run_id}\n".encode()])
        self.run = wandb.init(project=config.train.wandb_project, name=out_dir.name, id=run_id,
                              resume="allow", dir=str(out_dir), config=dataclasses.asdict(config))

    def write(self, metrics):
        self.run.log({name: value for name, value in metrics.items() if name != "step"}, step=metrics["step"])

    def close(self):
        self.run.finish()


TRACKERS = {"jsonl": JsonlTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}
