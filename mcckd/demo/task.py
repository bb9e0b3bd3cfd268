"""The demo's task and teacher: two- and three-step arithmetic word problems, written out.

A problem is someone's stock of one kind of item and two or three events that change it: they
gain some ("buys 3 more"), lose some ("gives 2 to Ana"), or gain boxes of several each ("buys 2
boxes of 4 apples"). Taken in order, the events are two or three arithmetic steps (boxes are
two: a product, then a sum). The start always covers every loss, so the events can be taken in
any order without going below zero. The question is written in one of several frames: the
in-distribution frames (`ID_FRAMES`) train and test the students, the held-out frames
(`OOD_FRAMES`) put the same facts in sentence orders they never saw, made only of the words and
clauses of the training questions: every token of a held-out question is one that training
reads, so no answer depends on an embedding that no gradient has touched.

The teacher is a program that writes, for one question, rationales as a model teacher samples
them: four strategies with different step orders and intermediate quantities (the events in
order, in reverse order, the net change, the totals gained and lost), each in several wordings,
and now and then a wrong one (an arithmetic slip, or a forgotten last event), so that the
correctness filter and the diversity selection of `mcckd prepare` have work to do.
"""
from dataclasses import dataclass, replace

from mcckd.data import Record

# Answers are whole numbers: the gsm8k extraction reads them.
TASK = "gsm8k"

PEOPLE = [("Tom", "he"), ("Ana", "she"), ("Lee", "he"), ("Mia", "she"), ("Sam", "he"), ("Zoe", "she"),
          ("Ben", "he"), ("Eva", "she")]
ITEMS = ["apples", "pens", "cards", "stickers", "marbles", "shells", "coins", "books"]
CONTAINERS = ["boxes", "bags", "packs"]
# verb -> (present, gerund, past)
VERBS = {
    "buy": ("buys", "buying", "bought"),
    "find": ("finds", "finding", "found"),
    "get": ("gets", "getting", "got"),
    "give": ("gives", "giving", "gave"),
    "sell": ("sells", "selling", "sold"),
    "lose": ("loses", "losing", "lost"),
}
GAIN_VERBS, LOSS_VERBS = ("buy", "find", "get"), ("give", "sell", "lose")
FORMS = {"present": 0, "gerund": 1, "past": 2}


@dataclass(frozen=True)
class Event:
    """One change to the stock: `kind` "gain" or "loss" of `count` items, or "boxes": `count`
    containers of `size` items each."""

    kind: str
    verb: str
    count: int
    size: int = 1
    container: str = ""

    @property
    def change(self):
        """The signed change in items."""
        return -self.count if self.kind == "loss" else self.count * self.size

    def phrase(self, form, problem):
        """The event as a verb phrase: "buys 3 more", "giving 2 to Ana", "bought 2 boxes of 4 apples"."""
        verb = VERBS[self.verb][FORMS[form]]
        if self.kind == "boxes":
            return f"{verb} {self.count} {self.container} of {self.size} {problem.items}"
        if self.verb == "give":
            return f"{verb} {self.count} to {problem.friend}"
        if self.verb == "get":
            return f"{verb} {self.count} more from {problem.friend}"
        return f"{verb} {self.count}" + (" more" if self.kind == "gain" else "")


@dataclass(frozen=True)
class Problem:
    """A word problem: who, what, the start, the events, and the frame its question uses."""

    name: str
    pronoun: str
    friend: str
    items: str
    start: int
    events: tuple
    frame: str

    @property
    def answer(self):
        return self.start + sum(event.change for event in self.events)

    @property
    def question(self):
        return FRAMES[self.frame](self)

    @property
    def he(self):
        return self.pronoun

    @property
    def He(self):
        return self.pronoun.capitalize()


def phrases(problem, form):
    """Every event of the problem as a verb phrase in `form`."""
    return [event.phrase(form, problem) for event in problem.events]


def joined(parts, last="and"):
    """ "a, b and c"."""
    return ", ".join(parts[:-1]) + f" {last} {parts[-1]}"


def frame_then(p):
    first, *rest = phrases(p, "present")
    then = "".join(f" Then {p.he} {phrase}." for phrase in rest)
    return (
        f"{p.name} has {p.start} {p.items}. {p.He} {first}.{then} How many {p.items} does {p.name} have now?"
    )


def frame_and(p):
    return (f"{p.name} has {p.start} {p.items}. {p.He} {joined(phrases(p, 'present'))}. "
            f"How many {p.items} does {p.he} have now?")


def events_then(p):
    """ "Tom buys 3 more, then gives 2 to Ana"."""
    return f"{p.name} {', then '.join(phrases(p, 'present'))}"


def frame_shelf(p):
    return (f"There are {p.start} {p.items} on {p.name}'s shelf. {events_then(p)}. "
            f"How many {p.items} are on the shelf now?")


