"""FakeCobalt's ``/v1/webhook`` endpoints: registrations and secret rotation."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from .._types import Receive
from ._wire import Reply, error, read_json

_PREFIX = "/v1/webhook"
_ROTATE = "/rotate-secret"


class _Signer(Protocol):
    """What the registry changes on rotation: the secret deliveries are signed with."""

    webhook_secret: str


@dataclass(slots=True)
class _Registration:
    id: str
    url: str


class WebhookRegistry:
    """
    Registered URLs, and the signing secret they share.

    Cobalt's guide has one account secret, its API reference one per webhook (reference
    §6.2). The fake does both at once: every registration reports the one secret it signs
    deliveries with, and rotating any of them replaces that secret, for every URL. Deliveries
    keep going where the fake was told (``webhook_url=`` or ``receiver=``): a registration
    is recorded, it does not redirect them.
    """

    def __init__(self, signer: _Signer, rng: random.Random) -> None:
        self._signer = signer
        self._rng = rng
        self._next = 123456789
        self.registrations: dict[str, _Registration] = {}
        self.retired_secrets: list[str] = []
        """Secrets replaced by a rotation, oldest first (Cobalt still accepts them for 24 h)."""

    def handles(self, path: str) -> bool:
        return path == _PREFIX or path.startswith(_PREFIX + "/")

    async def route(self, method: str, path: str, receive: Receive) -> Reply:
        rest = path.removeprefix(_PREFIX).strip("/")
        if not rest:
            if method == "POST":
                return await self._create(receive)
            if method == "GET":
                return self._listing()
            return error(405, "Method not allowed.", [(b"allow", b"POST, GET")])
        webhook_id, _, action = rest.partition("/")
        if action == _ROTATE.strip("/") and method == "POST":
            return self._rotate(webhook_id)
        if not action and method == "DELETE":
            return self._delete(webhook_id)
        return error(404, "Not found.")

    async def _create(self, receive: Receive) -> Reply:
        body = await read_json(receive)
        if isinstance(body, Reply):
            return body
        # The newer schema names it webhook_url, the older one url: both are accepted.
        url = body.get("webhook_url", body.get("url"))
        if not isinstance(url, str) or not url.startswith("https://"):
            return error(400, "webhook_url is required and must use https.")
        registration = _Registration(f"wh_{self._next}", url)
        self._next += 1
        self.registrations[registration.id] = registration
        return Reply(200, {"success": True, "webhook": self._shown(registration)})

    def _listing(self) -> Reply:
        shown = [self._shown(registration) for registration in self.registrations.values()]
        urls = [
            {"id": item["id"], "url": item["webhook_url"], "secret": item["secret"]}
            for item in shown
        ]
        payload = {
            "success": True,
            "webhook_urls": urls,
            "webhook_secret_key": self._signer.webhook_secret,
        }
        return Reply(200, payload)

    def _delete(self, webhook_id: str) -> Reply:
        if self.registrations.pop(webhook_id, None) is None:
            return error(404, "Webhook not found.")
        return Reply(200, {"success": True, "message": "Webhook URL removed successfully"})

    def _rotate(self, webhook_id: str) -> Reply:
        if webhook_id not in self.registrations:
            return error(404, "Webhook not found.")
        self.retired_secrets.append(self._signer.webhook_secret)
        self._signer.webhook_secret = f"whsec_{self._rng.getrandbits(160):040x}"
        return Reply(
            200,
            {"success": True, "webhook": {"id": webhook_id, "secret": self._signer.webhook_secret}},
        )

    def _shown(self, registration: _Registration) -> dict[str, str]:
        return {
            "id": registration.id,
            "webhook_url": registration.url,
            "secret": self._signer.webhook_secret,
        }
