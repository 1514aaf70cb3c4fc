"""The bundled customer-support agent: an LLM routes each ticket to a queue by calling a
``create_ticket`` tool with JSON arguments.

    runner = agentstream.Runner(SupportAgent(base_url, model), settings)

Its prompt is the ``support-prompt`` resource (a completion-style template with a ``{{ticket}}``
variable), resolved per attempt by the runner, so new versions apply without a restart. The model
is asked to continue the prompt with ``create_ticket({...})``; the agent parses that call,
runs the tool, and is judged twice:

* immediately, by rules (``routing`` reward): 0.5 for valid arguments, 0.5 for the correct queue,
  with feedback text naming the mistake. The attempt fails unless both hold, which is what the
  per-version success rate counts;
* later, by the business (``resolution`` reward, sent from outside the rollout by its id): the
  ticket was resolved (1.0) or escalated to a human (0.0), far more often resolved when it was
  routed right. :class:`BusinessEvents` plays that part.

An escalated ticket is filed again by a human agent. That handoff is recorded as a rollout of its
own whose one "LLM call" was answered by the human (model ``human``): the prompt the model saw and
the call the human made, rewarded by the same rule. The joiner turns it into a triplet like any
other (rewarded like a routed-right, resolved ticket: 1.0 + 1.0), so corrected handoffs become
demonstrations prompt optimisation can learn from. (A base
model cannot follow an instruction-only prompt at all; these are where its first good examples
come from.) Handoff rollouts carry no resource version, so they never count in a version's A/B
metrics; only their LLM span is stamped with the prompt version it corrects.
"""

from __future__ import annotations

import heapq
import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import agentstream
from agentstream.producers.client import AgentStream
from agentstream.producers.prompts import Prompt
from agentstream.producers.tracer import Rollout
from agentstream.schemas import genai
from agentstream.serving.checkpoints import parse_model

from .tickets import QUEUES

PROMPT_RESOURCE = "support-prompt"
#: The demonstration pool the curator builds and retrieval candidates read.
POOL_RESOURCE = f"{PROMPT_RESOURCE}.demos"
#: a prompt version's config key naming the model version it runs on (``support-model:v2``)
PROMPT_MODEL = "model"
#: A call's reward dimensions ("routing", then the business "resolution") add up in APO's ranking
#: (``APOConfig.reward_of="sum"``): routed right and resolved is 1.0 + 1.0. Only such calls are good
#: demonstrations; a wrong call the customer resolved anyway sums to 1.0 or 1.5.
DEMO_MIN_REWARD = 2.0
PRIORITIES = ("low", "normal", "high")


#: The prompt a developer writes first: an instruction, as an instruction-tuned model would want it.
#: A base model does not follow it (it produces no parseable call); APO has to find what works.
def seed_prompt(queues: Sequence[str]) -> str:
    """The seed prompt for a set of queues (the demo's, or those of ``demo --tickets FILE``)."""
    names = ", ".join(queues[:-1]) + f" or {queues[-1]}" if len(queues) > 1 else queues[0]
    return (
        "You are a customer-support agent. Read the ticket and file it in the right queue "
        f"({names}) by calling create_ticket with JSON arguments queue and priority.\n\n"
        "Ticket: {{ticket}}\nAction:"
    )


SEED_PROMPT = seed_prompt(QUEUES)

_CALL = re.compile(r"create_ticket\((\{.*?\})\)", re.S)


def parse_call(text: str) -> dict[str, Any]:
    """The JSON arguments of the first ``create_ticket({...})`` in the model's output."""
    match = _CALL.search(text)
    if match is None:
        raise ValueError("no create_ticket({...}) call in the model output")
    try:
        arguments = json.loads(match.group(1))
    except json.JSONDecodeError as e:
        raise ValueError(f"create_ticket arguments are not valid JSON: {e.msg}") from None
    if not isinstance(arguments, dict):
        raise ValueError("create_ticket arguments must be a JSON object")
    return arguments


def create_ticket(arguments: dict[str, Any], queues: Sequence[str] = QUEUES) -> dict[str, Any]:
    """The tool: validates its JSON arguments like a real ticketing API would."""
    missing = [k for k in ("queue", "priority") if k not in arguments]
    if missing:
        raise ValueError(f"create_ticket: missing {missing}")
    if arguments["queue"] not in queues:
        raise ValueError(f"create_ticket: unknown queue {arguments['queue']!r}")
    if arguments["priority"] not in PRIORITIES:
        raise ValueError(f"create_ticket: unknown priority {arguments['priority']!r}")
    return {"status": "created", "queue": arguments["queue"]}


