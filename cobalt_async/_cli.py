"""The command line: ``python -m cobalt_async demo | simulate | listen | verify | db``."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import anyio

from ._errors import ConfigurationError
from ._version import __version__

_EXAMPLES = """\
examples:
  python -m cobalt_async demo --json
  python -m cobalt_async simulate --port 8001
  python -m cobalt_async listen --port 8000 --secret whsec_test
  python -m cobalt_async listen --forward-to http://127.0.0.1:8000/webhooks/cobalt \\
      --secret whsec_test
  python -m cobalt_async verify --secret whsec_test --signature 5f0c... --body-file body.json
  python -m cobalt_async db migrate --database-url postgresql://app@db:5432/app
  python -m cobalt_async COMMAND --help
"""
_DEMO_EXAMPLES = """\
examples:
  python -m cobalt_async demo
  python -m cobalt_async demo --tasks 1000 --concurrency 64 --json
  python -m cobalt_async demo --duplicate-rate 0.1 --early-rate 0.1 --drop-rate 0.05 \\
      --failure-rate 0.05 --http-error-rate 0.05
"""
_SIMULATE_EXAMPLES = """\
examples:
  python -m cobalt_async simulate --port 8001 \\
      --webhook-url http://127.0.0.1:8000/webhooks/cobalt --secret whsec_test
  then point your app at COBALT_BASE_URL=http://127.0.0.1:8001/v1 with
  COBALT_CLIENT_ID=ci_test COBALT_CLIENT_SECRET=cs_test COBALT_ACCESS_TOKEN=at_test
"""
_LISTEN_EXAMPLES = """\
examples:
  python -m cobalt_async listen --port 8000 --secret whsec_test
  python -m cobalt_async listen --port 8000 --secret OLD --secret NEW --path /hooks
  python -m cobalt_async listen --forward-to http://127.0.0.1:8000/webhooks/cobalt \\
      --secret whsec_test
  (polls Cobalt with COBALT_CLIENT_ID, COBALT_CLIENT_SECRET, COBALT_ACCESS_TOKEN and
  COBALT_BASE_URL; against `simulate --port 8001`: --base-url http://127.0.0.1:8001/v1
  --client-id ci_test --client-secret cs_test --access-token at_test)
"""
_VERIFY_EXAMPLES = """\
examples:
  python -m cobalt_async verify --secret whsec_test --signature 5f0c... --body-file body.json
  cat body.json | python -m cobalt_async verify --secret whsec_test --signature 5f0c...
"""
_DB_EXAMPLES = """\
examples:
  python -m cobalt_async db migrate --database-url postgresql://app@db:5432/app
  DATABASE_URL=postgresql://app@db:5432/app python -m cobalt_async db migrate --schema cobalt
