"""`mcckd train`: the command line of the training loop.

    mcckd train --config configs/tiny_cpu.yaml [--set train.lr=1e-4] [--resume | --auto-resume]
    torchrun --nproc_per_node 8 -m mcckd train --config configs/gpu.yaml --auto-resume
"""
from transformers.utils import logging as transformers_logging

from mcckd.training.config import load_config
from mcckd.training.loop import train


def add_arguments(parser):
    """Arguments of `mcckd train`."""
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-5 (repeatable)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_const", const=True, default=False,
                        help="continue from the newest checkpoint in train.out_dir that verifies "
                             "(an error when there is none)")
    resume.add_argument("--auto-resume", dest="resume", action="store_const", const="auto",
                        help="continue when train.out_dir has a checkpoint, else start a fresh run "
                             "(for requeue scripts)")


def run(args):
    """`mcckd train`: train, print the final checkpoint's folder."""
    transformers_logging.disable_progress_bar()  # our bar owns the terminal
    result = train(load_config(args.config, args.set), resume=args.resume)
    if result["rank"] == 0:
        print(f"final checkpoint: {result['checkpoint']}")
    return 0
