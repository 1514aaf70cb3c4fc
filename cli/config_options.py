"""Command-line options built from a config dataclass: a trainer's options are its Config's fields.

    @train_app.command("sft")
    @config_options(StreamSFTConfig)
    def train_sft(config: StreamSFTConfig, once: OnceOpt = False) -> None:
        ...

The command's ``config`` parameter is replaced by one option per field of the config, and the
command is called with the config built from them. A field's metadata
(:func:`agentstream.trainers.config_fields.option`) gives the option's help, flag and range;
fields marked ``API_ONLY`` get none. So a new option is one field of the config, and its checks
(``__post_init__``) are the ones the API runs: a ``ValueError`` there is shown as a red line and
the command exits with 2, like any bad option.

Options come in this order: required fields, then the fields the config class declares itself
(an algorithm's own knobs), then inherited ones, each in declaration order. A field's type maps to
the option's: ``tuple[str, ...]`` is a repeatable option (not given: the field's default),
``X | None`` with a non-``None`` default is ``X``, a ``Literal`` of strings is ``str``, and a
callable alternative (``Callable | str``) is dropped: the command line gives the
``"module:function"`` string.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, cast, get_args, get_origin

import typer

from agentstream.cli.context import err_console

__all__ = ["config_fields", "config_options"]

_UNIONS = (typing.Union, types.UnionType)


def config_fields(config_cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of ``config_cls`` that are command-line options, in the order they are shown."""
    declared_at: dict[str, int] = {}  # field -> how far up the class hierarchy it is declared
    for depth, klass in enumerate(config_cls.__mro__):
        for name in inspect.get_annotations(klass):
            declared_at.setdefault(name, depth)
    options = [f for f in dataclasses.fields(config_cls) if f.metadata.get("cli", True)]
    return sorted(options, key=lambda f: (not _required(f), declared_at[f.name]))


def config_options(config_cls: type[Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Replace a command's ``config`` parameter with the options of ``config_cls`` (see the module doc)."""
    hints = typing.get_type_hints(config_cls)
    options = {f.name: _option(f, hints[f.name]) for f in config_fields(config_cls)}

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        if "config" not in signature.parameters:
            raise TypeError(f"{command.__name__} needs a `config` parameter to put the options in")
        clashes = options.keys() & signature.parameters.keys()
        if clashes:
            raise TypeError(f"{command.__name__}: parameters {sorted(clashes)} are also config fields")
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == "config":
                parameters.extend(option for option, _ in options.values())
            else:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        def run(**values: Any) -> None:
            fields: dict[str, Any] = {}
            for name, (_, repeated) in options.items():
                value = values.pop(name)
                if repeated:
                    if not value:
                        continue  # not given: the field's default
                    value = tuple(value)
                fields[name] = value
            try:
                config = config_cls(**fields)
            except ValueError as e:
                err_console.print(str(e), style="red", markup=False, highlight=False)
                raise typer.Exit(2) from e
            command(config=config, **values)

        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        # typer reads the options from the signature (inspect.signature honours __signature__)
        cast(Any, run).__signature__ = signature.replace(parameters=parameters)
        return run

    return decorate


def _required(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _option(spec: dataclasses.Field[Any], hint: Any) -> tuple[inspect.Parameter, bool]:
    """The typer parameter of a field, and whether it repeats."""
    default = inspect.Parameter.empty if _required(spec) else spec.default
    annotation, repeated = _option_type(hint, default, spec.name)
    metadata = spec.metadata
    flags = [metadata["flag"]] if "flag" in metadata else []
    info = typer.Option(*flags, help=metadata.get("help"), min=metadata.get("min"), max=metadata.get("max"))
    parameter = inspect.Parameter(
        spec.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None if repeated else default,
        annotation=Annotated[annotation, info],
    )
    return parameter, repeated


def _option_type(hint: Any, default: Any, name: str) -> tuple[Any, bool]:
    members = get_args(hint) if get_origin(hint) in _UNIONS else (hint,)
    kept = [m for m in members if m is not type(None) and get_origin(m) is not Callable]
    if len(kept) != 1:
        raise TypeError(f"config field {name}: no command-line type for {hint}")
    [option_type] = kept
    repeated = get_origin(option_type) is tuple
    if repeated:
        option_type = types.GenericAlias(list, get_args(option_type)[:1])  # tuple[str, ...] -> list[str]
    elif get_origin(option_type) is Literal:
        option_type = type(get_args(option_type)[0])
    if repeated or default is None:
        option_type = option_type | None
    return option_type, repeated