"""


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a probability between 0 and 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.0 <= value <= 1.0:
        msg = f"expected a probability between 0 and 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            msg = f"expected a positive number, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if value <= 0:
            msg = f"expected a positive number, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        msg = f"expected a TCP port (0-65535), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _secret(text: str) -> str:
    if not text.strip():
        msg = "expected a webhook secret, got an empty string"
        raise argparse.ArgumentTypeError(msg)
    return text


def _webhook_url(text: str) -> str:
    scheme, _, rest = text.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/"):
        msg = f"expected an http:// or https:// URL, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _add_faults(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group("faults injected by the simulator")
    faults.add_argument("--failure-rate", type=_rate, default=0.0, help="jobs that end in *.failed")
    faults.add_argument("--duplicate-rate", type=_rate, default=0.0, help="webhooks sent twice")
    faults.add_argument(
        "--early-rate", type=_rate, default=0.0, help="webhooks sent before the POST response"
    )
    faults.add_argument(
        "--drop-rate", type=_rate, default=0.0, help="webhooks never sent (polling recovers them)"
    )
    faults.add_argument(
        "--http-error-rate",
        type=_rate,
        default=0.0,
        help="first delivery attempts lost to an HTTP error (Cobalt retries once after 1 s)",
    )
    faults.add_argument(
        "--lost-answer-rate",
        type=_rate,
        default=0.0,
        help="creates whose job is made but whose answer is lost (a 504): reconciled",
    )
    faults.add_argument(
        "--latency",
        type=_positive(float),
        default=0.2,
        help="mean seconds a job takes at Cobalt (uniform from half to 1.5x; default 0.2)",
    )
    faults.add_argument("--seed", type=int, default=None, help="make the faults reproducible")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cobalt-async",
        description="Cobalt task API tools: a demo, a simulator, a webhook listener, a verifier.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cobalt-async {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    demo = commands.add_parser(
        "demo",
        help="submit tasks and notes to a local simulator over real HTTP and await them all",
        epilog=_DEMO_EXAMPLES,
        formatter_class=raw,
    )
    demo.add_argument("--tasks", type=_positive(int), default=200, help="tasks to submit (200)")
    demo.add_argument("--concurrency", type=_positive(int), default=32, help="requests in flight")
    demo.add_argument("--timeout", type=_positive(float), default=120.0, help="overall deadline")
    demo.add_argument(
        "--poll-silence",
        type=_positive(float),
        default=None,
        help="seconds without a webhook before a handle polls Cobalt "
        "(default: 10, or 20x --latency when more)",
    )
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    demo.add_argument(
        "--sink",
        choices=("memory", "sqlite", "redis", "postgres"),
        default="memory",
        help="where outcomes meet waiters: the receiver stores into one instance and the client "
        "waits on another, as two workers would (memory: one shared instance)",
    )
    demo.add_argument(
        "--sink-url",
        help="the store of --sink (default: a temporary file for sqlite, "
        "REDIS_URL for redis, DATABASE_URL for postgres)",
    )
    _add_faults(demo)

    simulate = commands.add_parser(
        "simulate",
        help="run the Cobalt simulator as a local server",
        epilog=_SIMULATE_EXAMPLES,
        formatter_class=raw,
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=_port, required=True)
    simulate.add_argument(
        "--webhook-url", type=_webhook_url, help="where to POST signed webhooks (http or https)"
    )
    simulate.add_argument(
        "--secret", type=_secret, default="whsec_test", help="webhook signing secret"
    )
    simulate.add_argument("--client-id", default="ci_test")
    simulate.add_argument("--client-secret", default="cs_test")
    simulate.add_argument("--access-token", default="at_test")
    simulate.add_argument(
        "--job-id-type", choices=["int", "str", "mixed"], default="mixed", help="JSON type"
    )
    _add_faults(simulate)

    listen = commands.add_parser(
        "listen",
        help="receive, verify and print webhooks, or forward Cobalt's events to a local app",
        epilog=_LISTEN_EXAMPLES,
        formatter_class=raw,
    )
    where = listen.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=_port, help="receive webhooks on this port")
    where.add_argument(
        "--forward-to",
        type=_webhook_url,
        metavar="URL",
        help="poll Cobalt's webhook-events and deliver each new event to URL, signed",
    )
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument(
        "--secret",
        type=_secret,
        action="append",
        required=True,
        help="webhook secret (repeat to rotate; --forward-to signs with the last one)",
    )
    listen.add_argument("--path", default="/webhooks/cobalt", help="route (/webhooks/cobalt)")
    forward = listen.add_argument_group("with --forward-to (default: the COBALT_* variables)")
    forward.add_argument("--base-url", help="Cobalt's API, e.g. http://127.0.0.1:8001/v1")
    forward.add_argument("--client-id")
    forward.add_argument("--client-secret")
    forward.add_argument("--access-token")
    forward.add_argument(
        "--interval", type=_positive(float), default=2.0, help="seconds between polls (2)"
    )

    verify = commands.add_parser(
        "verify",
        help="check a captured webhook body and signature",
        epilog=_VERIFY_EXAMPLES,
        formatter_class=raw,
    )
    verify.add_argument(
        "--secret", type=_secret, action="append", required=True, help="repeat to try several"
    )
    verify.add_argument("--signature", required=True, help="the cobalt-verification header (hex)")
    verify.add_argument("--body-file", help="the raw body; standard input when absent")

    db = commands.add_parser(
        "db", help="PostgresSink's tables: create or upgrade them", epilog=_DB_EXAMPLES,
        formatter_class=raw,
    )  # fmt: skip
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    migrate = db_commands.add_parser(
        "migrate",
        help="create or upgrade the schema PostgresSink keeps its tables in",
        epilog=_DB_EXAMPLES,
        formatter_class=raw,
    )
    migrate.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql://user:password@host:5432/database (default: $DATABASE_URL)",
    )
    migrate.add_argument("--schema", default="cobalt", help="the sink's schema (cobalt)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the servers were up (while importing them)
        print("cobalt-async: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "verify":
        return _verify(args)
    if args.command == "db":
        return _migrate(args)
    try:
        # The server commands need the cli extra (uvicorn, rich): imported only when run.
        from ._commands import listen, simulate
        from ._demo import run_demo
        from ._servers import ListenError
    except ImportError as exc:
        print(
            f"cobalt-async {args.command}: needs uvicorn and rich: "
            f"pip install 'cobalt-async[cli]' ({exc.name} is missing)",
            file=sys.stderr,
        )
        return 2
    commands = {"demo": run_demo, "simulate": simulate, "listen": listen}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return anyio.run(commands[args.command], args)
    except (ListenError, ConfigurationError) as exc:
        print(f"cobalt-async {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cobalt-async {args.command}: stopped", file=sys.stderr)
        return 130


_HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def _verify(args: argparse.Namespace) -> int:
    from ._errors import WebhookVerificationError
    from ._signing import SIGNATURE_HEADER, verify_webhook

    if _HEX_SIGNATURE.fullmatch(args.signature.strip()) is None:
        print(
            "invalid: the signature is not 64 hex digits (the cobalt-verification header "
            "holds the hex HMAC-SHA256 of the body)",
            file=sys.stderr,
        )
        return 1
    source = args.body_file or "standard input"
    try:
        if args.body_file:
            with open(args.body_file, "rb") as file:
                body = file.read()
        else:
            body = sys.stdin.buffer.read()
    except OSError as exc:
        print(f"invalid: cannot read the body from {source}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        event = verify_webhook(body, {SIGNATURE_HEADER: args.signature}, args.secret)
    except WebhookVerificationError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(f"valid: {event.type} job_id={event.job_id}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from ._errors import ConfigurationError, SinkUnavailableError

    if args.database_url is None:
        print(
            "cobalt-async db migrate: error: give --database-url, or set DATABASE_URL (see --help)",
            file=sys.stderr,
        )
        return 2
    # The sink logs an outage as it starts and ends; here the one error line says it all.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        from .sinks import PostgresSink

        # A migration may wait on another one, or on a slow server: more than a command.
        sink = PostgresSink(args.database_url, schema=args.schema, command_timeout=30.0)
    except (ImportError, ConfigurationError) as exc:
        print(f"cobalt-async db migrate: {exc}", file=sys.stderr)
        return 2

    async def migrate() -> tuple[int, int]:
        try:
            return await sink.migrate()
        finally:
            await sink.aclose()

    try:
        before, after = anyio.run(migrate, backend="asyncio")
    except SinkUnavailableError as exc:
        print(f"cobalt-async db migrate: {exc}", file=sys.stderr)
        return 1
    if before == after:
        done = "already current"
    elif before == 0:
        done = "created"
    else:
        done = f"upgraded from version {before}"
    print(f"schema {args.schema!r} at {sink.host}: version {after}, {done}")
    return 0
