"""The optional fast paths of a student: Liger-Kernel's layer kernels (`model.liger`) and
regional compilation of the decoder layers (`train.compile`), and how build_student applies them."""
import sys

import pytest
import torch
import torch._dynamo
from transformers import AutoModelForCausalLM, Qwen2Config

from mcckd.data import Record
from mcckd.errors import InputError
from mcckd.models.build import build_student
from mcckd.models.compile import compile_decoder_layers
from mcckd.models.liger import apply_liger_kernels
from mcckd.models.packed import forward_packed
from mcckd.models.student import apply_lora, load_student
from mcckd.models.wrappers import transformer_blocks
from mcckd.training.config import Config, ModelConfig, TrainConfig

FIELDS = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def tiny_student():
    torch.manual_seed(0)
    return load_student(Qwen2Config(**FIELDS), attn_backend="sdpa", device="cpu").model


class PatchRecorder:
    """Stands in for a Liger patch function with the given keyword arguments; records its calls."""

    def __init__(self, *names):
        self.calls = []
        self.names = names

    def __call__(self, **kwargs):
        self.calls.append(kwargs)

    @property
    def __signature__(self):
        import inspect

        params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in self.names]
        return inspect.Signature(params)


@pytest.fixture
def liger_table(monkeypatch):
    monkey_patch = pytest.importorskip("liger_kernel.transformers.monkey_patch")
    table = dict(monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN)
    monkeypatch.setattr(monkey_patch, "MODEL_TYPE_TO_APPLY_LIGER_FN", table)
    return table


def test_liger_patches_the_model_types_layers_and_none_of_its_losses(liger_table):
    recorder = PatchRecorder("rope", "cross_entropy", "fused_linear_cross_entropy", "rms_norm", "swiglu",
                             "model")
    liger_table["qwen2"] = recorder
    model = tiny_student()
    apply_liger_kernels(model)
    assert recorder.calls == [{"model": model, "rope": True, "rms_norm": True, "swiglu": True,
                               "cross_entropy": False, "fused_linear_cross_entropy": False}]


def test_liger_passes_only_the_switches_a_patch_function_has_and_unwraps_peft(liger_table):
    recorder = PatchRecorder("rope", "rms_norm", "model")  # e.g. a model type with a GeGLU MLP
    liger_table["qwen2"] = recorder
    model = tiny_student()
    wrapped = apply_lora(model, {"r": 2, "target_modules": ["q_proj"]})
    apply_liger_kernels(wrapped)
    assert recorder.calls == [{"model": model, "rope": True, "rms_norm": True}]


def test_liger_for_a_model_type_it_does_not_know_is_a_config_error(liger_table):
    del liger_table["qwen2"]
    with pytest.raises(InputError, match="model.liger.*'qwen2'"):
        apply_liger_kernels(tiny_student())


def test_liger_not_installed_is_a_config_error_that_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)
    with pytest.raises(InputError, match=r"model.liger.*pip install -e \"\.\[liger\]\""):
        apply_liger_kernels(tiny_student())


def packed_inputs():
    lengths = [5, 9, 3]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, FIELDS["vocab_size"], (sum(lengths),), generator=generator)
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return input_ids, cu_seqlens, max(lengths)


def hidden_and_gradients(model):
    input_ids, cu_seqlens, max_seqlen = packed_inputs()
    hidden = forward_packed(model, input_ids, cu_seqlens, max_seqlen=max_seqlen)
    hidden.square().sum().backward()
    return hidden.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_compiled_decoder_layers_give_the_eager_hidden_states_and_gradients():
    """In float64: eager attention on a CPU goes sequence by sequence and compiled attention
    through the dense mask, whose float32 roundings differ by ~1e-5 after two layers."""
    eager = hidden_and_gradients(tiny_student().double())
    model = tiny_student().double()
    assert compile_decoder_layers(model, backend="aot_eager") == FIELDS["num_hidden_layers"]
    assert all(layer._compiled_call_impl is not None for layer in transformer_blocks(model))
    compiled = hidden_and_gradients(model)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_one_compiled_graph_serves_every_layer_and_every_length():
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    model = AutoModelForCausalLM.from_config(Qwen2Config(**{**FIELDS, "num_hidden_layers": 3}),
                                             attn_implementation="sdpa")
    compile_decoder_layers(model, backend="eager")
    for length in (9, 13):
        generator = torch.Generator().manual_seed(length)
        ids = torch.randint(FIELDS["vocab_size"], (1, length), generator=generator)
        model.model(input_ids=ids, use_cache=False).last_hidden_state.sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


def test_compiling_a_model_that_names_no_layer_class_is_an_error():
    model = tiny_student()
    model._no_split_modules = []
    with pytest.raises(ValueError, match="_no_split_modules"):
        compile_decoder_layers(model)


def build(tmp_path, liger=False, compile=False):
    config = Config(model=ModelConfig(config={"model_type": "qwen2", **FIELDS}, liger=liger),
                    train=TrainConfig(compile=compile))
    records = [Record("q0", "svamp", "How many pens?", "5", ["2 + 3 = 5"])]
    return build_student(config, records, "cpu", None, tmp_path, 0)[0].model


def test_build_student_compiles_the_decoder_layers_when_train_compile_is_set(tmp_path):
    plain, compiled = transformer_blocks(build(tmp_path)), transformer_blocks(build(tmp_path, compile=True))
    assert plain and all(layer._compiled_call_impl is None for layer in plain)
    assert compiled and all(layer._compiled_call_impl is not None for layer in compiled)


def test_build_student_with_liger_on_a_cpu_is_a_config_error(tmp_path):
    with pytest.raises(InputError, match="model.liger.*CUDA"):
        build(tmp_path, liger=True)
