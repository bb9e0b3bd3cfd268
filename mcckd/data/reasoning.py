r"""A reasoning teacher's output: think blocks, `\boxed{}` and `####` answers, LaTeX, markdown.

Think blocks. `<think>...</think>` (or `<thinking>`) holds a teacher's reasoning. Its answer is
read from the text after the last closing tag, and from inside the block only when that text
states none. A block that opens and never closes (the output was cut off) states no answer.
What a training rationale keeps of the block (`THINK_MODES`):

    keep    the output as written, the block and its tags included
    unwrap  the tags removed: the reasoning inside the block, then the text after it
    strip   the block removed: the text after it alone ("" when there is none)

Final statements. The last `\boxed{...}` (or `\fbox{...}`; braces nest to any depth) and a
GSM8K `#### N` line state the answer outright; the later of the two counts.

LaTeX in an answer becomes plain text: `\frac{3}{4}`, `\dfrac`, `\tfrac` -> `3/4` (a mixed
number `2\frac{1}{2}` -> `5/2`), `\text{ cm}` -> ` cm`, `\$` -> `$`, `\%` -> `%`, `1{,}200` ->
`1,200`, spacing commands -> a space, `^\circ` and `\left`/`\right` dropped, other braces
removed. Markdown emphasis (`**B**`, `__B__`, `*B*`) is removed.

A rationale's closing answer statements ("Therefore, the answer is 18.", "So the final answer
is (C).", "The correct option is (B).", a line that holds only a `\boxed{}`, `#### 18`, an
"Answer: X" or a "**Final Answer**" line, a last line that is only the answer: `**No**`, `(B)`,
`18`) are stripped: the training text appends its own fixed answer sentence (docs/design.md,
"The common answer span").
"""
import re

THINK_MODES = ("keep", "unwrap", "strip")
THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
THINK_TAG = re.compile(r"</?think(?:ing)?>", re.IGNORECASE)

BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
FOUR_HASHES = re.compile(r"^[ \t]*####[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)

MIXED_NUMBER = re.compile(r"(?<![\d.,])(\d+)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree\b")
THOUSANDS_SPACE = re.compile(r"(?<=\d)\\[,!]\s*(?=\d{3}(?!\d))")
CONTROL = re.compile(r"\\([A-Za-z]+|.)", re.DOTALL)
LATEX_MARKUP = re.compile(r"[\\{}]")  # what convert_latex acts on: commands and braces
UNWRAPPED = {"text", "textbf", "textit", "textrm", "textup", "mathrm", "mathbf", "mathit", "mathsf",
             "mbox", "emph", "operatorname", "boxed", "fbox"}
FRACTIONS = {"frac", "dfrac", "tfrac", "cfrac"}
DROPPED = {"left", "right", "big", "Big", "bigl", "bigr", "displaystyle", "circ", "!"}
SPACES = {",", ";", ":", " ", "quad", "qquad"}
SIMPLE_OPERAND = re.compile(r"-?[\w.]+")

EMPHASIS = (
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"),
    re.compile(r"__(?=\S)(.+?)(?<=\S)__"),
    re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"),
)

# The closing statements `strip_closing_answer` removes, last first.
CLOSING_ANSWER_SENTENCE = re.compile(
    r"(?:(?:\b(?:therefore|thus|hence|so|and)\b,?\s+)?the\s+(?:final\s+|correct\s+|right\s+)?"
    r"(?:answer|option|choice)\s+is\b[^\n]*)$",
    re.IGNORECASE,
)
ANSWER_LINE = re.compile(r"(?:final\s+)?answer\s*(?::.*)?", re.IGNORECASE)
# A last line that is only an answer: yes, no, a letter, a number.
BARE_ANSWER = re.compile(r"(?i:yes|no)[.!]?|\(?[A-Z]\)?\.?|-?\$?\d[\d,]*(?:\.\d+)?\.?")
# What may stand beside a closing `\boxed{}` on its line(s): math delimiters, emphasis, a period.
BOXED_LINE_REST = re.compile(r"[\s$.*\\\[\]]*")
MATH_OPENER = re.compile(r"(?:^|\n)[ \t]*(?:\\\[|\$\$)\s*$")


def answer_passages(text):
    """The parts of `text` its answer is read from, first choice first: the text after the last
    closing think tag, then the reasoning up to it; [] for a think block that never closes."""
    closes = list(THINK_CLOSE.finditer(text))
    if not closes:
        return [] if THINK_OPEN.search(text) else [text]
    end = closes[-1].end()
    return [text[end:], THINK_TAG.sub(" ", text[:end])]


def training_rationale(text, think="keep"):
    """The rationale a training sequence holds: the think block treated as `think` says (see
    the module docstring) and the closing answer statement stripped. "" when nothing is left."""
    if think not in THINK_MODES:
        raise ValueError(f"think: expected one of {', '.join(THINK_MODES)}, got {think!r}")
    closes = list(THINK_CLOSE.finditer(text))
    if not closes:
        return strip_answer_sentence(text)
    end = closes[-1].end()
    if think == "keep":
        return (text[:end] + strip_closing_answer(text[end:])).strip()
    if think == "unwrap":
        return re.sub(r"\n{3,}", "\n\n", strip_answer_sentence(THINK_TAG.sub("", text))).strip()
    return strip_closing_answer(text[end:]).strip()


def final_statement(text):
    r"""The content of the last `\boxed{}` or `#### ` line of `text`, whichever comes later;
    None when it has neither."""
    found = []
    boxed = last_boxed(text)
    if boxed is not None:
        found.append((boxed[0], boxed[2]))
    hashes = list(FOUR_HASHES.finditer(text))
    if hashes:
        found.append((hashes[-1].start(), hashes[-1].group(1)))
    return max(found)[1] if found else None


def last_boxed(text):
    r"""(start, end, content) of the last `\boxed{...}` whose braces close, or None."""
    for match in reversed(list(BOXED.finditer(text))):
        close = closing_brace(text, match.end())
        if close is not None:
            return match.start(), close + 1, text[match.end():close]
    return None


def closing_brace(text, start):
    """The index of the `}` that closes a group opened just before `start`, or None."""
    depth, position = 1, start
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2  # \{ and \} are characters, not group braces
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return position
        position += 1
    return None


def strip_emphasis(text):
    """`text` without markdown emphasis markers around words (`**B**`, `__B__`, `*B*`)."""
    for pattern in EMPHASIS:
        text = pattern.sub(r"\1", text)
    return text


def latex_to_text(text):
    """Plain text of LaTeX answer markup (see the module docstring); other commands stay."""
    text = MIXED_NUMBER.sub(mixed_number, text)
    text = DEGREES.sub("", THOUSANDS_SPACE.sub("", text.replace("{,}", ",")))
    return convert_latex(text)


def mixed_number(match):
    """`2\\frac{1}{2}` as the improper fraction `5/2`."""
    whole, numerator, denominator = (int(group) for group in match.groups())
    return f"{whole * denominator + numerator}/{denominator}" if denominator else match.group(0)


def convert_latex(text):
    """One left-to-right pass over `text`: commands unwrapped or replaced, braces dropped."""
    if not LATEX_MARKUP.search(text):  # nothing to convert (most rationales): one search, no loop
        return text
    out, position = [], 0
    while position < len(text):
        char = text[position]
        if char in "{}":
            position += 1
        elif char == "\\":
            control = CONTROL.match(text, position)
            if control is None:  # a backslash that ends the text
                out.append(char)
                break
            replacement, position = convert_command(text, control.group(1), control.end())
            out.append(replacement)
        else:
            out.append(char)
            position += 1
    return "".join(out)


def convert_command(text, name, position):
    """(plain text, position after it) of the command `name` whose arguments start at `position`."""
    if name in FRACTIONS:
        numerator, position = latex_argument(text, position)
        denominator, position = latex_argument(text, position)
        return fraction(convert_latex(numerator), convert_latex(denominator)), position
    if name in UNWRAPPED:
        argument, position = latex_argument(text, position)
        return convert_latex(argument), position
    if name in DROPPED:
        return "", position
    if name in SPACES:
        return " ", position
    if len(name) == 1 and not name.isalpha():
        return name, position  # \$ \% \{ \} \& \# \_
    return "\\" + name, position


def latex_argument(text, position):
    """(argument, position after it): a braced group, else the next non-blank character."""
    while position < len(text) and text[position].isspace():
        position += 1
    if position < len(text) and text[position] == "{":
        close = closing_brace(text, position + 1)
        if close is not None:
            return text[position + 1:close], close + 1
        return text[position + 1:], len(text)
    return text[position:position + 1], position + 1


def fraction(numerator, denominator):
    """"a/b", with parentheses around an operand that is more than one token."""
    def operand(text):
        text = text.strip()
        return text if SIMPLE_OPERAND.fullmatch(text) else f"({text})"
    return f"{operand(numerator)}/{operand(denominator)}"


def strip_answer_sentence(text):
    """`text` without its closing answer statements; unchanged when nothing would remain."""
    return strip_closing_answer(text) or text.rstrip()


def strip_closing_answer(text):
    """`text` without its closing answer statements (see the module docstring); may be ""."""
    text = text.rstrip()
    bare = True  # a bare answer only on the last line: "12\n20\n32" are steps, not three answers
    while text:
        shorter = without_last_statement(text, bare)
        if shorter is None:
            break
        text, bare = shorter.rstrip(), False
    return text


def without_last_statement(text, bare=False):
    """`text` less its last closing answer statement (a bare answer too when `bare`), or None
    when it does not end in one."""
    line_start = text.rfind("\n") + 1
    line = strip_emphasis(text[line_start:]).strip().lstrip("#> ").strip()
    if (ANSWER_LINE.fullmatch(line) or text[line_start:].lstrip().startswith("####")
            or (bare and BARE_ANSWER.fullmatch(line))):
        return text[:line_start]
    sentence = CLOSING_ANSWER_SENTENCE.search(text)
    if sentence is not None:
        return text[:sentence.start()].rstrip(" \t*_")
    boxed = last_boxed(text)
    if boxed is not None:
        start = text.rfind("\n", 0, boxed[0]) + 1
        if BOXED_LINE_REST.fullmatch(text[start:boxed[0]] + text[boxed[1]:]):
            return MATH_OPENER.sub("", text[:start].rstrip())
    return None
