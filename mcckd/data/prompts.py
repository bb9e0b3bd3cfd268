"""Prompt formats: the prompt a student is trained and evaluated on, and the fixed pieces of its
target.

    plain  [BOS] "Question: {question}\\nAnswer:"  | " {rationale}\\n" | "Therefore, the answer is" |
           " {answer}" | "." | EOS
    chat   the tokenizer's chat template over [system,] user "{question}", with the generation
           prompt  | [opening] | "{rationale}\\n" | "Therefore, the answer is" | " {answer}" | "." |
           the template's end of turn

`PromptFormat` names the format, the prompt (`{question}` is replaced; in the chat format it is
the user's message), the answer sentence and, for chat, a system message. `bind_format` binds
it to a tokenizer once. `BoundFormat.prompt_ids` is the one function that builds a prompt, for
training (`mcckd.data.tokenize`) and evaluation alike: in the chat format it is the template's
own tokenisation, `apply_chat_template(messages, add_generation_prompt=True)`. The target is
tokenised segment by segment. To find the chat template's pieces of the assistant turn, it is
rendered once around placeholder messages: what it writes after the generation prompt and
before the content is the opening (empty for most templates), what follows the content is the
end of turn (`<|im_end|>\\n`, `<|eot_id|>`, `</s>`), which must tokenise as the template's own
tokenisation of the conversation ends. An end of turn without a special token is followed by
EOS, so that generation stops.
"""
from dataclasses import dataclass

from mcckd.errors import InputError

FORMATS = ("plain", "chat")
DEFAULT_PROMPTS = {"plain": "Question: {question}\nAnswer:", "chat": "{question}"}
ANSWER_SENTENCE = "Therefore, the answer is"
# Placeholder messages that no template rewrites (no white space to trim, no markup).
USER_PLACEHOLDER = "MCCKDUSERMESSAGE"
REPLY_PLACEHOLDER = "MCCKDASSISTANTREPLY"


def prompt_problem(prompt):
    """What is wrong with a prompt template (None when nothing): it must hold `{question}`."""
    if prompt is not None and "{question}" not in prompt:
        return f"must hold the placeholder {{question}}, got {prompt!r}"
    return None


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt and a rationale a target.

    kind: "plain" or "chat". prompt: the prompt text (plain) or the user's message (chat), with
    `{question}` replaced by the question; None for the format's default. answer_sentence: what
    precedes the answer in every target. system: the system message of a chat prompt.
    """

    kind: str = "plain"
    prompt: str | None = None
    answer_sentence: str = ANSWER_SENTENCE
    system: str | None = None

    def __post_init__(self):
        if self.kind not in FORMATS:
            raise ValueError(f"kind must be one of {FORMATS}, got {self.kind!r}")
        if prompt_problem(self.prompt):
            raise ValueError(f"prompt {prompt_problem(self.prompt)}")
        if self.system is not None and self.kind != "chat":
            raise ValueError("a system message needs the chat format")

    def prompt_text(self, question):
        """The prompt (plain) or the user's message (chat) of `question`."""
        return (self.prompt or DEFAULT_PROMPTS[self.kind]).replace("{question}", question)


PLAIN = PromptFormat()


def format_from_config(section):
    """The PromptFormat of a config's data section: a mapping (a run's config.yaml) or an object
    (`DataConfig`) with the keys format, prompt, answer_sentence and system."""
    def get(key, default):
        if isinstance(section, dict):
            return section.get(key, default)
        return getattr(section, key, default)

    try:
        return PromptFormat(get("format", "plain"), get("prompt", None),
                            get("answer_sentence", ANSWER_SENTENCE), get("system", None))
    except ValueError as error:
        raise InputError(f"the data section's prompt format: {error}") from None


def encode(tokenizer, text):
    """Token ids of `text` alone, without special tokens."""
    return encode_each(tokenizer, [text])[0]


