"""
Cobalt's signature scheme: compact JSON, the HMAC, the verifier and the delivery headers.

Cobalt signs ``JSON.stringify(payload)`` with HMAC-SHA256 and sends the hex digest in the
``cobalt-verification`` header. The raw bytes are tried first; a body re-serialised on the
way (a proxy that pretty-prints, say) is tried again in its compact form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from pydantic import ValidationError

from ._errors import ConfigurationError, WebhookVerificationError
from .models import Event, parse_event

SIGNATURE_HEADER = "cobalt-verification"
DELIVERY_ID_HEADER = "webhook-id"
CONTENT_LENGTH_HEADER = "content-length"

Headers: TypeAlias = Mapping[str, str] | Iterable[tuple[bytes | str, bytes | str]]


def compact_json(payload: Any) -> bytes:
    """
    Serialise *payload* exactly as JavaScript's ``JSON.stringify`` does.

    Numbers are written by JavaScript's rules (``1e-7``, ``0.00001``, ``1e+21``, integers past
    2**53 rounded to a double), and a lone surrogate, which EHR text cut mid-emoji holds, as
    its ``\\udXXX`` escape: what Cobalt's Node service signs.
    """
    return _stringify(payload).encode()


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return _string(value)
    if value is None or value is True or value is False:
        return _CONSTANTS[value]
    if isinstance(value, int):
        return str(value) if -_MAX_SAFE <= value <= _MAX_SAFE else _big_integer(value)
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, Mapping):
        members = (f"{_key(key)}:{_stringify(item)}" for key, item in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(_stringify, value)) + "]"
    msg = f"{type(value).__name__} is not JSON serializable"
    raise TypeError(msg)


_CONSTANTS = {None: "null", True: "true", False: "false"}
_MAX_SAFE = 2**53
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(text: str) -> str:
    # The stdlib escapes quotes, backslashes and control characters as JavaScript does; a
    # surrogate left in a str is a lone one (a pair decodes to one code point).
    quoted = json.dumps(text, ensure_ascii=False)
    if _LONE_SURROGATE.search(quoted) is None:
        return quoted
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


def _key(key: object) -> str:
    if not isinstance(key, str):
        msg = f"JSON object keys must be str, not {type(key).__name__}"
        raise TypeError(msg)
    return _string(key)


def _big_integer(value: int) -> str:
    # JavaScript parsed it into a double; one past the largest double is Infinity: null.
    try:
        return js_number(float(value))
    except OverflowError:
        return "null"


def js_number(value: float) -> str:
    """*value* as JavaScript writes it (ECMA-262 Number::toString), for JSON.stringify."""
    if not math.isfinite(value):
        return "null"  # JSON.stringify writes NaN and the infinities as null
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    digits, point = _shortest_digits(abs(value))
    # The value is 0.DIGITS x 10**point; JavaScript calls point "n" and len(digits) "k".
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    exponent = point - 1
    mantissa = digits if count == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """The shortest digits that round-trip *value* (as ``repr`` finds them), and the point."""
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    joined = whole + fraction
    digits = joined.lstrip("0")
    point = len(whole) + int(exponent or 0) - (len(joined) - len(digits))
    return digits.rstrip("0"), point


def sign_webhook(payload: Mapping[str, Any] | bytes | str, secret: str) -> str:
    """
    Sign a webhook body exactly as Cobalt does: hex HMAC-SHA256 of ``JSON.stringify(payload)``.

    A mapping is serialised compactly first; bytes and str are signed as given.
    """
    if isinstance(payload, Mapping):
        body = compact_json(payload)
    else:
        body = payload.encode() if isinstance(payload, str) else payload
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Verifier:
    """
    Checks Cobalt signatures against one or more secrets, some of them retiring at a time.

    *clock* gives the time retirements are measured on (``time.monotonic`` unless a test
    injects one); a secret is dropped at the first check at or after its retirement.
    """

    def __init__(
        self, secrets: Sequence[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(secrets, str) or not secrets or not all(secrets):
            msg = (
                "secrets must be a non-empty list of webhook secrets, e.g. "
                "secrets=[os.environ['COBALT_WEBHOOK_SECRET']]; during a rotation pass both"
            )
            raise ConfigurationError(msg)
        self.clock = clock
        # secret -> (its HMAC state, when it retires or None): keyed by the secret itself, so
        # adding one twice is harmless; never shown by any repr.
        self._keys: dict[str, tuple[_Key, float | None]] = {}
        self._macs: list[_Key] = []
        self._next_retirement = math.inf
        for secret in secrets:
            self.add(secret)

    @property
    def count(self) -> int:
        """How many secrets verify now."""
        self._prune()
        return len(self._keys)

    def add(self, secret: str) -> None:
        """Accept *secret* from now on, until it is retired (an earlier retirement is cancelled)."""
        if not isinstance(secret, str) or not secret.strip():
            msg = "a webhook secret must be a non-empty string, such as rotate_secret() returned"
            raise ConfigurationError(msg)
        self._keys[secret] = (_Key(secret.encode()), None)
        self._rebuild()

    def retire(self, secret: str, *, after: float) -> bool:
        """Stop accepting *secret* *after* seconds (0: now); ``False`` if it was not accepted."""
        entry = self._keys.get(secret)
        if entry is None:
            return False
        self._keys[secret] = (entry[0], self.clock() + max(0.0, after))
        self._rebuild()
        return True

    def retire_all_but(self, keep: str, *, after: float) -> None:
        """Retire every secret but *keep* *after* seconds (each keeps an earlier retirement)."""
        deadline = self.clock() + max(0.0, after)
        for secret, (mac, retires) in list(self._keys.items()):
            if secret != keep:
                self._keys[secret] = (mac, deadline if retires is None else min(retires, deadline))
        self._rebuild()

    def _prune(self) -> None:
        # Without a retirement due, no clock read: once per delivery.
        if self._next_retirement < math.inf and self.clock() >= self._next_retirement:
            self._rebuild()

    def _rebuild(self) -> None:
        now = self.clock()
        retired = [secret for secret, (_, at) in self._keys.items() if at is not None and at <= now]
        for secret in retired:
            del self._keys[secret]
        self._macs = [mac for mac, _ in self._keys.values()]
        pending = [at for _, at in self._keys.values() if at is not None and at > now]
        self._next_retirement = min(pending, default=math.inf)

    def _matches(self, body: bytes, signature: bytes) -> bool:
        self._prune()
        found = False
        for key in self._macs:
            # No early exit: the time taken does not tell which secret matched.
            found |= hmac.compare_digest(key.hexdigest(body), signature)
        return found

    def verify(self, body: bytes, signature: str | bytes | None) -> Any:
        """
        Return the parsed body if it was re-serialised to verify, else ``RAW``.

        Raises:
            WebhookVerificationError: No secret produced this signature.
        """
        if not signature:
            msg = f"missing {SIGNATURE_HEADER} header: this request was not signed by Cobalt"
            raise WebhookVerificationError(msg)
        # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a
        # garbage header must be a plain mismatch (401), not a crash.
        if isinstance(signature, str):
            signature = signature.encode("utf-8", "backslashreplace")
        expected = signature.strip().lower()
        if self._matches(body, expected):
            return RAW
        try:
            parsed = json.loads(body)
            compact = compact_json(parsed)
        except (ValueError, RecursionError):
            # Not JSON, nested past the recursion limit, or a lone surrogate that UTF-8
            # cannot encode: no compact form was signed, and an unsigned body must get a
            # 401, not crash the receiver.
            pass
        else:
            if self._matches(compact, expected):
                return parsed
        msg = f"{SIGNATURE_HEADER} does not match: wrong secret, or the body was altered"
        raise WebhookVerificationError(msg)


class _Key:
    """
    One secret's HMAC-SHA256 (RFC 2104), its padded key already hashed in.

    The same digest as ``hmac.new(key, body, "sha256")``, for half its cost per delivery: a
    copy of each of two hash states, where ``hmac``'s own copy builds an object in Python.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def hexdigest(self, body: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()


