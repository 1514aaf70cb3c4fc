"""What every instrumented test agent shares: the standard OTLP/HTTP exporter set up the way a user
would (endpoint from ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, resource from ``OTEL_RESOURCE_ATTRIBUTES``,
the bearer token read from a file so it never sits in an environment), a copy of each exported
request for the Kafka-path test, and rewards the way each ecosystem sends them.

Each agent runs in its own process (``python -m tests.agents.<name> ...``): instrumentations patch
the OpenAI client globally, so two of them must never share an interpreter.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

#: the bundled Gemma 3 270M is a base model: short completions keep the tests quick on 2 cores
MAX_TOKENS = 12


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-url", required=True, help="the OpenAI-compatible model server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--token-file", type=Path, required=True, help="the receiver's bearer token")
    parser.add_argument("--api-key-file", type=Path, required=True, help="the model server's api key")
    parser.add_argument("--copy-dir", type=Path, help="also write each export request's bytes here")
    parser.add_argument("--result", type=Path, required=True, help="what the agent did, as JSON")
    return parser.parse_args()


class RequestCopy(SpanExporter):
    """Writes each batch as the ``ExportTraceServiceRequest`` bytes the OTLP exporters send (the same
    encoder), one file per batch: what a Collector's Kafka exporter puts in ``otlp_spans``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_spans(spans).SerializeToString()
        (self.folder / f"request-{self.count:04d}.pb").write_bytes(body)
        self.count += 1
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def api_key(args: argparse.Namespace) -> str:
    """The model server's api key, from its file (never from the command line or an environment)."""
    return str(args.api_key_file.read_text().strip())


def tracer_provider(args: argparse.Namespace) -> TracerProvider:
    """The global tracer provider exporting to the receiver; the endpoint and resource come from the
    standard ``OTEL_*`` variables, the ``Authorization`` header from the token file."""
    token = args.token_file.read_text().strip()
    provider = TracerProvider(resource=Resource.create())  # merges OTEL_RESOURCE_ATTRIBUTES
    exporter = OTLPSpanExporter(headers={"Authorization": f"Bearer {token}"})
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if args.copy_dir is not None:
        provider.add_span_processor(BatchSpanProcessor(RequestCopy(args.copy_dir)))
    trace.set_tracer_provider(provider)
    return provider


def agl_reward(dimensions: dict[str, float]) -> None:
    """An Agent Lightning reward annotation: a span with ``agentlightning.reward.<k>.name/value``,
    one index per dimension (what ``agentlightning.emit_reward`` records)."""
    attributes: dict[str, Any] = {}
    for k, (name, value) in enumerate(dimensions.items()):
        attributes[f"agentlightning.reward.{k}.name"] = name
        attributes[f"agentlightning.reward.{k}.value"] = value
    with trace.get_tracer("agentlightning").start_as_current_span("agentlightning.annotation") as span:
        span.set_attributes(attributes)


def evaluation_result(span: trace.Span, name: str, score: float, response_id: str | None) -> None:
    """An OTel GenAI ``gen_ai.evaluation.result`` event on ``span`` (the evaluated operation)."""
    attributes: dict[str, Any] = {
        "gen_ai.evaluation.name": name,
        "gen_ai.evaluation.score.value": score,
        "gen_ai.evaluation.score.label": "pass" if score >= 0.5 else "fail",
        "gen_ai.evaluation.explanation": "the answer names a number",
    }
    if response_id:
        attributes["gen_ai.response.id"] = response_id
    span.add_event("gen_ai.evaluation.result", attributes)


def finish(provider: TracerProvider, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Flush every span to the receiver (and the copy), then report what was done."""
    if not provider.force_flush(30_000):
        raise SystemExit("spans were not exported within 30 s")
    provider.shutdown()
    args.result.write_text(json.dumps(result))


def score(text: str) -> float:
    """A rule reward: did the answer contain a digit (the model is a small base model)."""
    return 1.0 if any(c.isdigit() for c in text) else 0.0
