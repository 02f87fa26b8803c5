"""Context scopes: Segment ``context`` fields for every message built inside one.

``tracklane.context(ip=..., page={...})`` opens a scope, as a ``with`` block or a decorator.
Scopes nest (an inner one merges over the outer one) and live in a :class:`ContextVar`,
so they are local to the thread and to the asyncio task that opened them. The message
builders ask :func:`current_scope` once per call; with no scope open that is one
``ContextVar.get`` and nothing else.
"""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar, Token
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar, cast

from .exceptions import ValidationError

__all__ = ["Scope", "context", "current_scope"]

F = TypeVar("F", bound=Callable[..., Any])


class Scope:
    """The merged fields of the open scopes, and the default identity they give.

    Immutable once built: opening a scope builds a new one over its parent.
    """

    __slots__ = ("anonymous_id", "fields", "user_id")

    def __init__(
        self, fields: Dict[str, Any], user_id: Optional[str], anonymous_id: Optional[str]
    ) -> None:
        self.fields = fields
        self.user_id = user_id
        self.anonymous_id = anonymous_id

    def over(self, parent: Optional[Scope]) -> Scope:
        """This scope merged over ``parent`` (the scope open when this one is entered)."""
        if parent is None:
            return self
        return Scope(
            merge(parent.fields, self.fields),
            parent.user_id if self.user_id is None else self.user_id,
            parent.anonymous_id if self.anonymous_id is None else self.anonymous_id,
        )

    def context_for(self, explicit: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """A message's ``context``: these fields, with a call's own ``context=`` winning."""
        if explicit is None:
            return {key: dict(v) if type(v) is dict else v for key, v in self.fields.items()}
        return merge(self.fields, explicit)


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    """``top`` over ``base``, key by key; where both hold a mapping, key by key inside it.

    A ``None`` in ``top`` removes the key. Nested mappings are copied, so a message's
    context never shares a dict with a scope.
    """
    merged = {key: dict(v) if type(v) is dict else v for key, v in base.items()}
    for key, value in top.items():
        if value is None:
            merged.pop(key, None)
            continue
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, dict):
            below.update(value)
        elif isinstance(value, Mapping):
            merged[key] = dict(value)
        else:
            merged[key] = value
    return merged


_current: ContextVar[Optional[Scope]] = ContextVar("tracklane.context", default=None)
current_scope = _current.get
"""The innermost open scope in this thread or task, or ``None``."""


def _snapshot(value: Any) -> Any:
    """A deep copy of dicts, lists, tuples and sets, so later mutation changes nothing."""
    if isinstance(value, Mapping):
        return {str(key): _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_snapshot(item) for item in value]
    return value


def _identity(field: str, value: Any) -> Optional[str]:
    from .messages import coerce_id  # messages imports this module; the cycle is broken here

    return coerce_id(field, value)


class context:  # lower case: used like a function, `with tracklane.context(ip=...)`
    """Set Segment ``context`` fields for every message built inside this scope.

    ``tracklane.context(ip="1.2.3.4", page={"path": "/"})`` works as a ``with`` block and
    as a decorator (of plain and ``async`` functions). Fields with names that are not
    identifiers go in a mapping given first: ``tracklane.context({"my-field": 1})``.

    - Scopes nest: an inner scope's fields merge over the outer ones key by key (and key
      by key inside mappings such as ``page``); a field set to ``None`` is removed.
    - A call's own ``context=`` wins over the scope, by the same rule.
    - ``user_id`` and ``anonymous_id`` are not context fields: they are the ``userId``
      and ``anonymousId`` of calls that give none (``alias`` needs its own ``user_id``).
    - Scopes are local to the thread and the asyncio task (``contextvars``): a thread
      started inside one does not see it, a task created inside one starts with a copy.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        fields: Optional[Mapping[str, Any]] = None,
        /,
        *,
        user_id: Any = None,
        anonymous_id: Any = None,
        **more: Any,
    ) -> None:
        if fields is not None and not isinstance(fields, Mapping):
            raise ValidationError(
                "context", f"must be a mapping (dict), not {type(fields).__name__}"
            )
        own: Dict[str, Any] = _snapshot(fields) if fields is not None else {}
        own.update(_snapshot(more))
        self._scope = Scope(
            own, _identity("user_id", user_id), _identity("anonymous_id", anonymous_id)
        )
        self._tokens: List[Token[Optional[Scope]]] = []

    def enter(self) -> Token[Optional[Scope]]:
        """Open the scope in the current thread or task; give the token to :meth:`exit`.

        For frameworks whose request hooks are separate calls (Flask, Celery signals).
        """
        return _current.set(self._scope.over(_current.get()))

    @staticmethod
    def exit(token: Token[Optional[Scope]]) -> None:
        """Close the scope opened by :meth:`enter` with ``token``."""
        _current.reset(token)

    def __enter__(self) -> context:
        self._tokens.append(self.enter())
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        """Use the scope as a decorator: each call of ``func`` runs inside it."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = self.enter()
                try:
                    return await func(*args, **kwargs)
                finally:
                    _current.reset(token)

            return cast(F, run_async)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = self.enter()
            try:
                return func(*args, **kwargs)
            finally:
                _current.reset(token)

        return cast(F, run)

    def __repr__(self) -> str:
        return f"<tracklane.context {self._scope.fields!r}>"