def format_call(queue: str, priority: str) -> str:
    """A correct call, as demonstrations show it."""
    return f'create_ticket({{"queue": "{queue}", "priority": "{priority}"}})'


class SupportAgent:
    """The agent a runner runs: ``agent(task, rollout)`` with ``task`` = a ticket dict
    (``ticket_id``, ``text``, ``queue`` (ground truth for the rule reward), optional
    ``temperature``).

    Args:
        base_url: an OpenAI-compatible server (llama.cpp, vLLM, OpenAI).
        model: the model name to request, or a function of the rollout giving it (e.g. the version of
            an LLM resource the runner resolved: :func:`~agentstream.examples.sft_stage.model_for`).
        business: where delayed business outcomes are scheduled; ``None``: none are sent.
        max_tokens: the call is short; generation stops at the end of the line.
    """

    def __init__(
        self,
        base_url: str,
        model: str | Callable[[Rollout], str],
        *,
        business: BusinessEvents | None = None,
        max_tokens: int = 40,
        api_key: str = "local",
        queues: Sequence[str] = QUEUES,
    ) -> None:
        self.api_key = api_key
        self.client = self._client(base_url)
        self.model = model
        self.business = business
        self.max_tokens = max_tokens
        self.queues = tuple(queues)
        self._servers: dict[str, Any] = {}

    def _client(self, base_url: str, api_key: str | None = None) -> Any:
        import openai

        key = api_key if api_key is not None else self.api_key
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=2, timeout=60)
        agentstream.instrument_openai(client)
        return client

    def serve(self, llm_resource: str, base_url: str, api_key: str | None = None) -> None:
        """Answer prompt versions bound to versions of ``llm_resource`` from the server at ``base_url``
        (with ``api_key``, default the agent's own: a model server's is its ``token``).

        A prompt version whose ``config["model"]`` names a version of ``llm_resource``
        (``support-model:v2``, e.g. an SFT model distilled into that prompt) is then answered by
        that server and model; other prompt versions by the agent's ``base_url`` and ``model``."""
        self._servers[llm_resource] = self._client(base_url, api_key)

    def endpoint(self, rollout: Rollout) -> tuple[Any, str]:
        """The client and model name this rollout's prompt version runs on (see :meth:`serve`)."""
        bound = rollout.resource(PROMPT_RESOURCE).config.get(PROMPT_MODEL)
        if not bound:
            return self.client, self.model(rollout) if callable(self.model) else self.model
        resource = parse_model(bound).resource
        client = self._servers.get(resource)
        if client is None:
            raise LookupError(f"the prompt runs on {bound}, and no model server for {resource} was given")
        return client, bound

    def __call__(self, task: dict[str, Any], rollout: agentstream.producers.Rollout) -> None:
        # the template, its retrieved demonstrations and the response prefix the model continues
        prompt = rollout.render(PROMPT_RESOURCE, ticket=task["text"])
        client, model = self.endpoint(rollout)
        completion = client.completions.create(
            model=model,
            prompt=prompt.text,
            max_tokens=self.max_tokens,
            temperature=float(task.get("temperature", 0.7)),
            stop=["\n"],
            seed=int(task.get("seed", 0)),
        )
        output = prompt.response(completion.choices[0].text)
        expected = task["queue"]
        valid, queue, problem = True, None, None
        with agentstream.span(
            "create_ticket",
            kind="tool",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "create_ticket",
            },
        ) as call:
            try:
                arguments = parse_call(output)
                call.set_attribute("gen_ai.tool.call.arguments", json.dumps(arguments))
                call.set_attribute(
                    "gen_ai.tool.call.result", json.dumps(create_ticket(arguments, self.queues))
                )
                queue = arguments["queue"]
            except ValueError as e:
                valid, problem = False, str(e)
                call.record_exception(e)
        correct = queue == expected
        if not valid:
            feedback = f"invalid call ({problem}); this is a {expected} ticket"
        elif not correct:
            feedback = f"routed to {queue}, but this is a {expected} ticket"
        else:
            feedback = None
        rollout.emit_reward(
            (0.5 if valid else 0.0) + (0.5 if correct else 0.0),
            name="routing",
            feedback=feedback,
            source="rule",
        )
        if self.business is not None and rollout.mode in ("train", "prod"):
            # evaluation replays (val, test) reach no customer: no business outcome, no handoff
            prompt_version = rollout.resource(PROMPT_RESOURCE).version
            self.business.schedule(rollout.rollout_id, correct, Handoff(task, prompt, str(prompt_version)))
        if feedback is not None:
            rollout.fail(feedback)


