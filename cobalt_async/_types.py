"""
Shared type aliases, among them the ASGI vocabulary.

The ASGI aliases are copied (as Starlette's ``starlette.types`` spells them) so that the pure
ASGI app in ``cobalt_async.asgi`` needs no web framework installed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
