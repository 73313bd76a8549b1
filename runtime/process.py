"""Running a service process: uvloop, logging, SIGTERM drain, and a ready file for launchers."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

logger = logging.getLogger(__name__)


def configure_logging(level: str = "INFO", role: str = "") -> None:
    fmt = f"%(asctime)s %(levelname)s {role + ' ' if role else ''}%(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt)


def tune_gc() -> None:
    """For a worker that has loaded its model: freeze what exists (never scanned again; still freed
    by reference counting), and collect young objects every 50,000 allocations instead of 700.
    The lookahead tries are up to a million small tracked objects, and with the defaults the
    collections that walk them run inside the step. In-process, chat c=16 in bf16, one run each:
    the speculator's share of a step 2.35 -> 1.10 ms, the whole step 51.1 -> 47.8 ms (46.3 with no
    collector at all)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def write_ready_file(path: str | None, info: dict[str, Any]) -> None:
    """Atomically writes ``info`` (bound ports etc.) as JSON once the service is serving."""
    if not path:
        return
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop_event)`` under uvloop; SIGTERM/SIGINT set the event so main can drain."""
    import uvloop

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(runner())
