"""What the dashboard answers with: JSON (orjson) and the Jinja templates with their formatting filters."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import orjson
from pydantic import BaseModel
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .queries import FAILURE_CAUSES

TEMPLATES = Path(__file__).parent / "templates"


class JSONResponse(Response):
    """JSON via orjson: datetimes in ISO 8601 (UTC), NaN as null."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content,
            default=_json_default,
            option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS,
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value >= 60_000:
        return f"{value / 60_000:.1f} min"
    if value >= 1_000:
        return f"{value / 1_000:.2f} s"
    return f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _cost(value: float | None) -> str:
    if not value:
        return "0"
    return f"{value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"{value:,.2f}"


def _when(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def dashboard_templates() -> Jinja2Templates:
    """The dashboard's templates: every value escaped, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is escaped; nothing a rollout recorded can inject markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ms=_ms, pct=_pct, num=_num, cost=_cost, when=_when)
    env.globals.update(
        FAILURE_CAUSES=FAILURE_CAUSES,
        STATUSES=("succeeded", "failed", "running", "queuing", "requeuing", "cancelled"),
    )
    return Jinja2Templates(env=env)
