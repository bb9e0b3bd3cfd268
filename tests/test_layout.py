"""The package's layout as docs/design.md describes it: every module listed there exists and
every module is listed, none is over 400 lines, every file a docstring names exists, and
importing mcckd registers nothing and loads nothing heavy."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"


def layout_block():
    """The lines of the first fenced block of docs/design.md (the tree)."""
    return DESIGN.read_text(encoding="utf-8").split("```")[1].splitlines()


def listed_modules():
    """mcckd/... paths of the .py files the tree lists, from its indentation."""
    paths, stack = set(), []
    for line in layout_block():
        name = line.strip().split()[0] if line.strip() else ""
        depth = (len(line) - len(line.lstrip())) // 2
        if not name:
            continue
        del stack[depth:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        elif name.endswith(".py") and stack and stack[0] == "mcckd":
            paths.add("/".join([*stack, name]))
    return paths


def package_modules():
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "mcckd").rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}


def test_design_document_lists_every_module_and_nothing_else():
    listed, present = listed_modules(), package_modules()
    assert not present - listed, f"modules missing from docs/design.md: {sorted(present - listed)}"
    assert not listed - present, f"docs/design.md lists modules that do not exist: {sorted(listed - present)}"


def test_no_module_is_over_400_lines():
    long = {path: n for path in package_modules() if (n := len((ROOT / path).read_text().splitlines())) > 400}
    assert not long


def test_every_file_a_docstring_names_exists():
    reference = re.compile(r"(?:mcckd|docs|bench|configs|examples)/[\w/.-]+\.\w+")
    named = {(path, ref) for path in package_modules() | {"mcckd/__init__.py"}
             for ref in reference.findall((ROOT / path).read_text())}
    missing = [(path, ref) for path, ref in named if not (ROOT / ref).exists()]
    assert named and not missing


def run_python(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_mcckd_is_light_and_the_public_names_resolve():
    code = ("import sys, mcckd; light = 'torch' not in sys.modules; "
            "from mcckd import pairwise_sym_kl, fused_linear_mcc_loss, load_student, train, pack_questions; "
            "print(light, pairwise_sym_kl.__module__, load_student.__module__)")
    assert run_python(code) == "True mcckd.ops.pairwise_kl mcckd.models.student"


def test_attention_backends_register_on_demand_not_on_import():
    code = ("from transformers import AttentionInterface\n"
            "import mcckd.models.attention as a, mcckd.models.student\n"
            "before = [n for n in a.REGISTERED_NAMES.values() if n in AttentionInterface._global_mapping]\n"
            "a.register_attention_backends(); a.register_attention_backends()\n"
            "after = [n for n in a.REGISTERED_NAMES.values() if n in AttentionInterface._global_mapping]\n"
            "print(len(before), len(after))")
    assert run_python(code) == "0 4"
