"""``client.webhooks``: register, list and remove webhook URLs, and rotate their secret."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import timedelta

import httpx

from ._errors import APIError, ConfigurationError, RequestValidationError
from ._http import Requester, parse_answer
from ._secrets_file import FILE_ENV, SecretsFile, grace_seconds, write
from .models import Webhook, WebhookList

_UNREADABLE = "Cobalt answered but not with a webhook registration"


class Webhooks:
    """
    Cobalt's webhook registrations (``/v1/webhook``).

    Retries: ``retrieve()`` and ``delete()`` are retried like every GET (a repeated DELETE
    removes nothing more). ``create()`` and ``rotate_secret()`` are POSTs and, like every
    create, never re-sent once they may have reached Cobalt: a second create registers the
    URL twice (every event delivered twice), and a second rotation replaces the secret the
    first one returned, which the lost answer carried.
    """

    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def create(self, url: str) -> Webhook:
        """
        Register *url*; the answer carries the secret deliveries are signed with.

        Raises:
            RequestValidationError: *url* is not an absolute ``https://`` URL; nothing was sent.
            APIError: Cobalt refused the request, or it failed in transit (not retried).
        """
        checked = _https_url(url)
        body = json.dumps({"webhook_url": checked}).encode()
        response = await self._requester.post("/webhook", body)
        hook = parse_answer(Webhook, response, problem=_UNREADABLE, outcome_unknown=True)
        # The guide's answer carries only the secret: the URL is the one just registered.
        return hook if hook.url else hook.model_copy(update={"url": checked})

    async def retrieve(self) -> WebhookList:
        """The registered URLs with their ids (``.webhooks``), and the account secret if sent."""
        response = await self._requester.get("/webhook", {})
        return parse_answer(WebhookList, response, problem=_UNREADABLE, outcome_unknown=False)

    async def delete(self, webhook_id: str) -> None:
        """
        Remove the registration *webhook_id*; Cobalt stops delivering to its URL.

        Raises:
            RequestValidationError: *webhook_id* is empty or not a plain id; nothing was sent.
            NotFoundError: Cobalt knows no such webhook.
        """
        await self._requester.delete(f"/webhook/{_plain_id(webhook_id)}")

    async def rotate_secret(
        self,
        webhook_id: str,
        *,
        secrets_file: str | os.PathLike[str] | None = None,
        retire_old_after: float | timedelta = timedelta(hours=24),
    ) -> Webhook:
        """
        Give *webhook_id* a new signing secret; Cobalt accepts the previous one for 24 hours.

        With *secrets_file* (the file every ``WebhookReceiver(secrets_file=...)`` of a fleet
        reads), the file is rolled around the call: first marked ``expect-new-secret`` (a
        delivery already signed with the new secret gets a 503, which Cobalt retries,
        rather than a 401), then given the new secret, the old ones retiring after
        *retire_old_after*. Without it, hand the new secret to your receivers with
        ``WebhookReceiver.rotate_secret`` (docs/webhooks.md, "Rotating a secret").

        Raises:
            RequestValidationError: *webhook_id* is empty or not a plain id; nothing was sent.
            ConfigurationError: *secrets_file* cannot be read or has no secret; nothing was sent.
            APIError: Cobalt refused the request, or it failed in transit (not retried).
                A *secrets_file* is then put back as it was, unless the outcome is unknown.
        """
        plain = _plain_id(webhook_id)
        grace = grace_seconds(retire_old_after)
        if secrets_file is None:
            return await self._rotate(plain)
        before = SecretsFile(secrets_file).read()
        if not before.entries:
            msg = f"the webhook secrets file ({FILE_ENV}) lists no secret to rotate from"
            raise ConfigurationError(msg)
        write(secrets_file, replace(before, expecting=True))
        try:
            hook = await self._rotate(plain)
        except APIError as exc:
            if not exc.outcome_unknown:
                write(secrets_file, before)
            # Outcome unknown: Cobalt may sign with a secret nobody has; the hold stays
            # for its minute, and client.webhooks.retrieve() may show the new secret.
            raise
        if hook.secret is None:
            write(secrets_file, before)
            msg = "Cobalt's rotation answer carries no secret: the secrets file is unchanged"
            raise APIError(msg, method="POST", path=f"/v1/webhook/{plain}/rotate-secret")
        write(secrets_file, before.rotated(hook.secret.get_secret_value(), grace=grace))
        return hook

    async def _rotate(self, plain: str) -> Webhook:
        response = await self._requester.post(f"/webhook/{plain}/rotate-secret", b"{}")
        hook = parse_answer(Webhook, response, problem=_UNREADABLE, outcome_unknown=True)
        return hook if hook.id else hook.model_copy(update={"id": plain})


def _https_url(url: object) -> str:
    problem = None
    if not isinstance(url, str):
        problem = f"must be a string, got {type(url).__name__}"
    else:
        try:
            parsed = httpx.URL(url.strip())
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or not parsed.host:
            problem = "must be an absolute URL such as https://example.com/webhooks/cobalt"
        elif parsed.scheme != "https":
            problem = f"must use https (Cobalt delivers only over HTTPS), got {parsed.scheme}://"
    if problem is not None:
        msg = f"Invalid field url: {problem}"
        raise RequestValidationError(msg, field="url")
    assert isinstance(url, str)
    return url.strip()


def _plain_id(webhook_id: object) -> str:
    text = (
        str(webhook_id)
        if isinstance(webhook_id, int) and not isinstance(webhook_id, bool)
        else webhook_id
    )
    if (
        not isinstance(text, str)
        or not text.strip()
        or any(c in text for c in "/?#%")
        or not text.isprintable()
    ):
        msg = (
            "Invalid field webhook_id: must be the id of a registered webhook "
            "(client.webhooks.retrieve() lists them), such as 'wh_123456789'"
        )
        raise RequestValidationError(msg, field="webhook_id")
    return text.strip()
