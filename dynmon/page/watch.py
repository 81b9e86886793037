"""``dynmon report --watch``: rewrite a run's page as the run grows, reading only the new lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dynmon.page.build import write_run_page
from dynmon.page.tail import RunTail


def watch(
    run_dir: str | Path,
    out: str | Path | None = None,
    interval: float = 2.0,
    *,
    stop: Callable[[], bool] | None = None,
    on_write: Callable[[Path, RunTail], None] | None = None,
) -> Path:
    """Write the page now, then every ``interval`` seconds in which the run folder grew, until
    ``stop()`` is true or Ctrl-C; the page reloads itself in the browser meanwhile. The last
    page written has no reload. Returns the page's path."""
    if interval <= 0:
        raise ValueError(f"--interval must be positive (seconds), got {interval}")
    stop = stop or (lambda: False)
    tail = RunTail(run_dir)
    tail.update()
    refresh = max(2.0, interval)

    def write(refresh: float | None) -> Path:
        index = write_run_page(run_dir, out, tail=tail, refresh=refresh)
        if on_write is not None:
            on_write(index, tail)
        return index

    write(refresh)
    try:
        while not stop():
            time.sleep(interval)
            config, summary = tail.config, tail.summary
            if tail.update() or tail.config is not config or tail.summary is not summary:
                write(refresh)
    except KeyboardInterrupt:
        pass
    tail.update()
    return write(None)
