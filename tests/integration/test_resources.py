"""Resources against the real broker: immutable versions, labels, rollback, and runners that pick
up new versions mid-run, honour pins and split traffic between labels."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from typer.testing import CliRunner

from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.resources.store import ResourceError, ResourceStore, pick_label, traffic_bucket
from agentstream.settings import Settings
from tests.helpers import read_topic, wait_for
from tests.integration.test_runner import make_task, put_tasks

pytestmark = pytest.mark.integration

TEMPLATE_V1 = "Route this ticket.\nTicket: {{ticket}}\nQueue:"
TEMPLATE_V2 = 'Examples:\nTicket: refund please\nCall: {"queue": "billing"}\nTicket: {{ ticket }}\nCall:'


@pytest.fixture
def rsettings(settings: Settings) -> Settings:
    runner = settings.runner.model_copy(
        update={
            "group_id": f"runners-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2_000,
            "lazy_start_seconds": 0.3,
            "heartbeat_seconds": 0.2,
            "shutdown_grace_seconds": 5.0,
        }
    )
    return settings.model_copy(update={"runner": runner})


@pytest.fixture
def store(rsettings: Settings) -> Any:
    with ResourceStore(rsettings, who="test") as s:
        yield s


def test_versions_are_immutable_numbered_and_checked(rsettings: Settings, store: ResourceStore) -> None:
    v1 = store.publish("prompt", template=TEMPLATE_V1, labels=["production"])
    assert (v1.version, v1.variables, v1.created_by) == (1, ["ticket"], "test")
    # the same content again is the same version, not a new one
    assert store.publish("prompt", template=TEMPLATE_V1).version == 1
    v2 = store.publish("prompt", template=TEMPLATE_V2, parent_version=1, lineage={"trainer": "apo"})
    assert v2.version == 2 and v2.parent_version == 1 and v2.lineage == {"trainer": "apo"}
    assert v2.render(ticket="where is my parcel").endswith("Ticket: where is my parcel\nCall:")

    with pytest.raises(ResourceError, match="used but not declared"):
        store.publish("prompt", template="Ticket: {{ticket}} from {{customer}}", variables=["ticket"])
    with pytest.raises(ResourceError, match="uses no"):
        store.publish("prompt", template="no variables at all")
    with pytest.raises(ResourceError, match="no version 9"):
        store.publish("prompt", template=TEMPLATE_V1 + " ", parent_version=9)
    with pytest.raises(ResourceError, match="needs a uri"):
        store.publish("model", kind="model_checkpoint")

    # a second, independent reader sees exactly the same history from the log
    with ResourceStore(rsettings, follow=False) as other:
        state = other.state("prompt")
        assert sorted(state.versions) == [1, 2]
        assert state.versions[2].template == TEMPLATE_V2
        assert other.labels("prompt") == {"production": 1}


def test_concurrent_publishers_never_share_a_version(rsettings: Settings) -> None:
    stores = [ResourceStore(rsettings, who=f"p{i}").open() for i in range(3)]
    results: list[int] = []
    lock = threading.Lock()

    def publish(store: ResourceStore, i: int) -> None:
        for j in range(3):
            version = store.publish("raced", template=f"writer {i} take {j}: {{{{x}}}}")
            with lock:
                results.append(version.version)

    threads = [threading.Thread(target=publish, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(results) == list(range(1, 10))
        state = stores[0].state("raced")
        assert sorted(state.versions) == list(range(1, 10))
        assert len({v.template for v in state.versions.values()}) == 9
    finally:
        for s in stores:
            s.close()


def test_labels_move_and_roll_back(rsettings: Settings, store: ResourceStore) -> None:
    for i in range(3):
        store.publish("p", template=f"v{i + 1}: {{{{q}}}}")
    store.label("p", "production", 1)
    store.label("p", "candidate", 2)
    promoted = store.label("p", "production", "candidate", reason="beat production")
    assert (promoted.version, promoted.previous_version) == (2, 1)
    store.label("p", "candidate", None)
    assert store.labels("p") == {"production": 2}

    back = store.rollback("p")
    assert (back.version, back.previous_version) == (1, 2)
    assert store.get("p", "production").version == 1
    store.rollback("p", to=3)
    assert store.get("p", "production").version == 3
    with pytest.raises(ResourceError, match="no 'canary' label"):
        store.rollback("p", "canary")
    assert "-v1: {{q}}" in store.diff("p", 1, 3) and "+v3: {{q}}" in store.diff("p", 1, 3)

    history = [(e.label, e.version) for e in store.state("p").history]
    assert history == [
        ("production", 1),
        ("candidate", 2),
        ("production", 2),
        ("candidate", None),
        ("production", 1),
        ("production", 3),
    ]
    # every move is a record on the labels topic (the sink keeps the history in ClickHouse)
    records = read_topic(rsettings, rsettings.topic("resource-labels"), expected=6)
    assert [(r["label"], r["version"]) for r in records] == history


def test_pick_label_is_sticky_and_follows_weights() -> None:
    weights = {"production": 0.7, "candidate": 0.3}
    picks = Counter(
        pick_label(weights, ["production", "candidate"], traffic_bucket(f"k{i}", "r")) for i in range(4000)
    )
    assert 0.66 < picks["production"] / 4000 < 0.74
    assert all(
        pick_label(weights, ["production", "candidate"], traffic_bucket("k7", "r"))
        == pick_label(weights, ["production", "candidate"], traffic_bucket("k7", "r"))
        for _ in range(5)
    )
    assert pick_label(weights, ["production"], 0.99) == "production"  # no candidate: all production
    assert pick_label(weights, [], 0.5) is None


def test_runner_hot_swaps_versions_honours_pins_and_splits_traffic(
    rsettings: Settings, store: ResourceStore
) -> None:
    store.publish("support", template="v1 {{ticket}}", labels=["production"])
    seen: dict[str, tuple[str, str]] = {}
    lock = threading.Lock()

    def agent(task: dict, rollout: Any) -> float:
        prompt = rollout.resource("support")
        with lock:
            seen[rollout.rollout_id] = (str(prompt.version), prompt.render(ticket=task["t"]))
        return 1.0

    sdk = AgentStream(rsettings)
    runner = Runner(
        agent, rsettings, client=sdk, concurrency=2, traffic={"production": 0.5, "candidate": 0.5}
    )
    try:
        runner.start()
        tasks = [make_task({"t": f"a{i}"}) for i in range(4)]
        first = [t.rollout_id for t in tasks]
        put_tasks(rsettings, tasks)
        assert wait_for(lambda: all(r in seen for r in first), 30)
        assert {seen[r] for r in first} == {("1", f"v1 a{i}") for i in range(4)}

        # a new production version while the runner runs: the next attempts use it, no restart
        store.publish("support", template="v2 {{ticket}}", parent_version=1, labels=["production"])
        second = [make_task({"t": f"b{i}"}) for i in range(4)]
        put_tasks(rsettings, second)
        assert wait_for(lambda: all(t.rollout_id in seen for t in second), 30)
        assert {seen[t.rollout_id][0] for t in second} == {"2"}

        # a pinned task uses its version whatever the labels say
        pinned = [
            make_task({"t": "pin"}, resources={"support": "1"}),
            make_task({"t": "pin"}, resources={"support": "v1"}),
        ]
        missing = make_task({"t": "pin"}, resources={"support": "7"})
        put_tasks(rsettings, [*pinned, missing])
        assert wait_for(lambda: all(t.rollout_id in seen for t in pinned), 30)
        assert {seen[t.rollout_id][0] for t in pinned} == {"1"}

        # A/B: half the task keys go to the candidate, and a key always lands in the same arm
        store.publish("support", template="v3 {{ticket}}", parent_version=2, labels=["candidate"])
        keys = [f"customer-{i % 20}" for i in range(60)]
        split = [make_task({"t": k}, metadata={"task_key": k}) for k in keys]
        put_tasks(rsettings, split)
        assert wait_for(lambda: all(t.rollout_id in seen for t in split), 60)
        by_key: dict[str, set[str]] = {}
        for task, key in zip(split, keys):
            by_key.setdefault(key, set()).add(seen[task.rollout_id][0])
        assert all(len(v) == 1 for v in by_key.values())  # sticky
        arms = Counter(next(iter(v)) for v in by_key.values())
        assert set(arms) == {"2", "3"} and min(arms.values()) >= 4
    finally:
        runner.stop()
        sdk.close()

    # stamped: outcome events carry the versions; the rollout's spans are stamped too
    events = read_topic(rsettings, rsettings.topic("rollout-events"), quiet=1.0, timeout=5)
    finished = {e["rollout_id"]: e for e in events if e["type"] == "attempt_finished"}
    for task in second:
        assert finished[task.rollout_id]["resources"] == {"support": "2"}
    assert finished[missing.rollout_id]["status"] == "failed"
    assert "does not exist" in finished[missing.rollout_id]["error"]
    spans = read_topic(rsettings, rsettings.topic("spans"), quiet=1.0, timeout=5)
    root = next(s for s in spans if s["rollout_id"] == pinned[0].rollout_id)
    assert (root["resource_name"], root["resource_version"]) == ("support", "1")


def test_cli_resources(rsettings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from agentstream.cli import app
    from agentstream.cli import context as cli_module

    monkeypatch.setattr(cli_module.console, "width", 200)
    for key, value in rsettings.to_env().items():
        monkeypatch.setenv(key, value)
    cli = CliRunner()
    template = tmp_path / "prompt.txt"
    template.write_text("Ticket: {{ticket}}\nQueue:")

    def run(*args: str) -> Any:
        result = cli.invoke(app, list(args), catch_exceptions=False)
        return result

    out = run("resources", "publish", "support", "--template-file", str(template), "--label", "production")
    assert out.exit_code == 0, out.output
    template.write_text("Examples first.\nTicket: {{ticket}}\nQueue:")
    assert (
        run(
            "resources", "publish", "support", "--template-file", str(template), "--label", "candidate"
        ).exit_code
        == 0
    )
    listed = run("resources", "list")
    assert "support" in listed.output and "production" in listed.output
    shown = run("resources", "show", "support", "candidate")
    assert "Examples first." in shown.output
    diff = run("resources", "diff", "support", "1", "2")
    assert "+Examples first." in diff.output
    assert run("resources", "label", "support", "production", "2").exit_code == 0
    assert run("resources", "rollback", "support").exit_code == 0
    with ResourceStore(rsettings, follow=False) as check:
        assert check.labels("support") == {"production": 1, "candidate": 2}
    template.write_text("no variables")
    bad = run("resources", "publish", "support", "--template-file", str(template))
    assert bad.exit_code != 0 and "uses no" in bad.output
