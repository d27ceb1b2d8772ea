"""The ``dotmac-events`` command: plugins, publish, consume, dlq, demo, bench, run, doctor,
and the commands plugins add through ``dotmac_events_register_commands``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

from . import __name__ as _package
from .config import ENV_URL, create_bus, redact_url
from .errors import EventBusError, NonRetryableError
from .event import Event, EventMetadata
from .options import ConsumerOptions
from .plugins import get_plugin_manager, plugin_infos

__all__ = ["main"]

log = logging.getLogger(__name__)


def _default_url() -> str:
    return os.environ.get(ENV_URL) or "memory://"


def _event_json(event: Event) -> dict[str, Any]:
    meta = event.metadata
    return {
        "topic": event.topic,
        "key": event.key,
        "tenant_id": event.tenant_id,
        "headers": dict(event.headers),
        "payload": event.payload,
        "metadata": {
            "event_id": meta.event_id,
            "event_type": meta.event_type,
            "source": meta.source,
            "occurred_at": meta.occurred_at.isoformat(),
            "correlation_id": meta.correlation_id,
            "causation_id": meta.causation_id,
            "content_type": meta.content_type,
        },
    }


# -- plugins -----------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    json.dump(plugin_infos(), out, indent=2, sort_keys=True)
    out.write("\n")
    return 0


# -- publish / consume -------------------------------------------------------------------
def _headers(pairs: Sequence[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--header expects NAME=VALUE, got {pair!r}")
        headers[name] = value
    return headers


async def _publish(args: argparse.Namespace, out: TextIO) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--payload is not JSON: {exc}") from None
    events = [
        Event(
            topic=args.topic,
            payload=payload,
            key=args.key,
            headers=_headers(args.header),
            tenant_id=args.tenant,
            metadata=EventMetadata(event_type=args.type) if args.type else EventMetadata(),
        )
        for _ in range(args.count)
    ]
    async with create_bus(args.url) as bus:
        await bus.publish_many(events)
    for event in events:
        out.write(json.dumps({"published": event.event_id, "topic": event.topic}) + "\n")
    return 0


async def _consume(args: argparse.Namespace, out: TextIO) -> int:
    from .app.serve import EXIT_FORCED, force_exit, signal_handlers

    done = asyncio.Event()
    count = 0

    async def handler(event: Event) -> None:
        nonlocal count
        count += 1
        out.write(json.dumps(_event_json(event), ensure_ascii=False, default=str) + "\n")
        out.flush()
        if args.max and count >= args.max:
            done.set()

    def first(_sig: int) -> None:
        # Leaving the ``async with`` drains: printed events are acked, the rest released.
        done.set()

    options = ConsumerOptions(start_from="earliest" if args.from_beginning else "latest")
    with signal_handlers(first, lambda _sig: force_exit(EXIT_FORCED)):
        async with create_bus(args.url) as bus:
            await bus.subscribe(args.topics, handler, group=args.group, options=options)
            try:
                await asyncio.wait_for(done.wait(), args.timeout)
            except asyncio.TimeoutError:
                pass
    return 0


# -- dlq ---------------------------------------------------------------------------------
async def _dlq_list(args: argparse.Namespace, out: TextIO) -> int:
    async with create_bus(args.url) as bus:
        letters = await bus.dlq.list(args.topic, limit=args.limit)
    for letter in letters:
        out.write(json.dumps(letter.as_record(), ensure_ascii=False, default=str) + "\n")
    return 0


async def _dlq_replay(args: argparse.Namespace, out: TextIO) -> int:
    from .wire import parse_time

    bounds = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        if text is not None:
            try:
                bounds[name] = parse_time(text)
            except ValueError:
                out.write(json.dumps({"error": f"--{name} is not an RFC 3339 time: {text!r}"}) + "\n")
                return 2
    filters: dict[str, Any] = {
        "event_ids": args.event_id or None,
        "error_type": args.error_type,
        "group": args.group,
        "limit": args.limit,
        **bounds,
    }
    async with create_bus(args.url) as bus:
        if args.dry_run:
            letters = await bus.dlq.select(args.topic, include_replayed=args.force, **filters)
            for letter in letters:
                out.write(json.dumps(letter.as_record(), ensure_ascii=False, default=str) + "\n")
            out.write(json.dumps({"would_replay": len(letters), "from": args.topic, "dry_run": True}) + "\n")
            return 0
        count = await bus.dlq.replay(
            args.topic, to_topic=args.to_topic, all_groups=args.all_groups, force=args.force, **filters
        )
    out.write(json.dumps({"replayed": count, "from": args.topic}) + "\n")
    return 0


async def _delay_scheduler(args: argparse.Namespace, out: TextIO) -> int:
    """Run a delay scheduler until SIGTERM/SIGINT (or ``--seconds``)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with create_bus(args.url) as bus:
        scheduler = await bus.start_delay_scheduler(capacity=args.capacity)
        out.write(
            json.dumps({"scheduler": "started", "topics": [s.topics[0] for s in scheduler.stages]}) + "\n"
        )
        out.flush()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), args.seconds)
        forwarded = scheduler.forwarded
    out.write(json.dumps({"scheduler": "stopped", "forwarded": forwarded}) + "\n")
    return 0


