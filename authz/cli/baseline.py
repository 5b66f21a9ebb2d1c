"""``authz baseline``: the pairs the decision logs saw, written to the state
store as already known, before ``authz serve --state-store`` alarms on new ones."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from authz.analysis.window import WindowError, parse_window
from authz.cli._args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, duration
from authz.telemetry.state_store import DEFAULT_TTL, PASSWORD_ENV, StateStore, StateStoreURLError, cause_of

__all__ = ["register"]


def register(commands: Any) -> None:
    baseline = commands.add_parser(
        "baseline",
        help="write every pair the decision logs saw to the state store as known (before --state-store alarms)",
        description="Every (zone, identity, host:port) pair in the decision logs, written to the state store"
        " (authz serve --state-store) as already known, with the time, decision id and verdict of its first"
        " record and what is left of --first-seen-ttl since its last: a rollout onto existing traffic then"
        " reports first sightings only for what is new. Pairs the store has are left as they are.",
    )
    baseline.add_argument(
        "logs",
        nargs="+",
        metavar="LOG",
        help="decision logs: files or globs (PATH.1, PATH.worker1, .gz, .parquet)",
    )
    baseline.add_argument(
        "--state-store",
        required=True,
        metavar="URL",
        help=f"redis://HOST:PORT/DB, rediss://, unix:///path.sock (a password may come from ${PASSWORD_ENV})",
    )
    when = "RFC 3339 (2026-11-02T00:00:00Z) or a span back from now (30d, 24h)"
    baseline.add_argument("--since", metavar="TIME", help=f"records from this instant on: {when}")
    baseline.add_argument("--until", metavar="TIME", help=f"records before this instant: {when}")
    baseline.add_argument(
        "--first-seen-ttl",
        type=duration,
        default=DEFAULT_TTL,
        metavar="DURATION",
        help="as authz serve's: how long a pair stays known after it was last seen (default 90d)",
    )
    baseline.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="a round trip to the store (default 5)"
    )
    baseline.add_argument("--dry-run", action="store_true", help="write nothing: say what would be written")
    baseline.set_defaults(run=_baseline)


def _baseline(args: argparse.Namespace) -> int:
    try:
        since, until = parse_window(args.since, args.until)
    except WindowError as exc:
        return _usage(str(exc))
    if args.first_seen_ttl <= 0 or args.timeout <= 0:
        return _usage("--first-seen-ttl and --timeout must be above 0")
    try:
        store = StateStore(args.state_store, timeout=args.timeout)
    except StateStoreURLError as exc:
        return _usage(f"--state-store {exc}")

    import duckdb
    from redis.exceptions import RedisError

    from authz.analysis.baseline import summary, write_baseline
    from authz.analysis.logs import DecisionLogs, LogError

    try:
        with DecisionLogs(args.logs, since=since, until=until) as logs:
            result = asyncio.run(write_baseline(logs, store, args.first_seen_ttl, dry_run=args.dry_run))
    except LogError as exc:
        return _usage(str(exc))
    except (RedisError, ConnectionError, TimeoutError) as exc:  # the store: refused, timed out, an error
        return _store_failed(store, exc)
    except (duckdb.Error, OSError, EOFError) as exc:  # a file unreadable, or cut off mid-gzip
        return _usage(f"cannot read the decision logs: {exc}")
    ttl = next((f"{int(args.first_seen_ttl // n)}{u}" for n, u in ((86400, "d"), (3600, "h"), (60, "m"))
                if args.first_seen_ttl % n == 0), f"{args.first_seen_ttl:g}s")  # fmt: skip
    print("\n".join(summary(result, ttl, store.shown)))
    return EXIT_OK


def _store_failed(store: StateStore, error: Exception) -> int:
    print(f"authz baseline: the state store {store.shown} failed ({cause_of(error)}: {error});"
          " pairs written before it failed stay written, and a run again writes the rest", file=sys.stderr)  # fmt: skip
    return EXIT_FAILED


def _usage(message: str) -> int:
    print(f"authz baseline: {message}", file=sys.stderr)
    return EXIT_USAGE
