"""Config fields that carry their command-line form: the one place an option is described.

A trainer config is a dataclass whose fields say, in their metadata, how they appear on the
command line (as trl's configs carry ``metadata={"help": ...}``):

    lora_r: int = field(default=0, metadata=option("LoRA rank; 0 trains every weight.", min=0))
    learning_rate: float | None = field(default=None, metadata=option("Learning rate.", flag="--lr"))
    trl_args: dict[str, Any] = field(default_factory=dict, metadata=API_ONLY)

The ``agentstream train`` commands are built from these fields (``agentstream.cli.config_options``),
and the config's ``__post_init__`` calls :func:`check_ranges` so that API callers get the same
checks as the command line. A new option is one field.
"""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType
from typing import Any

__all__ = ["API_ONLY", "check_choice", "check_ranges", "flag_of", "named", "option"]

#: metadata of a field without a command-line option (lists, dicts, rarely tuned knobs)
API_ONLY: MappingProxyType[str, Any] = MappingProxyType({"cli": False})


def option(
    help: str | None = None,
    *,
    flag: str | None = None,
    min: float | None = None,
    max: float | None = None,
) -> dict[str, Any]:
    """Field metadata of a command-line option.

    Args:
        help: the option's help text.
        flag: its declaration when it is not ``--field-name`` (``"--lr"``, ``"--vllm/--no-vllm"``).
        min: the smallest value allowed (the command line and :func:`check_ranges` both enforce it).
        max: the largest value allowed.
    """
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if min is not None:
        metadata["min"] = min
    if max is not None:
        metadata["max"] = max
    return metadata


def flag_of(config: Any, name: str) -> str:
    """The command-line flag of a config field (``--lr`` for ``learning_rate``)."""
    [spec] = [f for f in fields(config) if f.name == name]
    declared = spec.metadata.get("flag")
    return declared.split("/")[0] if declared else "--" + name.replace("_", "-")


def named(config: Any, name: str) -> str:
    """A field as error messages name it: ``learning_rate (--lr)``."""
    return f"{name} ({flag_of(config, name)})"


def check_ranges(config: Any) -> None:
    """Raise ``ValueError`` for a field outside its option's ``min``/``max`` (``None`` means unset)."""
    for spec in fields(config):
        value = getattr(config, spec.name)
        if value is None:
            continue
        low, high = spec.metadata.get("min"), spec.metadata.get("max")
        if low is not None and value < low:
            raise ValueError(f"{named(config, spec.name)} must be at least {low}, not {value!r}")
        if high is not None and value > high:
            raise ValueError(f"{named(config, spec.name)} must be at most {high}, not {value!r}")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless the field ``name`` is one of ``choices``."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"{named(config, name)} must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}"
        )
