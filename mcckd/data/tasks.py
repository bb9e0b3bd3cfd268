"""Tasks: what an answer is, how it is read out of a text, normalised and compared.

A task is a name and a kind, plus a few settings for some kinds:

    numeric   a number: integers, decimals, fractions; `$`, commas and units ignored; equal to 1e-6
    choice    a letter of `choices` ("A-E" unless given: "A-J", "ABCD"), or the text of a choice
              the question lists
    yesno     yes or no (true and false count as yes and no)
    string    the text after the last "answer is" or "Answer:", to the end of its line: exact match
    regex     the group named `answer`, else group 1, of the last match of `pattern`: exact match

String and regex tasks take normalisation rules, applied alike to the answer read out of a text
and to the gold answer: `normalize`, any of lowercase, strip_punctuation, strip_articles (a, an,
the), and `units`, words or symbols dropped at either end of an answer (`[cm, "$"]`). White
space is always trimmed and runs of it made one space.

A user's task is a mapping, in a YAML (or JSON) task file or under the config's `data.task` /
`eval.task`:

    name: mmlu                  # what records and reports call it
    kind: choice
    choices: A-J
    description: the letter of the correct choice   # optional: `{answer_kind}` of `mcckd generate`

The built-in tasks are instances of the same mechanism: gsm8k, svamp, asdiv (numeric), csqa
(choice A-E), strategyqa (yesno). Records carry their task's name; a built-in name resolves by
itself, a user's task needs its definition wherever records are read (`--task-file`, or the
config): `resolve_task`.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from mcckd.errors import InputError

KINDS = ("numeric", "choice", "yesno", "string", "regex")
NORMALIZATION_RULES = ("lowercase", "strip_punctuation", "strip_articles")
TASK_KEYS = ("name", "kind", "choices", "pattern", "normalize", "units", "description")
ANSWER_DESCRIPTIONS = {
    "numeric": "a number",
    "choice": "the letter of the correct choice",
    "yesno": "yes or no",
    "string": "the answer",
    "regex": "the answer",
}
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")
NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
LETTER_RANGE = re.compile(r"([A-Z])-([A-Z])")


@dataclass(frozen=True)
class Task:
    """How the answers of one task are read, normalised and compared (see the module docstring).

    Args:
        name: what records and reports call the task.
        kind: one of KINDS.
        choices: the letters of a choice task, in order ("ABCDE").
        pattern: a regex task's pattern (a group named `answer`, else group 1, is the answer).
        normalize: rules of NORMALIZATION_RULES, for string and regex tasks.
        units: words or symbols dropped at either end of a string or regex task's answer.
        description: the answer, as the teacher's prompt names it (default: by kind).
    """

    name: str
    kind: str
    choices: str = "ABCDE"
    pattern: str | None = None
    normalize: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    description: str | None = None

    @property
    def answer_kind(self):
        """What the answer is, in words: `{answer_kind}` of the teacher's prompt."""
        return self.description or ANSWER_DESCRIPTIONS[self.kind]


BUILTIN_TASKS = {
    task.name: task
    for task in (
        Task("gsm8k", "numeric"),
        Task("svamp", "numeric"),
        Task("asdiv", "numeric"),
        Task("csqa", "choice", choices="ABCDE"),
        Task("strategyqa", "yesno"),
    )
}
TASKS = tuple(BUILTIN_TASKS)


def resolve_task(spec, where="task"):
    """The Task `spec` names or defines: a Task, a built-in name, the path of a task file
    (.yaml, .yml, .json) or a mapping. InputError (a ValueError) prefixed with `where`."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, dict):
        return task_from_mapping(spec, where)
    if isinstance(spec, str):
        if spec in BUILTIN_TASKS:
            return BUILTIN_TASKS[spec]
        if spec.endswith(TASK_FILE_SUFFIXES):
            return load_task_file(spec)
        raise InputError(f"{where}: unknown task {spec!r}: expected one of {', '.join(TASKS)}, "
                         f"a task file ({', '.join(TASK_FILE_SUFFIXES)}) or a task mapping")
    raise InputError(f"{where}: expected a task name or a mapping, got {spec!r}")


def load_task_file(path):
    """The Task defined in a YAML or JSON file; InputError naming the file and the key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the task file: {error}") from error
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"{path}: the task file is not valid YAML: {error}") from None
    return task_from_mapping(mapping, str(path))


