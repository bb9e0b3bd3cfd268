"""Training: the loop, the objective, distributed runs, the optimizer, logs, checkpoints, config.

    loop.py           train, run_training (the run, top to bottom), train_step (one step)
    objective.py      the student and its fused loss as one module
    distributed.py    torchrun's runtime; DDP and FSDP2 wrapping
    optim.py          AdamW and the warmup-cosine schedule
    run_log.py        running means, metrics.jsonl, TensorBoard
    checkpoint.py     the run folder's layout; saving, finding and restoring checkpoints
    periodic_eval.py  evaluation every eval.every steps
    config.py         the YAML config as dataclasses with defaults
    command.py        `mcckd train`
"""
