"""What the service framework costs per event over a plain ``bus.subscribe`` handler.

All configurations run in one process on memory://, rounds interleaved, and the best
round's CPU time per event is compared (publishing is included and the same for all):

  bus            bus.subscribe with an async handler taking the Event
  app-event      an App subscriber taking the Event (the wrapper alone)
  app-attrs      an App subscriber taking a nested attrs class (cattrs structuring)
  app-attrs-mw   the same plus the correlation_id middleware
  app-pydantic   an App subscriber taking a pydantic model (when pydantic is installed)

    python benchmarks/app_overhead.py --events 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from dotmac.events.bench import APP_CONFIGS, app_overhead, format_app_overhead


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(APP_CONFIGS), help="comma-separated subset")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("dotmac.events").setLevel(logging.WARNING)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    report = asyncio.run(app_overhead(events=args.events, rounds=args.rounds, configs=configs))
    print(json.dumps(report) if args.json else format_app_overhead(report), end="" if not args.json else "\n")


if __name__ == "__main__":
    main()
