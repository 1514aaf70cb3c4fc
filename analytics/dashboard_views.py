"""The dashboard's pages and their JSON twins: one :class:`Dashboard` per app, holding its ClickHouse
access and templates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from agentstream.settings import Settings

from .dashboard_clickhouse import ClickHouse, Unavailable
from .dashboard_render import JSONResponse, dashboard_templates
from .dead_letters import DeadLetterFilter, DeadLetterQueries
from .doctor import diagnose
from .queries import DashboardQueries, RolloutFilter, parse_time

logger = logging.getLogger(__name__)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


class Dashboard:
    """The routes; one instance per app, holding its ClickHouse client and templates."""

    def __init__(self, settings: Settings, clickhouse: ClickHouse) -> None:
        self.settings = settings
        self.clickhouse = clickhouse
        self.templates = dashboard_templates()

    def page(self, request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        context = {
            "nav": name.removesuffix(".html"),
            "refresh_seconds": self.settings.dashboard.refresh_seconds,
            "auth": True,  # the dashboard always requires its token (dashboard_auth)
            **context,
        }
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def read(self, fn: Callable[[DashboardQueries], Any]) -> Any:
        return self.clickhouse.run(fn)

    # ---- rollouts
    def rollouts_page(self, request: Request) -> Response:
        where = _filter(request)
        page = self.read(lambda q: q.rollouts(where))
        if _wants_json(request):
            return JSONResponse(page)
        return self.page(
            request, "rollouts.html", {"page": page, "where": where, "params": request.query_params}
        )

    def rollout_page(self, request: Request) -> Response:
        rollout_id = request.path_params["rollout_id"]
        emit_uncredited = bool(getattr(self.settings.streams, "emit_uncredited_calls", True))

        def read(q: DashboardQueries) -> dict[str, Any]:
            detail: dict[str, Any] = q.rollout(rollout_id)
            # "Why no triplet?": the same diagnosis as `agentstream doctor`
            detail["doctor"] = diagnose(q.client, rollout_id, emit_uncredited=emit_uncredited).to_dict()
            return detail

        detail = self.read(read)
        if _wants_json(request):
            return JSONResponse(detail)
        return self.page(request, "rollout.html", detail)

    # ---- resources
    def resources_page(self, request: Request) -> Response:
        resources = self.read(lambda q: q.resources())
        if _wants_json(request):
            return JSONResponse({"resources": resources})
        return self.page(request, "resources.html", {"resources": resources})

    def resource_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = self.read(lambda q: q.resource(name))
        if _wants_json(request):
            return JSONResponse(detail)
        a, b = _version_pair(request, detail["versions"])
        diff = self.read(lambda q: q.diff(name, a, b)) if a is not None and b is not None else None
        return self.page(request, "resource.html", {**detail, "diff": diff, "a": a, "b": b})

    def diff_api(self, request: Request) -> Response:
        name = request.path_params["name"]
        a, b = _int_param(request, "a"), _int_param(request, "b")
        if a is None or b is None:
            raise HTTPException(400, "give the two versions to compare: ?a=1&b=2")
        return JSONResponse(self.read(lambda q: q.diff(name, a, b)))

    # ---- A/B
    def ab_page(self, request: Request) -> Response:
        since = _time_param(request, "since")
        resources = self.read(lambda q: q.ab_resources())
        resource = request.query_params.get("resource") or (resources[0] if resources else "")
        ab = self.read(lambda q: q.ab(resource, since)) if resource else None
        if _wants_json(request):
            return JSONResponse({**(ab or {"resource": None, "versions": []}), "resources": resources})
        context = {
            "ab": ab,
            "resources": resources,
            "resource": resource,
            "since": request.query_params.get("since", ""),
        }
        return self.page(request, "ab.html", context)

    def ab_series(self, request: Request) -> Response:
        resource = request.query_params.get("resource", "")
        if not resource:
            raise HTTPException(400, "name the resource: ?resource=<name>")
        since = _time_param(request, "since")
        return JSONResponse(self.read(lambda q: q.ab_series(resource, since)))

    # ---- dead letters
    def dead_letters_page(self, request: Request) -> Response:
        where = DeadLetterFilter.model_validate(_query_values(request))
        page = self.read(lambda q: DeadLetterQueries(q.client).page(where))
        if _wants_json(request):
            return JSONResponse(page)
        context = {"page": page, "where": where, "params": request.query_params}
        return self.page(request, "dead_letters.html", context)

    # ---- health (sign-in and sign-out: dashboard_auth.Guard)
    def healthz(self, request: Request) -> Response:
        try:
            self.read(lambda q: q.client.query("SELECT 1"))
            clickhouse = "ok"
        except Unavailable as e:
            # open to anyone (probes): say no more than that; the cause goes to the log
            logger.warning("Dashboard health: ClickHouse unavailable: %s", e)
            clickhouse = "unavailable"
        return JSONResponse({"ok": True, "clickhouse": clickhouse})

    # ---- errors
    def error(self, request: Request, status: int, title: str, message: str) -> Response:
        if _wants_json(request):
            headers = {"Retry-After": "2"} if status == 503 else None
            return JSONResponse({"error": title, "detail": message}, status_code=status, headers=headers)
        response = self.page(
            request, "error.html", {"status": status, "title": title, "message": message}, status
        )
        if status == 503:
            response.headers["Retry-After"] = "2"
        return response

    async def on_not_found(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 404, "Not found", str(exc))

    async def on_invalid(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, ValidationError):
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'filters'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
        else:
            message = str(exc)
        return self.error(request, 400, "Bad request", message)

    async def on_unavailable(self, request: Request, exc: Exception) -> Response:
        return self.error(
            request, 503, "ClickHouse is not reachable yet",
            f"{exc}. The dashboard tries again on every request; with the embedded stack, the sink serves "
            "the queries once it has started.",
        )  # fmt: skip

    async def on_query_error(self, request: Request, exc: Exception) -> Response:
        logger.warning("dashboard query failed: %s", exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self.error(request, 500, "Query failed", first_line[:500])

    async def on_http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed"}
        return self.error(request, exc.status_code, titles.get(exc.status_code, "Error"), exc.detail)


def _filter(request: Request) -> RolloutFilter:
    """The rollouts filter from the query string; empty form fields mean 'any'."""
    return RolloutFilter.model_validate(_query_values(request))


def _query_values(request: Request) -> dict[str, str]:
    """The query string's non-empty fields (an empty form field means 'any')."""
    return {k: v for k, v in request.query_params.items() if v.strip() != ""}


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw.removeprefix("v"))
    except ValueError:
        raise HTTPException(400, f"{name}: {raw!r} is not a version number") from None


def _time_param(request: Request, name: str) -> datetime | None:
    try:
        return parse_time(request.query_params.get(name))
    except ValueError as e:
        raise HTTPException(400, f"{name}: {e}") from None


def _version_pair(request: Request, versions: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """The versions the resource page diffs: ``?a=&b=``, else the newest against its parent."""
    a, b = _int_param(request, "a"), _int_param(request, "b")
    if a is not None and b is not None:
        return a, b
    if not versions:
        return None, None
    newest = versions[0]
    parent = newest["parent_version"] or (versions[1]["version"] if len(versions) > 1 else None)
    return (parent, newest["version"]) if parent is not None else (None, None)
