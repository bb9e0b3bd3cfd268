"""Training: the loop, the objective, distributed runs, the optimizer, logs, checkpoints, config.

    loop.py           train, run_training (the run, top to bottom), train_step (one step)
    objective.py      the student and its fused loss as one module
    normalization.py  each micro-batch's share of the step's CE and KL means
    distributed.py    torchrun's runtime; DDP and FSDP2 wrapping
    optim.py          AdamW and the warmup-cosine schedule
    run_log.py        the meter (running means) and the run's trackers
    trackers.py       metrics.jsonl, TensorBoard, Weights & Biases
    checkpoint.py     the run folder's layout; writing checkpoints durably, finding them
    manifest.py       a checkpoint's manifest and the check that it is whole
    resume.py         which checkpoint a run continues from; restoring it
    periodic_eval.py  evaluation every eval.every steps
    config.py         the YAML config as dataclasses with defaults
    validation.py     the checks of every config key
    command.py        `mcckd train`
"""