def business_outcome(correct: bool, rng: random.Random) -> tuple[float, str]:
    """What happens to the ticket later: resolved (1.0) or escalated to a human (0.0)."""
    resolved = rng.random() < (0.9 if correct else 0.25)
    return (1.0, "resolved") if resolved else (0.0, "escalated to a human")


class Handoff:
    """What a human needs to take over a ticket: the task, and the prompt the model was given."""

    __slots__ = ("task", "prompt", "prompt_version")

    def __init__(self, task: dict[str, Any], prompt: Prompt, prompt_version: str) -> None:
        self.task, self.prompt, self.prompt_version = task, prompt, prompt_version


def record_human_handoff(client: AgentStream, handoff: Handoff, escalated_from: str) -> str:
    """The human files the ticket correctly; recorded as a rollout with one human-answered call."""
    task = handoff.task
    # the human continues the prompt the model was given, as the model should have
    call = (" " + format_call(task["queue"], task.get("priority", "normal"))).removeprefix(
        handoff.prompt.response_prefix
    )
    with Rollout(client, {"ticket_id": task.get("ticket_id"), "escalated_from": escalated_from}) as rollout:
        with rollout.span(
            "human_agent",
            kind="llm",
            attributes={
                genai.OPERATION_NAME: "text_completion",
                genai.REQUEST_MODEL: "human",
                genai.INPUT_MESSAGES: json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": handoff.prompt.text}]}]
                ),
                genai.OUTPUT_MESSAGES: json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": call}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
            },
        ) as span:
            span.set_resource(PROMPT_RESOURCE, handoff.prompt_version)
        rollout.emit_reward(1.0, name="routing", source="human", feedback="filed by a human agent")
        rollout.emit_reward(1.0, name="resolution", source="human", feedback="resolved by a human agent")
    return rollout.rollout_id


class BusinessEvents:
    """Business outcomes arriving after the agent's run, by rollout id (as a webhook would); an
    escalated ticket is then filed by a human (:func:`record_human_handoff`)."""

    def __init__(self, client: AgentStream, seed: int, delay: tuple[float, float] = (0.5, 3.0)) -> None:
        self._client = client
        self._rng = random.Random(seed)
        self._delay = delay
        self._heap: list[tuple[float, int, str, float, str, Handoff | None]] = []
        self.handoffs = 0
        self._lock = threading.Condition()
        self._count = 0
        self._closed = False
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="business-events", daemon=True)
        self._thread.start()

    def schedule(self, rollout_id: str, correct: bool, handoff: Handoff | None = None) -> None:
        with self._lock:
            value, what = business_outcome(correct, self._rng)
            due = time.monotonic() + self._rng.uniform(*self._delay)
            heapq.heappush(self._heap, (due, self._count, rollout_id, value, what, handoff))
            self._count += 1
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap and not self._closed:
                    self._lock.wait()
                if not self._heap:
                    return
                due, _, rollout_id, value, what, handoff = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0 and not self._closed:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
            self._client.emit_reward(
                value,
                name="resolution",
                source="business_event",
                rollout_id=rollout_id,
                feedback=what,
                handoff="human" if value == 0.0 else None,
            )
            self.sent += 1
            if value == 0.0 and handoff is not None:
                record_human_handoff(self._client, handoff, rollout_id)
                self.handoffs += 1

    def close(self) -> None:
        """Send what is still scheduled (at once), then stop."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()


__all__ = [
    "DEMO_MIN_REWARD",
    "PROMPT_RESOURCE",
    "SEED_PROMPT",
    "BusinessEvents",
    "Handoff",
    "SupportAgent",
    "business_outcome",
    "create_ticket",
    "format_call",
    "parse_call",
    "record_human_handoff",
]