def encode_each(tokenizer, texts, **options):
    """`encode` of every text, in one call of the tokenizer (a fast tokenizer's Python overhead
    is paid once, not per text); `options` override add_special_tokens=False."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), **{"add_special_tokens": False, **options})
    return [list(ids) for ids in encoded["input_ids"]]


class BoundFormat:
    """A PromptFormat bound to one tokenizer.

    opening   ids that start every target (the chat template's, before the assistant's content)
    sentence  ids of the answer sentence;  tail  ids of the "." after the answer
    closing   ids that end every target: EOS, or the chat template's end of turn (None when the
              tokenizer has no EOS to end a plain target with)
    stop_ids  ids besides EOS at which generation stops (the end of turn's special token)
    """

    def __init__(self, tokenizer, prompt_format, *, encoder_decoder=False):
        self.tokenizer, self.format, self.encoder_decoder = tokenizer, prompt_format, encoder_decoder
        self.sentence = encode(tokenizer, prompt_format.answer_sentence)
        self.tail = encode(tokenizer, ".")
        self.opening, self.stop_ids = [], []
        eos = tokenizer.eos_token_id
        self.closing = None if eos is None else [eos]
        self.rationale_text = " {rationale}\n"
        if prompt_format.kind == "chat":
            if encoder_decoder:
                raise InputError("the chat format needs a decoder-only student: "
                                 "an encoder-decoder student takes the plain format")
            self.rationale_text = "{rationale}\n"  # the assistant's content starts the turn
            self.opening, self.closing, self.stop_ids = chat_turn_pieces(tokenizer, prompt_format.system)

    def prompt_ids(self, question):
        """The prompt's token ids: what training puts before every target and what evaluation
        generates from.

        plain: [BOS] + the prompt text (BOS when the tokenizer has one); an encoder-decoder
        student reads the prompt text with the tokenizer's own special tokens (T5 closes with
        EOS). chat: the template's tokenisation of the conversation with its generation prompt.
        """
        return self.prompts_ids([question])[0]

    def prompts_ids(self, questions):
        """`prompt_ids` of every question, the plain format's in one call of the tokenizer."""
        texts = [self.format.prompt_text(question) for question in questions]
        if self.format.kind == "chat":
            return [chat_prompt_ids(self.tokenizer, text, self.format.system) for text in texts]
        if self.encoder_decoder:
            return encode_each(self.tokenizer, texts, add_special_tokens=True)
        bos = self.tokenizer.bos_token_id
        return [([] if bos is None else [bos]) + ids for ids in encode_each(self.tokenizer, texts)]

    def rationales_ids(self, rationales):
        """The rationale segment's ids of every rationale (stripped of white space at its ends),
        in one call of the tokenizer."""
        return encode_each(self.tokenizer, [self.rationale_text.replace("{rationale}", rationale.strip())
                                            for rationale in rationales])

    def answers_ids(self, answers):
        """The answer segment's ids of every answer (the common answer span, the same under
        every rationale), in one call of the tokenizer."""
        return encode_each(self.tokenizer, [f" {answer}" for answer in answers])


def bind_format(tokenizer, prompt_format=PLAIN, *, encoder_decoder=False):
    """`prompt_format` bound to `tokenizer` (InputError when the chat template cannot be used)."""
    return BoundFormat(tokenizer, prompt_format, encoder_decoder=encoder_decoder)


def conversation(user, system=None, reply=None):
    """The messages of a chat prompt (and of its answer, with `reply`)."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user})
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return messages


def render(tokenizer, messages, *, generation_prompt, tokenize):
    """The tokenizer's chat template applied to `messages`: the text, or its token ids."""
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2

    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the chat format needs a tokenizer with a chat template; this one has none "
                         "(set tokenizer.chat_template, or use the plain format)")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                             tokenize=tokenize, return_dict=False)
    except (TemplateError, ValueError, TypeError) as error:
        roles = "/".join(message["role"] for message in messages)
        raise InputError(f"the chat template cannot render a {roles} conversation: {error}") from None


def chat_prompt_ids(tokenizer, user, system=None):
    """The template's own token ids of [system,] user `user`, with the generation prompt."""
    return list(render(tokenizer, conversation(user, system), generation_prompt=True, tokenize=True))


def chat_turn_pieces(tokenizer, system):
    """(opening ids, closing ids, stop ids) of the assistant turn of the tokenizer's template.

    The template is rendered around placeholder messages: the conversation with the reply must
    start with the prompt (with its generation prompt); what it writes around the reply is the
    opening and the end of turn. The end of turn's ids, tokenised alone, must be those the
    template's own tokenisation ends with. When it holds no special token, EOS follows it.
    """
    prompt = render(tokenizer, conversation(USER_PLACEHOLDER, system), generation_prompt=True, tokenize=False)
    messages = conversation(USER_PLACEHOLDER, system, REPLY_PLACEHOLDER)
    full = render(tokenizer, messages, generation_prompt=False, tokenize=False)
    if USER_PLACEHOLDER not in prompt:
        raise InputError("the chat template does not write the user's message as given")
    if not full.startswith(prompt) or full.count(REPLY_PLACEHOLDER) != 1:
        raise InputError("the chat template does not write the assistant's reply after its generation "
                         "prompt: the training target cannot follow the evaluation prompt")
    opening, closing_text = full[len(prompt):].split(REPLY_PLACEHOLDER)
    closing = encode(tokenizer, closing_text)
    own = list(render(tokenizer, messages, generation_prompt=False, tokenize=True))
    if own[len(own) - len(closing):] != closing:
        raise InputError(f"the chat template's end of turn {closing_text!r} tokenises differently "
                         f"alone than after the reply")
    stops = [token for token in closing if token in special_ids(tokenizer)][:1]
    if not stops:
        if tokenizer.eos_token_id is None:
            raise InputError(f"the chat template's end of turn {closing_text!r} has no special token "
                             f"and the tokenizer no EOS: generation could not stop")
        closing = closing + [tokenizer.eos_token_id]
    return encode(tokenizer, opening), closing, stops


def special_ids(tokenizer):
    """The ids of the tokenizer's special tokens: the named ones and every added token marked
    special (Llama 3's <|eot_id|> is one of those only)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {index for index, token in added.items() if token.special}
