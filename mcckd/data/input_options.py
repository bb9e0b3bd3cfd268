"""The command-line options that say how to read an input: its fields and its split
(`mcckd prepare`, `mcckd generate`, `mcckd eval`; `mcckd train` takes the config keys
data.question_field and the like)."""
from mcckd.data.records import Fields


def add_input_arguments(parser, *, rationales=True):
    """--question-field, --answer-field, [--rationales-field,] --split."""
    group = parser.add_argument_group(
        "input", "JSON(L), CSV, parquet, a save_to_disk folder or hf:NAME[:CONFIG] (a dataset in the "
                 "local Hugging Face cache); GSM8K's {question, answer: '... #### 72'} is recognised")
    group.add_argument("--question-field", metavar="NAME", help="the field that holds the question")
    group.add_argument("--answer-field", metavar="NAME", help="the field that holds the gold answer")
    if rationales:
        group.add_argument("--rationales-field", metavar="NAME",
                           help="the field that holds the rationales (a list, or one string)")
    group.add_argument("--split", help="the split of a dataset that has several")


def input_fields(options):
    """The Fields named by the options, or by a config section's keys of the same names
    (question_field, answer_field, rationales_field)."""
    return Fields(options.question_field, options.answer_field, getattr(options, "rationales_field", None))
