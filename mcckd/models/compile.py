"""Regional compilation: each decoder layer compiled on its own (`train.compile: true`).

All decoder layers of a model run the same code, so compiling them one by one, rather than the
whole model, costs about one layer's compilation: torch.compile treats a module's parameters as
inputs of the graph, and the graph of the first layer serves the others. The embedding, the
final norm and the fused loss stay eager. Shapes are dynamic from the start because packed
micro-batches differ in length: static shapes would compile again for every new length.
`nn.Module.compile` compiles in place, so parameter names, checkpoints, DDP, FSDP2 and peft
see the same modules as before.
"""
from mcckd.models.wrappers import transformer_blocks


def compile_decoder_layers(model, *, backend: str = "inductor") -> int:
    """Compile every decoder layer of `model` (peft-wrapped or not) in place.

    Args:
        model: a transformers student.
        backend: the torch.compile backend ("inductor"; "aot_eager" traces without code
            generation).

    Returns:
        How many layers were compiled; ValueError when the model names no layer class in
        `_no_split_modules`.
    """
    layers = transformer_blocks(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} lists no decoder layer class in _no_split_modules: "
                         "nothing to compile")
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    return len(layers)
