"""The quickstart behind ``agentstream demo``: bring the embedded stack up, run the example
support agent on a batch of tickets, deliver delayed business rewards, and show what landed in
ClickHouse."""

from __future__ import annotations

import heapq
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console
from rich.table import Table

import agentstream
from agentstream.deploy.stack import Stack
from agentstream.producers.client import AgentStream
from agentstream.settings import Settings
from agentstream.sinks.connect import connect

from . import support_agent


class DelayedRewards:
    """Business events arriving later than the agent's run, by rollout id (a webhook, say)."""

    def __init__(self, client: AgentStream, seed: int) -> None:
        self._client = client
        self._rng = random.Random(seed)
        self._heap: list[tuple[float, int, str, float, str]] = []
        self._lock = threading.Condition()
        self._count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="business-events", daemon=True)
        self._thread.start()

    def schedule(self, rollout_id: str, correct: bool) -> None:
        value, what = support_agent.business_outcome(correct, self._rng)
        due = time.monotonic() + self._rng.uniform(0.2, 1.5)
        with self._lock:
            heapq.heappush(self._heap, (due, self._count, rollout_id, value, what))
            self._count += 1
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap and not self._closed:
                    self._lock.wait()
                if not self._heap:
                    return
                due, _, rollout_id, value, what = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
            self._client.emit_reward(
                value, name="resolution", source="business_event", rollout_id=rollout_id, feedback=what
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()


def _wait_for_rows(client: Any, expected: dict[str, int], rollout_ids: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = {
            table: int(
                client.query(
                    f"SELECT count() FROM {table} WHERE rollout_id IN {{ids:Array(String)}}", parameters={"ids": rollout_ids}
                ).result_rows[0][0]
            )
            for table in expected
        }
        if all(counts[t] >= n for t, n in expected.items()):
            break
        time.sleep(0.25)
    return counts


def run(settings: Settings, tickets: int = 200, workers: int = 4, seed: int = 7, console: Console | None = None) -> dict[str, Any]:
    """Run the quickstart end to end and print what landed; returns the figures."""
    console = console or Console()
    started = time.monotonic()
    with Stack(settings) as stack:
        with console.status("Starting the embedded stack (Kafka, topics, ClickHouse sink)..."):
            stack.wait_ready()
        console.print(f"[green]Stack up[/] — Kafka {stack.bootstrap_servers}, data in {settings.data_dir}")
        resolved = stack.resolved_settings()
        client = agentstream.init(resolved, service_name="support-agent")
        business = DelayedRewards(client, seed)
        batch = support_agent.make_tickets(tickets, seed)
        correct = 0
        rollout_ids: list[str] = []
        with console.status(f"Running the support agent on {tickets} tickets..."):
            with ThreadPoolExecutor(workers) as pool:
                for rollout_id, outcome in pool.map(support_agent.run_ticket, batch):
                    business.schedule(rollout_id, outcome["correct"])
                    correct += outcome["correct"]
                    rollout_ids.append(rollout_id)
            business.close()
            client.flush(30)
        agentstream.shutdown()
        expected = {"spans": tickets * 3, "rewards": tickets * 2, "rollout_events": tickets * 2}
        with console.status("Waiting for the sink to land everything in ClickHouse..."):
            ch = connect(resolved)
            counts = _wait_for_rows(ch, expected, rollout_ids, timeout=60)
        _report(console, ch, counts, expected, rollout_ids)
        summary = {
            "tickets": tickets,
            "routed_correctly": correct,
            "rows": counts,
            "complete": all(counts[t] >= n for t, n in expected.items()),
            "wall_s": round(time.monotonic() - started, 2),
        }
        ch.close()
    return summary


def _report(console: Console, ch: Any, counts: dict[str, int], expected: dict[str, int], rollout_ids: list[str]) -> None:
    landed = Table(title="What landed in ClickHouse")
    landed.add_column("table")
    landed.add_column("rows", justify="right")
    landed.add_column("expected", justify="right")
    for table, n in counts.items():
        landed.add_row(table, str(n), str(expected[table]))
    console.print(landed)

    per_queue = ch.query(
        """
        SELECT JSONExtractString(e.task, 'ticket_id') AS ticket, s.attributes['agentstream.route.queue'] AS routed,
               r.value AS routing, b.value AS resolution
        FROM rollout_events AS e
        INNER JOIN spans AS s ON s.rollout_id = e.rollout_id AND s.name = 'route'
        INNER JOIN (SELECT rollout_id, value FROM rewards WHERE name = 'routing') AS r ON r.rollout_id = e.rollout_id
        INNER JOIN (SELECT rollout_id, value FROM rewards WHERE name = 'resolution') AS b ON b.rollout_id = e.rollout_id
        WHERE e.type = 'attempt_started' AND e.rollout_id IN {ids:Array(String)}
        """,
        parameters={"ids": rollout_ids},
    ).result_rows
    by_queue: dict[str, list[tuple[float, float]]] = {}
    for _, routed, routing, resolution in per_queue:
        by_queue.setdefault(routed, []).append((routing, resolution))
    table = Table(title="Rewards by routed queue (rule reward now, business outcome later)")
    for column in ("routed to", "tickets", "mean routing reward", "resolved"):
        table.add_column(column, justify="right" if column != "routed to" else "left")
    for queue, values in sorted(by_queue.items()):
        n = len(values)
        table.add_row(
            queue, str(n), f"{sum(v for v, _ in values) / n:.2f}", f"{sum(r for _, r in values) / n:.0%}"
        )
    console.print(table)

    failures = ch.query(
        "SELECT feedback, count() AS n FROM rewards WHERE name = 'routing' AND value < 1 "
        "AND rollout_id IN {ids:Array(String)} GROUP BY feedback ORDER BY n DESC LIMIT 5",
        parameters={"ids": rollout_ids},
    ).result_rows
    if failures:
        table = Table(title="Most common routing mistakes (reward feedback)")
        table.add_column("feedback")
        table.add_column("count", justify="right")
        for feedback, n in failures:
            table.add_row(feedback or "", str(n))
        console.print(table)
    console.print(
        "Query it yourself while the stack runs: [bold]agentstream up[/] then "
        "[bold]agentstream sql \"SELECT kind, count() FROM spans GROUP BY kind\"[/]"
    )
