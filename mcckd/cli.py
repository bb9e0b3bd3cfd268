"""The `mcckd` command: one sub-command per stage, each defined in its own module.

A sub-command module provides `add_arguments(parser)` and `run(args) -> int` (the exit code).
Only the chosen sub-command's module is imported, so `mcckd prepare` never loads transformers.
"""
import argparse
import importlib
import sys

from mcckd.errors import InputError

# name -> (module, one-line help)
COMMANDS = {
    "prepare": ("mcckd.data.prepare", "choose the K most diverse correct teacher rationales per question"),
    "eval": (
        "mcckd.evaluation.command",
        "answer a task's questions with a student (in-process or through a server), report its accuracy",
    ),
    "generate": (
        "mcckd.teacher.generate",
        "sample teacher rationales from a chat-completions server or a local model",
    ),
    "train": ("mcckd.training.command", "train a student with MCC-KD (torchrun for several GPUs)"),
    "export": (
        "mcckd.models.export_command",
        "write a checkpoint as a standalone model folder to serve (LoRA merged, dtype, generation config)",
    ),
    "demo": (
        "mcckd.demo.command",
        "MCC-KD against plain CE on a synthetic task, end to end on a CPU in minutes",
    ),
}


def build_parser(argv):
    """The parser; the arguments of the sub-command named in argv[0] are filled in."""
    parser = argparse.ArgumentParser(
        prog="mcckd", description="Multi-CoT Consistent Knowledge Distillation (MCC-KD)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module_name=module_name)
        if argv[:1] == [name]:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv=None):
    """Entry point of `mcckd` and `python -m mcckd`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return importlib.import_module(args.module_name).run(args)
    except InputError as error:
        print(f"mcckd: error: {error}", file=sys.stderr)
        return 2