def first_next(p, subject):
    """ "First {subject} buys 3 more. Next he gives 2 to Ana."."""
    first, *rest = phrases(p, "present")
    return f"First {subject} {first}." + "".join(f" Next {p.he} {phrase}." for phrase in rest)


def frame_first_next(p):
    return (f"{p.name} starts with {p.start} {p.items}. {first_next(p, p.he)} "
            f"How many {p.items} does {p.he} end with?")


def frame_start_last(p):
    """The events first, the start after them."""
    return (f"{events_then(p)}. {p.He} starts with {p.start} {p.items}. "
            f"How many {p.items} does {p.he} end with?")


def frame_question_first(p):
    """The question first, the facts after it."""
    return (f"How many {p.items} does {p.name} have now? {p.name} has {p.start} {p.items}. "
            f"{p.He} {joined(phrases(p, 'present'))}.")


def frame_shelf_first_next(p):
    """The opening and question of `shelf` around the events of `first_next`."""
    return (f"There are {p.start} {p.items} on {p.name}'s shelf. {first_next(p, p.name)} "
            f"How many {p.items} are on the shelf now?")


ID_FRAMES = {"then": frame_then, "and": frame_and, "shelf": frame_shelf, "first_next": frame_first_next}
OOD_FRAMES = {"start_last": frame_start_last, "question_first": frame_question_first,
              "shelf_first_next": frame_shelf_first_next}
FRAMES = {**ID_FRAMES, **OOD_FRAMES}


# Tom has 5 apples, buys 3 more and gives 2 to Ana: the report shows it in every frame.
EXAMPLE = Problem(
    "Tom", "he", "Ana", "apples", 5, (Event("gain", "buy", 3), Event("loss", "give", 2)), "then"
)


def example_questions():
    """{frame: the EXAMPLE problem's question in that frame}."""
    return {frame: replace(EXAMPLE, frame=frame).question for frame in FRAMES}


def random_event(rng, kind):
    if kind == "boxes":
        return Event("boxes", "buy", rng.randint(2, 3), rng.randint(2, 4), rng.choice(CONTAINERS))
    verbs = GAIN_VERBS if kind == "gain" else LOSS_VERBS
    return Event(kind, rng.choice(verbs), rng.randint(1, 6))


def random_problem(rng, frames):
    """Two or three events, at least one gain and one loss, and two or three arithmetic steps
    when taken in order: boxes (a product, then a sum) come with one other event only."""
    while True:
        kinds = [rng.choice(("gain", "gain", "loss", "boxes")) for _ in range(rng.choice((2, 3)))]
        if "loss" in kinds and kinds != ["loss"] * len(kinds) and len(kinds) + kinds.count("boxes") <= 3:
            break
    events = tuple(random_event(rng, kind) for kind in kinds)
    losses = sum(event.count for event in events if event.kind == "loss")
    (name, pronoun), (friend, _) = rng.sample(PEOPLE, 2)
    start = rng.randint(max(2, losses), losses + 8)
    return Problem(name, pronoun, friend, rng.choice(ITEMS), start, events, rng.choice(list(frames)))


def make_problems(rng, n, frames, exclude=()):
    """n problems with distinct questions, none of them in `exclude` (question texts)."""
    seen, problems = set(exclude), []
    while len(problems) < n:
        problem = random_problem(rng, frames)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


class Arithmetic:
    """The steps of one rationale; a wrong one slips by a little at step `slip_at`."""

    def __init__(self, slip_at=None, slip=0):
        self.step, self.slip_at, self.slip = 0, slip_at, slip

    def __call__(self, x, op, y):
        """(value, "x op y = value")."""
        value = {"+": x + y, "-": x - y, "x": x * y}[op]
        if self.step == self.slip_at:
            value = value + self.slip if value + self.slip >= 0 else value - self.slip
        self.step += 1
        return value, f"{x} {op} {y} = {value}"


# One step of a rationale, per wording: {eq} the step's equation, {product} a box count's.
STEP_WORDINGS = [
    {
        "gain": "{Gerund} gives {eq}.",
        "loss": "{Gerund} leaves {eq}.",
        "boxes": "{Gerund} adds {product}, so {eq}.",
    },
    {
        "gain": "After {gerund}: {eq}.",
        "loss": "After {gerund}: {eq}.",
        "boxes": "After {gerund}: {product}, {eq}.",
    },
    {
        "gain": "Once {he} {past}, {eq}.",
        "loss": "Once {he} {past}, {eq}.",
        "boxes": "Once {he} {past}, {product} and {eq}.",
    },
]
OPENINGS = ["", "{name} starts with {start}. "]
REVERSED_OPENINGS = ["Last change first. ", "In reverse order: "]
# prepare strips a closing answer sentence: the training text appends its own
CLOSINGS = ["", " The answer is {answer}.", " So the answer is {answer}."]


