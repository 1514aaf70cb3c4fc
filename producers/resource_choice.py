"""Which resource versions an attempt uses: the task's pins, else the A/B split's label."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agentstream.resources.store import ResourceError, ResourceStore, pick_label, traffic_bucket
from agentstream.schemas import ResourceVersion, Task

#: (stamps: name -> version, as spans and events carry them; the resolved versions by name; why
#: the attempt cannot run, or ``None``)
Resolution = tuple[dict[str, str], dict[str, Any], str | None]


def choose_resources(
    store: ResourceStore | None, names: list[str] | None, traffic: Mapping[str, float], task: Task
) -> Resolution:
    """Per resource (``names``, default: every resource the store knows): the pinned version,
    else the version of the label the task key falls into under ``traffic``; prompt templates
    first (the first resource is what the rollout's spans are stamped with).

    The task key is ``task.metadata["task_key"]``, else the rollout id, so retries stay in their
    arm. A pin on a resource the store does not manage is kept as an opaque stamp; a pin on a
    version that does not exist makes the attempt fail.
    """
    if store is None:
        return dict(task.resources), {}, None
    known = set(store.names())
    wanted = names if names is not None else sorted(known)
    key = task.metadata.get("task_key") or task.rollout_id
    resolved: dict[str, ResourceVersion] = {}
    opaque = {name: pin for name, pin in task.resources.items() if name not in known}
    for name in dict.fromkeys([*task.resources, *wanted]):
        if name in opaque:
            continue
        pin = task.resources.get(name)
        if pin is not None:
            version = store.find(name, pin)
            if version is None:  # published a moment ago elsewhere: give the follower a moment
                store.wait_for(_has_version(name, pin), timeout=5.0)
                version = store.find(name, pin)
            if version is None:
                return (
                    dict(task.resources),
                    resolved,
                    f"resource {name} pinned to {pin!r}, which does not exist",
                )
        else:
            try:
                labels = store.labels(name)
            except ResourceError:
                continue
            label = pick_label(traffic, labels, traffic_bucket(key, name))
            if label is None:
                continue  # nothing to offer (e.g. no production label yet)
            version = store.find(name, labels[label])
            if version is None:
                continue
        resolved[name] = version
    ordered: dict[str, Any] = dict(
        sorted(resolved.items(), key=lambda item: item[1].kind != "prompt_template")
    )
    stamps = {name: str(v.version) for name, v in ordered.items()}
    stamps.update(opaque)
    return stamps, ordered, None


def _has_version(name: str, pin: str) -> Callable[[ResourceStore], bool]:
    def has(store: ResourceStore) -> bool:
        return store.find(name, pin) is not None

    return has
