"""Generation with transformers: ``n`` continuations of a prompt, with each sampled token's raw logprob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentstream.serving.checkpoints import LoadedModel


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None
    top_logprobs: int | None  # None: no logprobs asked for


@dataclass
class Generated:
    """One choice: the sampled tokens with their logprobs, and the text they decode to."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    text: str
    finish_reason: str


def generate(loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling) -> list[Generated]:
    """``sampling.n`` continuations of one prompt, with each sampled token's raw logprob."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    model, tokenizer = loaded.model, loaded.tokenizer
    eos_ids = loaded.eos_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    sample = sampling.temperature > 0
    if not sample and sampling.n > 1:  # greedy answers are all the same (and generate refuses n > 1)
        [only] = generate(loaded, prompt_ids, Sampling(**{**sampling.__dict__, "n": 1}))
        return [only] + [
            Generated(
                list(only.token_ids),
                list(only.logprobs),
                list(only.top_logprobs),
                only.text,
                only.finish_reason,
            )
            for _ in range(sampling.n - 1)
        ]
    options: dict[str, Any] = dict(
        max_new_tokens=sampling.max_tokens,
        do_sample=sample,
        num_return_sequences=sampling.n,
        return_dict_in_generate=True,
        output_logits=True,
        eos_token_id=sorted(eos_ids) or None,
        pad_token_id=pad,
    )
    if sample:
        # OpenAI semantics: temperature and nucleus only (generate's top_k=50 default is switched off)
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    stopping = StoppingCriteriaList()
    if sampling.stop:
        stopping.append(loaded.stop_criteria(tuple(sampling.stop)))
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=GenerationConfig(**options),
            stopping_criteria=stopping,
        )
        logprobs = torch.stack(output.logits, dim=1).float().log_softmax(-1)  # (n, steps, vocab)
    choices = []
    for row in range(output.sequences.shape[0]):
        ids = output.sequences[row, len(prompt_ids) :].tolist()
        finish = "length"
        for i, token in enumerate(ids):
            if token in eos_ids:
                ids, finish = ids[: i + 1], "stop"  # the EOS is part of what was sampled (as vLLM reports it)
                break
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if sampling.stop:
            ids, text, stopped = _cut_at_stop(tokenizer, ids, text, sampling.stop)
            finish = "stop" if stopped else finish
        token_logprobs = [float(logprobs[row, i, token]) for i, token in enumerate(ids)]
        top: list[list[tuple[int, float]]] = []
        if sampling.top_logprobs:
            values, indices = logprobs[row, : len(ids)].topk(sampling.top_logprobs, dim=-1)
            top = [list(zip(indices[i].tolist(), values[i].tolist())) for i in range(len(ids))]
        choices.append(Generated(ids, token_logprobs, top, text, finish))
    return choices


def _cut_at_stop(tokenizer: Any, ids: list[int], text: str, stop: list[str]) -> tuple[list[int], str, bool]:
    """Text up to the first stop string (excluded, as OpenAI does); tokens up to the one that
    completed it (included: they were sampled)."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return ids, text, False
    at, _ = min(hits)
    for count in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:count], skip_special_tokens=True)
        if any(s in prefix for s in stop if s):
            return ids[:count], text[:at], True
    return ids, text[:at], True