def fill(template, p, **values):
    """A template filled with the problem's words and `values`."""
    return template.format(name=p.name, he=p.he, He=p.He, items=p.items, start=p.start, **values)


def capitalized(text):
    return text[0].upper() + text[1:]


def step_text(p, event, x, calc, wording):
    """(new stock, sentence) for one event applied to stock x."""
    fields = {"gerund": event.phrase("gerund", p), "past": event.phrase("past", p)}
    fields["Gerund"] = capitalized(fields["gerund"])
    if event.kind == "boxes":
        added, fields["product"] = calc(event.count, "x", event.size)
        x, fields["eq"] = calc(x, "+", added)
    else:
        x, fields["eq"] = calc(x, "+" if event.kind == "gain" else "-", event.count)
    return x, capitalized(fill(STEP_WORDINGS[wording][event.kind], p, **fields))


def in_order(p, calc, rng):
    """The events one by one, as the question tells them."""
    return walk(p, p.events, calc, rng, fill(rng.choice(OPENINGS), p))


def reverse_order(p, calc, rng):
    """The events from the last to the first: other intermediate stocks."""
    return walk(p, p.events[::-1], calc, rng, rng.choice(REVERSED_OPENINGS))


def walk(p, events, calc, rng, opening):
    """(final stock, text) of applying `events` one by one to the start."""
    wording = rng.randrange(len(STEP_WORDINGS))
    x, sentences = p.start, []
    for event in events:
        x, sentence = step_text(p, event, x, calc, wording)
        sentences.append(sentence)
    return x, opening + " ".join(sentences)


def gained_and_lost(p, calc):
    """(items gained, items lost, the sentences that add them up)."""
    gains, losses, notes = [], [], []
    for event in p.events:
        if event.kind == "boxes":
            product, eq = calc(event.count, "x", event.size)
            notes.append(f"The {event.container} hold {eq}.")
            gains.append(product)
        else:
            (gains if event.kind == "gain" else losses).append(event.count)
    # a wrong rationale that forgot an event may have no gain or no loss left
    gained, lost = (gains or [0])[0], (losses or [0])[0]
    for value in gains[1:]:
        gained, eq = calc(gained, "+", value)
        notes.append(f"Gains: {eq}.")
    for value in losses[1:]:
        lost, eq = calc(lost, "+", value)
        notes.append(f"Losses: {eq}.")
    return gained, lost, notes


def net_change(p, calc, rng):
    """What is gained less what is lost, then one step from the start."""
    gained, lost, notes = gained_and_lost(p, calc)
    if gained >= lost:
        change, eq = calc(gained, "-", lost)
        net = rng.choice([f"Net gain: {eq}.", f"{p.He} gains {gained} and loses {lost}, {eq} more."])
        x, final = calc(p.start, "+", change)
    else:
        change, eq = calc(lost, "-", gained)
        net = rng.choice([f"Net loss: {eq}.", f"{p.He} loses {lost} and gains {gained}, {eq} fewer."])
        x, final = calc(p.start, "-", change)
    return x, " ".join([*notes, net, rng.choice([f"So {final}.", f"From {p.start}: {final}."])])


def totals(p, calc, rng):
    """Everything gained added to the start, then everything lost taken away."""
    gained, lost, notes = gained_and_lost(p, calc)
    most, eq_most = calc(p.start, "+", gained)
    x, eq_left = calc(most, "-", lost)
    steps = rng.choice([f"All gains first: {eq_most}. Then the losses: {eq_left}.",
                        f"Before losing any, {p.he} has {eq_most}. Minus the {lost} lost, {eq_left}."])
    return x, " ".join([*notes, steps])


STRATEGIES = (in_order, reverse_order, net_change, totals)


def rationale(problem, rng, calc):
    """One rationale by a random strategy, with a random closing; its final stock."""
    x, text = rng.choice(STRATEGIES)(problem, calc, rng)
    return x, text + fill(rng.choice(CLOSINGS), problem, answer=x)


def teacher_rationales(problem, rng, n=8, wrong_rate=0.15):
    """n sampled rationales for `problem`; each is wrong with probability `wrong_rate`:
    an arithmetic slip at one of the first two steps, or the last event forgotten."""
    texts = []
    for _ in range(n):
        calc, seen = Arithmetic(), problem
        if rng.random() < wrong_rate:
            if rng.random() < 0.5:
                calc = Arithmetic(slip_at=rng.randrange(2), slip=rng.choice((-2, -1, 1, 2)))
            else:
                seen = replace(problem, events=problem.events[:-1])
        texts.append(rationale(seen, rng, calc)[1])
    return texts


def to_record(problem, record_id, rationales=()):
    """A canonical record of the task."""
    return Record(record_id, TASK, problem.question, str(problem.answer), list(rationales))
