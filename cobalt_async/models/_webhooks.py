"""Webhook registrations, in either of the shapes Cobalt's two doc sets give them."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr, model_validator

from ._base import CobaltModel, LaxStr

# Cobalt's documents name the same three things differently (reference §6.2): the first
# name present wins.
_ALIASES = {
    "id": ("id", "webhook_id"),
    "url": ("url", "webhook_url"),
    "secret": ("secret", "webhook_secret", "webhook_secret_key"),
}


def _canonical(raw: Any) -> Any:
    """*raw* with Cobalt's alternative names mapped to ``id``, ``url`` and ``secret``."""
    if not isinstance(raw, dict):
        return raw
    inner = raw.get("webhook")
    # API reference: {"webhook": {...}}; guide: the fields at the top level.
    source = {**raw, **inner} if isinstance(inner, dict) else raw
    found = {
        name: next((source[key] for key in keys if source.get(key) is not None), None)
        for name, keys in _ALIASES.items()
    }
    return {**source, **found}


class Webhook(CobaltModel):
    """
    A registered webhook URL: ``id``, ``url`` and its signing ``secret`` where Cobalt sent them.

    ``secret`` is a ``SecretStr``: ``hook.secret.get_secret_value()`` is the string a
    ``WebhookReceiver`` takes; the repr, ``str()`` and JSON dumps show ``**********``.
    """

    id: LaxStr | None = None
    url: str | None = None
    secret: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _either_shape(cls, raw: Any) -> Any:
        return _canonical(raw)


class WebhookList(CobaltModel):
    """
    ``GET /v1/webhook``: the registered URLs and their ids.

    The guide's shape lists ``webhook_urls`` and one account-wide ``webhook_secret_key``,
    which each listed webhook then carries as its ``secret``; a list under ``webhooks``
    (the API reference's shape) is read the same way.
    """

    webhooks: list[Webhook] = []
    secret: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _either_shape(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        found = _canonical(raw)
        items = raw.get("webhooks") or raw.get("webhook_urls") or []
        if not items and isinstance(raw.get("webhook_url"), str):
            items = [{"url": raw["webhook_url"]}]  # one URL, no list: a single registration
        shared = found["secret"]
        hooks = [
            {**_canonical(item), "secret": _canonical(item)["secret"] or shared}
            if isinstance(item, dict)
            else item
            for item in items
        ]
        return {"webhooks": hooks, "secret": shared}