# -- demo --------------------------------------------------------------------------------
class _DemoStats:
    def __init__(self) -> None:
        self.published = 0
        self.handled: set[str] = set()
        self.handled_calls = 0
        self.duplicates = 0
        self.retried = 0
        self.dead: set[str] = set()
        self.changed = asyncio.Event()


async def _demo(args: argparse.Namespace, out: TextIO) -> int:
    """Order processing: a group of workers, transient and permanent failures, a DLQ."""
    run = uuid.uuid4().hex[:8]
    topic = f"demo.orders.{run}"
    dlq = f"{topic}.dlq"
    group = f"billing-{run}"
    stats = _DemoStats()
    interactive = out.isatty() and not args.json
    options = ConsumerOptions(
        max_retries=args.max_retries,
        backoff_base_ms=5,
        backoff_max_ms=50,
        concurrency=args.concurrency,
        prefetch_count=max(100, args.concurrency * 10),
    )

    transient: int = args.transient_percent
    poison: int = args.poison_percent

    def fails_once(order_id: int) -> bool:
        return order_id % 100 < transient

    def always_fails(order_id: int) -> bool:
        return order_id % 100 >= 100 - poison

    attempts: dict[str, int] = {}

    async def bill(event: Event) -> None:
        order_id = int(event.payload["order_id"])
        n = attempts.get(event.event_id, 0) + 1
        attempts[event.event_id] = n
        if always_fails(order_id):
            if order_id % 2:
                raise NonRetryableError(f"card declined for order {order_id}")
            raise RuntimeError(f"payment gateway rejected order {order_id}")
        if fails_once(order_id) and n == 1:
            stats.retried += 1
            raise ConnectionError(f"payment gateway timeout for order {order_id}")
        stats.handled_calls += 1
        if event.event_id in stats.handled:
            stats.duplicates += 1
        stats.handled.add(event.event_id)
        stats.changed.set()

    def dead_letter(event: Event) -> None:
        stats.dead.add(event.event_id)
        stats.changed.set()

    logging.getLogger("dotmac.events").setLevel(logging.ERROR)
    started = time.perf_counter()
    bus = create_bus(args.url)
    async with bus:
        await bus.subscribe(
            dlq, dead_letter, group=f"{group}-dlq" if bus.capabilities.consumer_groups else None
        )
        for worker in range(args.workers):
            await bus.subscribe(
                topic,
                bill,
                group=group if bus.capabilities.consumer_groups else None,
                options=options,
                name=f"worker-{worker}-{run}",
            )
        ready = time.perf_counter()
        progress = asyncio.create_task(_progress(stats, args.orders, out if interactive else None))
        try:
            batch = 200
            for start in range(0, args.orders, batch):
                events = [
                    Event(
                        topic=topic,
                        key=f"customer-{i % 97}",
                        tenant_id="demo",
                        payload={
                            "order_id": i,
                            "customer": f"customer-{i % 97}",
                            "amount": f"{(i * 7919) % 50000 / 100:.2f}",
                            "currency": "EUR",
                            "items": [{"sku": f"SKU-{i % 13}", "qty": 1 + i % 3}],
                        },
                    )
                    for i in range(start, min(args.orders, start + batch))
                ]
                await bus.publish_many(events)
                stats.published += len(events)
            deadline = time.monotonic() + args.timeout
            while len(stats.handled | stats.dead) < stats.published and time.monotonic() < deadline:
                stats.changed.clear()
                try:
                    await asyncio.wait_for(stats.changed.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
            finished = time.perf_counter()
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
    expected_dead = sum(1 for i in range(args.orders) if always_fails(i))
    accounted = len(stats.handled | stats.dead)
    lost = stats.published - accounted
    elapsed = finished - ready
    summary = {
        "url": redact_url(args.url),
        "transport": bus.transport.name,
        "workers": args.workers,
        "published": stats.published,
        "processed": len(stats.handled),
        "retried": stats.retried,
        "dead_lettered": len(stats.dead),
        "expected_dead_lettered": expected_dead,
        "duplicates": stats.duplicates,
        "lost": lost,
        "seconds": round(elapsed, 3),
        "throughput_per_s": round(stats.published / elapsed, 1) if elapsed > 0 else None,
        "setup_seconds": round(ready - started, 3),
    }
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        if interactive:
            out.write("\r\033[K")
        out.write(_table(summary))
    return 0 if lost == 0 and len(stats.dead) == expected_dead else 1


async def _progress(stats: _DemoStats, total: int, out: TextIO | None) -> None:
    if out is None:
        return
    while True:
        done = len(stats.handled) + len(stats.dead)
        width = 30
        filled = int(width * min(done, total) / max(total, 1))
        out.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] published {stats.published}/{total}  "
            f"processed {len(stats.handled)}  retried {stats.retried}  dead-lettered {len(stats.dead)}"
        )
        out.flush()
        await asyncio.sleep(0.1)  # redraw interval