def task_from_mapping(mapping, where):
    """The Task a mapping defines; every error names `where` and the key."""
    if not isinstance(mapping, dict):
        raise InputError(f"{where}: a task must be a mapping with the keys {', '.join(TASK_KEYS)}, "
                         f"got {mapping!r}")
    unknown = [key for key in mapping if key not in TASK_KEYS]
    if unknown:
        raise InputError(f"{where}: unknown task key {unknown[0]!r}; known keys: {', '.join(TASK_KEYS)}")
    name, kind = mapping.get("name"), mapping.get("kind")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError(f"{where}: 'name' must be a word (letters, digits, '_', '-', '.'), got {name!r}")
    if name in BUILTIN_TASKS:
        raise InputError(f"{where}: 'name' {name!r} is a built-in task: give yours another name")
    if kind not in KINDS:
        raise InputError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    check_kind_keys(mapping, kind, where)
    description = mapping.get("description")
    if description is not None and (not isinstance(description, str) or not description.strip()):
        raise InputError(f"{where}: 'description' must be a non-empty string, got {description!r}")
    return Task(
        name=name,
        kind=kind,
        choices=choice_letters(mapping.get("choices", "A-E"), where),
        pattern=answer_pattern(mapping.get("pattern"), where) if kind == "regex" else None,
        normalize=tuple(string_list(mapping, "normalize", where, NORMALIZATION_RULES)),
        units=tuple(string_list(mapping, "units", where)),
        description=description,
    )


def check_kind_keys(mapping, kind, where):
    """InputError for a key the kind does not take, or a regex task without its pattern."""
    takes = {"choices": ("choice",), "pattern": ("regex",), "normalize": ("string", "regex"),
             "units": ("string", "regex")}
    for key, kinds in takes.items():
        if key in mapping and kind not in kinds:
            raise InputError(f"{where}: {kind} tasks take no {key!r} (only {' and '.join(kinds)} tasks do)")
    if kind == "regex" and "pattern" not in mapping:
        raise InputError(f"{where}: a regex task needs a 'pattern' with a capture group")


def choice_letters(spec, where):
    """The letters a choice task's `choices` gives: "A-J" (a range), "ABCD" or [A, B, C, D]."""
    text = "".join(spec) if isinstance(spec, list) and all(isinstance(x, str) for x in spec) else spec
    if isinstance(text, str):
        text = text.replace(" ", "").replace(",", "")
        span = LETTER_RANGE.fullmatch(text)
        if span and span.group(1) < span.group(2):
            text = "".join(chr(code) for code in range(ord(span.group(1)), ord(span.group(2)) + 1))
        if re.fullmatch(r"[A-Z]{2,}", text) and len(set(text)) == len(text):
            return text
    raise InputError(f"{where}: 'choices' must be two or more distinct capital letters, as a range "
                     f"('A-J') or listed ('ABCD'), got {spec!r}")


def answer_pattern(pattern, where):
    """A regex task's pattern, checked: it compiles and has a capture group."""
    if not isinstance(pattern, str):
        raise InputError(f"{where}: 'pattern' must be a string, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise InputError(f"{where}: 'pattern' is not a valid regular expression: {error}") from None
    if compiled.groups < 1:
        raise InputError(f"{where}: 'pattern' needs a capture group around the answer, got {pattern!r}")
    return pattern


def string_list(mapping, key, where, allowed=None):
    """mapping[key] as a list of non-empty strings (of `allowed` when given); [] when absent."""
    values = mapping.get(key, [])
    values = [values] if isinstance(values, str) else values
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise InputError(f"{where}: {key!r} must be a list of non-empty strings, got {mapping[key]!r}")
    for value in values:
        if allowed is not None and value not in allowed:
            raise InputError(f"{where}: {key!r}: unknown rule {value!r}; known: {', '.join(allowed)}")
    return values


def add_task_arguments(parser, *, per_data=False):
    """`--task NAME` or `--task-file FILE`, one of them required; with `per_data` either may be
    repeated, once for all --data files or once per file."""
    group = parser.add_mutually_exclusive_group(required=True)
    repeat = {"action": "append"} if per_data else {}
    each = " (one for all --data, or one per --data)" if per_data else ""
    group.add_argument("--task", choices=TASKS, **repeat,
                       help=f"a built-in task: how answers are read and compared{each}")
    group.add_argument("--task-file", metavar="TASK.yaml", **repeat,
                       help="a task of your own: YAML with name, kind (numeric, choice, yesno, string, "
                            f"regex) and its settings (choices, pattern, normalize, units){each}")


def task_from_args(args):
    """The Task of `add_task_arguments`' options."""
    return BUILTIN_TASKS[args.task] if args.task else load_task_file(args.task_file)


def tasks_from_args(args):
    """The Tasks of `add_task_arguments(per_data=True)`' options, in the order given."""
    if args.task:
        return [BUILTIN_TASKS[name] for name in args.task]
    return [load_task_file(path) for path in args.task_file]
