"""`mcckd export CHECKPOINT --out DIR`: a checkpoint as a standalone model folder to serve
(`mcckd.models.export`).

    mcckd export runs/gsm8k/run/checkpoints/step-000900 --out exports/gsm8k --dtype bfloat16
    vllm serve exports/gsm8k --served-model-name student
"""
import argparse
import sys

from mcckd.models.dtypes import DTYPES
from mcckd.models.export import DEFAULT_MAX_SHARD_SIZE, export_checkpoint


def add_arguments(parser):
    """Arguments of `mcckd export`."""
    parser.add_argument("checkpoint", help="checkpoint folder: a full model, or LoRA adapters and their base")
    parser.add_argument("--out", required=True, help="folder to write; must not exist or be empty")
    parser.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=True,
                        help="merge a LoRA checkpoint's adapters into its base, one plain model "
                             "(default); --no-merge-lora writes the adapters, for a server's LoRA support")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="dtype of the exported weights (default: the dtype they are stored in)")
    parser.add_argument("--safe-serialization", action=argparse.BooleanOptionalAction, default=True,
                        help="write safetensors (default; transformers 5 writes nothing else)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                        help="split the weights into shards of at most this size (e.g. 5GB, 500MB)")


def run(args):
    """`mcckd export`: write the folder, print where it is."""
    out = export_checkpoint(args.checkpoint, args.out, merge_lora=args.merge_lora, dtype=args.dtype,
                            safe_serialization=args.safe_serialization, max_shard_size=args.max_shard_size)
    print(f"mcckd export: {out} (serve it with e.g. `vllm serve {out}`)", file=sys.stderr)
    return 0