def _table(summary: dict[str, Any]) -> str:
    rows = [
        ("transport", f"{summary['transport']} ({summary['url']})"),
        ("workers", summary["workers"]),
        ("published", summary["published"]),
        ("processed", summary["processed"]),
        ("retried", summary["retried"]),
        ("dead-lettered", f"{summary['dead_lettered']} (expected {summary['expected_dead_lettered']})"),
        ("duplicates", summary["duplicates"]),
        ("lost", summary["lost"]),
        ("elapsed", f"{summary['seconds']} s"),
        ("throughput", f"{summary['throughput_per_s']} events/s"),
    ]
    width = max(len(name) for name, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 42 + "+\n"
    body = "".join(f"| {name:<{width}} | {value!s:<40} |\n" for name, value in rows)
    return "dotmac-events demo: order processing\n" + line + body + line


# -- bench -------------------------------------------------------------------------------
async def _bench(args: argparse.Namespace, out: TextIO) -> int:
    from .bench import BenchError, Progress, bench_url, format_report

    logging.getLogger("dotmac.events").setLevel(logging.ERROR)
    try:
        report = await bench_url(
            args.url,
            events=args.events,
            rounds=args.rounds,
            batch_size=args.batch_size,
            latency_samples=args.latency_samples,
            rate=args.rate,
            progress=Progress(sys.stderr),
        )
    except (BenchError, ValueError) as exc:
        print(f"dotmac-events: bench failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out.write(json.dumps(report) + "\n")
    else:
        out.write(format_report(report))
    return 0


# -- run ---------------------------------------------------------------------------------
def _run(args: argparse.Namespace, out: TextIO) -> int:
    """``dotmac-events run module:app``: a long-lived worker (or ``--workers N`` of them)."""
    from .app.serve import ENV_RUN_URL, load_app, run_apps, run_workers

    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.grace is not None and args.grace < 0:
        raise SystemExit("--grace must be >= 0")
    root = logging.getLogger()
    saved = root.level
    # A worker's log is its output: the runner's lifecycle lines and the service's own
    # INFO lines are shown unless -q.
    root.setLevel(logging.WARNING if args.quiet else min(logging.INFO, saved))
    try:
        apps = [load_app(target, args.app_dir) for target in args.apps]
        # A supervisor hands its --url to workers through the environment: a password
        # in it stays out of the process list.
        url = args.url or os.environ.get(ENV_RUN_URL) or None
        if args.workers == 1:
            return run_apps(apps, target=url, grace=args.grace)
        if (url or _default_url()).startswith("memory:"):
            log.warning("memory:// lives inside one process: %d workers will not share events", args.workers)
        grace = args.grace if args.grace is not None else max(a.grace for a in apps)
        argv = ["-v"] * args.verbose + ["run", *args.apps, "--workers", "1", "--grace", str(grace)]
        argv += ["--app-dir", args.app_dir] + (["-q"] if args.quiet else [])
        return run_workers(argv, args.workers, grace, env={ENV_RUN_URL: url} if url else {})
    finally:
        root.setLevel(saved)


def _add_run_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dotmac-events run MODULE:APP ...``: the service runner."""
    r = sub.add_parser(
        "run",
        help="run service apps as a long-lived worker",
        description="Run one or more apps (MODULE:APP) until SIGTERM/SIGINT, then drain. Exit codes: "
        "0 clean; 1 grace period expired (unfinished events released for redelivery); 2 usage error; "
        "3 startup failed; 4 forced by a second signal.",
    )
    r.add_argument("apps", nargs="+", metavar="MODULE:APP", help="e.g. shop.billing:app")
    r.add_argument("--url", help=f"event bus URL (default: the app's own, then ${ENV_URL}, then memory://)")
    r.add_argument("--workers", type=int, default=1, help="worker processes, restarted when they die")
    r.add_argument(
        "--grace",
        type=float,
        help="seconds in-flight handlers get to finish after a signal (default: the app's grace, 30 s)",
    )
    r.add_argument("--app-dir", default=".", help="directory put on sys.path first (default: .)")
    r.add_argument("-q", "--quiet", action="store_true", help="no lifecycle log lines")
    r.set_defaults(func=_run)


# -- doctor ------------------------------------------------------------------------------
async def _doctor(args: argparse.Namespace, out: TextIO) -> int:
    from .doctor import as_json, format_table, run_doctor

    # The checks report what the client libraries would log as errors; -v shows the logs.
    root = logging.getLogger()
    saved = root.level
    if not args.verbose:
        root.setLevel(logging.CRITICAL)
        logging.getLogger("dotmac.events").setLevel(logging.CRITICAL)
    try:
        results = await run_doctor(args.url, group=args.group, topic=args.topic, timeout=args.timeout)
    finally:
        root.setLevel(saved)
    report = as_json(results)
    if args.json:
        out.write(json.dumps(report) + "\n")
    else:
        out.write(format_table(results))
    return 0 if report["ok"] else 1


def _add_doctor(sub: Any, url_help: str) -> None:
    d = sub.add_parser("doctor", help="check a bus URL: connection, permissions, round trip, limits")
    d.add_argument("--url", default=_default_url(), help=url_help)
    d.add_argument("--group", help="consumer group to check (default: a scratch group)")
    d.add_argument("--topic", help="topic to check (default: a scratch topic, deleted afterwards)")
    d.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the round trip")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.set_defaults(func=_doctor)


# -- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dotmac-events", description="dotmac-events command line")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("plugins", help="list loaded plugins as JSON").set_defaults(func=cmd_plugins)

    url_help = f"event bus URL (default ${ENV_URL} or memory://)"
    p = sub.add_parser("publish", help="publish an event")
    p.add_argument("topic")
    p.add_argument("--url", default=_default_url(), help=url_help)
    p.add_argument("--payload", default="{}", help="JSON object")
    p.add_argument("--key")
    p.add_argument("--tenant")
    p.add_argument("--type", help="event type (defaults to the topic)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(func=_publish)

    c = sub.add_parser("consume", help="print events as JSON lines")
    c.add_argument("topics", nargs="+")
    c.add_argument("--url", default=_default_url(), help=url_help)
    c.add_argument("--group")
    c.add_argument("--max", type=int, default=0, help="stop after this many events")
    c.add_argument("--timeout", type=float, default=10.0, help="stop after this many seconds")
    c.add_argument("--from-beginning", action="store_true", help="a new group starts at the backlog")
    c.set_defaults(func=_consume)
    _add_run_command(sub)

    d = sub.add_parser("dlq", help="inspect and replay dead letters")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    dl = dsub.add_parser("list", help="list dead letters of a DLQ topic")
    dl.add_argument("topic", help="the dead-letter topic, e.g. orders.created.dlq")
    dl.add_argument("--url", default=_default_url(), help=url_help)
    dl.add_argument("--limit", type=int, default=100)
    dl.set_defaults(func=_dlq_list)
    dr = dsub.add_parser(
        "replay",
        help="republish dead letters to their original topic, for the group that failed, once",
    )
    dr.add_argument("topic")
    dr.add_argument("--url", default=_default_url(), help=url_help)
    dr.add_argument("--event-id", action="append", help="replay only these events")
    dr.add_argument("--error-type", help="replay only dead letters with this x-dlq-error-type")
    dr.add_argument("--since", help="failed at or after this RFC 3339 time")
    dr.add_argument("--until", help="failed at or before this RFC 3339 time")
    dr.add_argument("--group", help="replay only dead letters of this consumer group")
    dr.add_argument("--to-topic", help="replay into this topic instead")
    dr.add_argument("--all-groups", action="store_true", help="let every group handle the replay")
    dr.add_argument("--force", action="store_true", help="replay again what the ledger says was replayed")
    dr.add_argument("--dry-run", action="store_true", help="print what would be replayed; send nothing")
    dr.add_argument("--limit", type=int, default=1000)
    dr.set_defaults(func=_dlq_replay)

    ds = sub.add_parser(
        "delay-scheduler", help="move events published with delay=/deliver_at= to their topics when due"
    )
    ds.add_argument("--url", default=_default_url(), help=url_help)
    ds.add_argument("--capacity", type=int, default=10_000, help="messages held at once per delay topic")
    ds.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: until SIGTERM)"
    )
    ds.set_defaults(func=_delay_scheduler)

    m = sub.add_parser("demo", help="order-processing demo with retries and dead letters")
    m.add_argument("--url", default=_default_url(), help=url_help)
    m.add_argument("--orders", type=int, default=5000)
    m.add_argument("--workers", type=int, default=4)
    m.add_argument("--concurrency", type=int, default=4, help="handlers per worker")
    m.add_argument("--transient-percent", type=int, default=10, help="orders failing on their first try")
    m.add_argument("--poison-percent", type=int, default=2, help="orders that always fail")
    m.add_argument("--max-retries", type=int, default=3)
    m.add_argument("--timeout", type=float, default=120.0)
    m.add_argument("--json", action="store_true", help="print the summary as JSON")
    m.set_defaults(func=_demo)

    b = sub.add_parser("bench", help="throughput and latency of this bus on a transport")
    b.add_argument("--url", default=_default_url(), help=url_help)
    b.add_argument(
        "--events", type=int, help="events per workload (default 200,000 in-process, 50,000 otherwise)"
    )
    b.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    b.add_argument("--batch-size", type=int, default=500, help="events per publish_many call")
    b.add_argument("--latency-samples", type=int, default=2000, help="events per latency run")
    b.add_argument("--rate", type=float, default=1000.0, help="events/s of the open-loop latency run")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.set_defaults(func=_bench)
    _add_plugin_commands(sub)
    _add_doctor(sub, url_help)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction[Any]) -> None:
    # One implementation at a time, so a plugin whose hook fails (or claims a taken
    # name) is named in the log and the rest of the CLI still works.
    caller = get_plugin_manager().hook.dotmac_events_register_commands
    for impl in reversed(caller.get_hookimpls()):
        try:
            impl.function(subparsers=sub)
        except Exception as exc:
            log.warning(
                "skipping the commands of dotmac-events plugin %r: %s: %s",
                impl.plugin_name,
                type(exc).__name__,
                exc,
            )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    out = out or sys.stdout
    # demo and bench quiet the package's expected retry warnings; an embedding
    # program (or a test calling main()) gets its logging back afterwards.
    package_log = logging.getLogger("dotmac.events")
    saved_level = package_log.level
    try:
        result = args.func(args, out)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except EventBusError as exc:
        print(f"{_package.split('.')[0]}-events: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``dotmac-events dlq list | head``): stop quietly. Output
        # still buffered would fail again at exit, so stdout goes to /dev/null.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        package_log.setLevel(saved_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
