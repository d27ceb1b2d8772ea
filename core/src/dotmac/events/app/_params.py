"""How a service handler's parameters are filled: typed payloads and injected objects.

Everything here runs once per handler, when the app binds it; the callables it
returns are what runs per event.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import BaseValidationError

from ..bus import EventBus
from ..errors import ConfigurationError, PayloadValidationError
from ..event import Event

__all__ = ["Structure", "ParamPlan", "make_converter", "plan_parameters", "unstructure"]

Structure = Callable[[dict[str, Any]], Any]
"""Turns an event's payload into the value of the handler's payload parameter."""

# Where each parameter's value comes from.
EVENT = "event"
BUS = "bus"
APP = "app"
PAYLOAD = "payload"


def make_converter() -> cattrs.Converter:
    """The default converter of an :class:`App`: JSON-friendly (ISO datetimes, ...).

    Extra keys in a payload are ignored so that producers can add fields before
    every consumer knows them.
    """
    from cattrs.preconf.orjson import make_converter as make_orjson_converter

    return make_orjson_converter()


def _pydantic_model(tp: Any) -> bool:
    # Only look when the service itself imported pydantic: it is never a dependency.
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(tp, type):
        return False
    base = getattr(pydantic, "BaseModel", None)
    return base is not None and issubclass(tp, base) and hasattr(tp, "model_validate")


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def _structured_type(tp: Any) -> bool:
    return isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp) or _is_typeddict(tp))


def _cattrs_structure(converter: cattrs.Converter, tp: type[Any], where: str) -> Structure:
    get_hook = getattr(converter, "get_structure_hook", None)
    try:
        hook: Callable[[Any, Any], Any] = (
            get_hook(tp) if get_hook is not None else functools.partial(_structure_with, converter)
        )
    except Exception as exc:  # cattrs cannot build a hook for a field type
        raise ConfigurationError(f"{where}: cattrs cannot structure {tp.__qualname__}: {exc}") from exc
    name = tp.__qualname__

    def structure(payload: dict[str, Any]) -> Any:
        try:
            return hook(payload, tp)
        except (BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
            messages = cattrs.transform_error(exc, path="payload")
            raise PayloadValidationError(
                f"does not structure as {name}: " + "; ".join(messages), field="payload"
            ) from exc

    return structure


def _structure_with(converter: cattrs.Converter, value: Any, tp: Any) -> Any:
    return converter.structure(value, tp)


def _pydantic_structure(model: Any) -> Structure:
    validate = model.model_validate
    name = model.__qualname__
    pydantic_error = sys.modules["pydantic"].ValidationError

    def structure(payload: dict[str, Any]) -> Any:
        try:
            return validate(payload)
        except pydantic_error as exc:
            messages = [
                f"{err['msg']} @ payload"
                + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                for err in exc.errors()
            ]
            raise PayloadValidationError(
                f"does not validate as {name}: " + "; ".join(messages), field="payload"
            ) from None

    return structure


def _dict_payload(payload: dict[str, Any]) -> Any:
    return payload


@attrs.frozen
class ParamPlan:
    """Where each argument of a handler comes from, and how its payload is structured."""

    sources: tuple[str, ...]
    structure: Structure | None
    payload_type: Any
    is_async: bool


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target: Any = fn if inspect.isroutine(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    target = inspect.unwrap(target)
    # Parameters only: a return annotation naming a local class must not stop the handler.
    annotations = {k: v for k, v in getattr(target, "__annotations__", {}).items() if k != "return"}
    shim = types.SimpleNamespace(__annotations__=annotations, __globals__=getattr(target, "__globals__", {}))
    try:
        return typing.get_type_hints(shim)
    except NameError as exc:
        raise ConfigurationError(
            f"handler {_name(fn)}: an annotation cannot be resolved ({exc}); "
            "define the payload class at module level"
        ) from exc


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def plan_parameters(
    fn: Callable[..., Any], converter: cattrs.Converter, app_type: type | None = None
) -> ParamPlan:
    """Decide, once, how to call ``fn`` for an event.

    The first parameter receives the payload: structured into an attrs class, a
    dataclass, a ``TypedDict`` or a pydantic model, passed as the raw ``dict``
    (annotated ``dict``), or the :class:`Event` itself (annotated ``Event`` or not
    annotated). Later parameters are filled by annotation: ``Event``, ``EventBus``
    or ``App`` (``app_type``); a parameter with a default is left to it.
    """
    where = f"handler {_name(fn)}"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot read its signature: {exc}") from exc
    hints = _hints(fn)
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    required_kw = [
        p.name
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if required_kw:
        raise ConfigurationError(f"{where}: keyword-only parameters without a default: {required_kw}")
    if not params:
        raise ConfigurationError(
            f"{where}: a handler takes at least one parameter (the payload or the event)"
        )
    sources: list[str] = []
    structure: Structure | None = None
    payload_type: Any = Event
    for index, param in enumerate(params):
        tp = hints.get(param.name, inspect.Parameter.empty)
        origin = typing.get_origin(tp) or tp
        if tp is Event or (index == 0 and tp is inspect.Parameter.empty):
            sources.append(EVENT)
        elif isinstance(origin, type) and issubclass(origin, EventBus):
            sources.append(BUS)
        elif app_type is not None and isinstance(origin, type) and issubclass(origin, app_type):
            sources.append(APP)
        elif index == 0:
            sources.append(PAYLOAD)
            payload_type = tp
            if _pydantic_model(tp):
                structure = _pydantic_structure(tp)
            elif _structured_type(tp):
                structure = _cattrs_structure(converter, tp, where)
            elif origin in (dict, Mapping) or tp is Any:
                structure = _dict_payload
            else:
                raise ConfigurationError(
                    f"{where}: cannot deliver a payload as {tp!r}; annotate the first parameter with "
                    "an attrs class, a dataclass, a TypedDict, a pydantic model, dict or Event"
                )
        elif param.default is not inspect.Parameter.empty:
            break
        else:
            raise ConfigurationError(
                f"{where}: parameter {param.name!r} must be annotated Event, EventBus or App "
                "(or have a default)"
            )
    return ParamPlan(
        sources=tuple(sources), structure=structure, payload_type=payload_type, is_async=_is_async(fn)
    )


def unstructure(converter: cattrs.Converter, value: Any) -> dict[str, Any]:
    """The payload ``dict`` of a handler's or a publisher's value."""
    if isinstance(value, dict):
        return value
    tp = type(value)
    if attrs.has(tp) or dataclasses.is_dataclass(tp):
        data = converter.unstructure(value)
    elif _pydantic_model(tp):
        data = value.model_dump(mode="json")
    else:
        raise PayloadValidationError(
            f"cannot publish a {tp.__qualname__}; return a dict, an Event, an attrs class, "
            "a dataclass or a pydantic model",
            field="payload",
        )
    if not isinstance(data, dict):
        raise PayloadValidationError(f"{tp.__qualname__} does not unstructure to a dict", field="payload")
    return data
