"""The prompt format `mcckd eval` answers with: the one the student was trained on.

A training run writes its resolved config to OUT/config.yaml and its checkpoints to
OUT/checkpoints/step-*; the data section's keys format, prompt, answer_sentence and system are
its prompt format. `mcckd eval --model DIR` reads them from DIR/config.yaml, else from the run
folder that holds DIR. The options --format, --system and --prompt-template replace the run's
format whole (a plain format with the run's system message would be no format at all); without
a run config or options, the format is plain.
"""
from pathlib import Path

import yaml

from mcckd.data.prompts import FORMATS, PromptFormat, format_from_config, prompt_problem
from mcckd.errors import InputError

RUN_CONFIG = "config.yaml"


def add_prompt_arguments(parser):
    """--format, --system, --prompt-template."""
    group = parser.add_argument_group(
        "prompt", "default: the training run's (config.yaml in the checkpoint's folder or its run's)")
    group.add_argument("--format", choices=FORMATS, help="plain, or chat: the tokenizer's chat template")
    group.add_argument("--system", help="the system message of the chat format")
    group.add_argument("--prompt-template", metavar="TEXT",
                       help="the prompt (plain) or user message (chat), with {question}")


def run_config_path(checkpoint):
    """The config.yaml of the run a checkpoint folder belongs to, or None."""
    checkpoint = Path(checkpoint)
    candidates = [checkpoint / RUN_CONFIG]
    if checkpoint.parent.name == "checkpoints":
        candidates.append(checkpoint.parent.parent / RUN_CONFIG)
    return next((path for path in candidates if path.is_file()), None)


def eval_prompt_format(checkpoint, args):
    """(PromptFormat, where it came from): the options', the run's, or plain."""
    if args.format is not None or args.system is not None or args.prompt_template is not None:
        problem = prompt_problem(args.prompt_template)
        if problem:
            raise InputError(f"--prompt-template {problem}")
        if args.system is not None and args.format != "chat":
            raise InputError("--system is the system message of --format chat")
        return PromptFormat(args.format or "plain", args.prompt_template, system=args.system), "the options"
    path = run_config_path(checkpoint)
    if path is None:
        return PromptFormat(), "the default: no run config.yaml beside the checkpoint"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"{path}: cannot read the run's config: {error}") from None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the run's config has no data section")
    try:
        return format_from_config(data), str(path)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