_BLOCK = hashlib.sha256().block_size
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))

RAW: Any = object()
"""What :meth:`Verifier.verify` returns when the raw bytes verified: parse them as they are."""

HeaderValue: TypeAlias = str | bytes | None
_NAMES = (SIGNATURE_HEADER, DELIVERY_ID_HEADER, CONTENT_LENGTH_HEADER)
_SIGNATURE_KEY, _DELIVERY_ID_KEY, _CONTENT_LENGTH_KEY = (name.encode() for name in _NAMES)
# Where each header this module reads goes in delivery_headers' answer, by str and bytes name.
_WANTED: dict[str | bytes, int] = {
    name: index for index, text in enumerate(_NAMES) for name in (text, text.encode())
}


def delivery_headers(headers: Headers) -> tuple[HeaderValue, str | None, HeaderValue]:
    """
    Signature, delivery id (as text) and ``Content-Length``, as sent.

    Names are case-insensitive; of a repeated header, the last value counts (if a sender
    mixes spellings of one name, the lower-case one may win: the HMAC decides either way).
    """
    if type(headers) is list:
        # ASGI servers send lower-case names: a dict of them answers at C speed. When one
        # of the three is missing, it may be there in another case: the full scan looks.
        by_name = dict(headers)
        signature = by_name.get(_SIGNATURE_KEY)
        delivery_id = by_name.get(_DELIVERY_ID_KEY)
        length = by_name.get(_CONTENT_LENGTH_KEY)
        if signature is not None and delivery_id is not None and length is not None:
            return signature, _text(delivery_id), length
    scanned: list[HeaderValue] = [None, None, None]
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        slot = _WANTED.get(key.lower())
        if slot is not None:
            scanned[slot] = value
    return scanned[0], _text(scanned[1]), scanned[2]


def _text(value: HeaderValue) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def verify_webhook(body: bytes, headers: Headers, secrets: Sequence[str]) -> Event:
    """
    Verify a delivery and parse its event, without storing anything.

    Raises:
        WebhookVerificationError: The signature is missing or wrong, or the body is not an event.
    """
    parsed = Verifier(secrets).verify(body, delivery_headers(headers)[0])
    try:
        return parse_event(body if parsed is RAW else parsed)
    except ValidationError as exc:
        msg = "the signed body is not a Cobalt event"
        raise WebhookVerificationError(msg) from exc
