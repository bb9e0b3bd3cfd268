"""Evaluation through an OpenAI-compatible server (vLLM, SGLang and others): the same prompts,
scoring and results folder as in-process evaluation, the decoding done by the server.

The completions API (the default) gets the prompt as token ids, those `mcckd.data.prompts` builds
from the student's tokenizer: the very ids the student was trained on, BOS and any chat
template included, so plain and chat prompt formats both match training exactly and the server
adds nothing (vLLM and SGLang accept token-id prompts). The chat-completions API (`api="chat"`)
gets the question as the user message and the server's chat template builds the prompt: for a
folder written by `mcckd export` that template is the training prompt of a plain-format
student; for other folders it is whatever template the tokenizer carries.

Greedy decoding is temperature 0 and one sample; self-consistency asks for `num_samples`
samples at `temperature` and scores their majority answer. Where a generation stops is the
server's call: it reads the EOS ids from the served folder's generation_config.json, which
`mcckd export` writes with the ids training used. Requests go through the retrying client
(`mcckd.teacher.client`) at most `concurrency` at a time (`mcckd.teacher.pool`); each answered
question is appended to the results as it arrives, each question that fails for good is
recorded with its reason.
"""
from pathlib import Path

from tqdm import tqdm

from mcckd.data.prompts import PLAIN, bind_format
from mcckd.errors import InputError
from mcckd.evaluation.scoring import answer_row
from mcckd.teacher.client import ChatCompletionsClient, CompletionsClient
from mcckd.teacher.pool import ask_all

CLIENTS = {"completions": CompletionsClient, "chat": ChatCompletionsClient}


def prompt_tokenizer(source):
    """(tokenizer, encoder_decoder) of the student folder `source`, to build its prompts."""
    from transformers import AutoConfig, AutoTokenizer  # only the completions API needs them

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise InputError(f"--tokenizer {source}: cannot load the tokenizer: {error}") from None
    encoder_decoder = False
    if (Path(source) / "config.json").is_file():
        encoder_decoder = bool(AutoConfig.from_pretrained(source).is_encoder_decoder)
    return tokenizer, encoder_decoder


def endpoint_prompts(records, api, tokenizer=None, encoder_decoder=False, prompt_format=PLAIN):
    """What the server gets for each record: the token ids of the training prompt in
    `prompt_format` (completions), or the question as the user message (chat)."""
    if api == "chat":
        return [record.question for record in records]
    bound = bind_format(tokenizer, prompt_format or PLAIN, encoder_decoder=encoder_decoder)
    return bound.prompts_ids([record.question for record in records])


def predict_endpoint(client, records, prompts, task, results, *, num_samples, temperature, max_tokens,
                     concurrency, seed=None, progress=True):
    """Answer `records` (with their `prompts`) through `client`, appending each row to
    `results` (a `ResultsFolder`) as it arrives and recording the questions that fail for
    good. Raises what stops the run (InputError, ServerError) once the answers in flight are in.
    """
    bar = tqdm(total=len(records), desc="eval", unit="question", disable=not progress)

    def ask(item):
        return client.sample(item[1], n=num_samples, temperature=temperature, max_tokens=max_tokens,
                             seed=seed)

    def answered(item, texts):
        results.append([answer_row(item[0], texts, task)])
        bar.update(1)

    def failed(item, reason):
        results.record_failure(item[0], reason)
        bar.update(1)

    with bar:
        ask_all(client, list(zip(records, prompts)), ask, concurrency=concurrency, on_answer=answered,
                on_failure=failed)
