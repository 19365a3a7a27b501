"""Run messages: rich on the console, the same messages as plain text in the run folder.

Modules log with ``log = logging.getLogger(__name__)``; Hydra configures the handlers from
``conf/hydra/job_logging/recrl.yaml`` for every job: :class:`ConsoleHandler` (rich, on stderr)
and a ``FileHandler`` with :class:`PlainFormatter` writing ``<run folder>/cli.log``. Outside a
Hydra job nothing is configured (tests, library use) until :func:`console_logging` is called:
the Python API (:mod:`recrl.api`) and the ``scripts/`` tools call it, so their messages reach
the console too.

Records logged with ``extra={"markup": True}`` may carry rich markup (``[bold]...[/bold]``): the
console renders it, the log file gets the text without it. Records logged with
``extra={"console": False}`` go to the log file only (e.g. the failure line that the command
prints itself).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text
from tqdm import tqdm

from recrl.types import RecrlError

Progress = bool | Literal["auto"]


def progress_disable(progress: Progress) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` setting: ``"auto"`` -> ``None`` (bars only when
    stderr is a terminal), ``True`` -> always on, ``False`` -> always off."""
    if progress == "auto":
        return None
    if isinstance(progress, bool):
        return not progress
    raise RecrlError(f"progress={progress!r}: use auto, true or false")


class PlainFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that drops the rich markup of ``extra={"markup": True}``
    records, for log files and pipes."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "markup", False):
            record = logging.makeLogRecord({**record.__dict__,
                                            "message": Text.from_markup(record.message).plain})
        return super().formatMessage(record)


class ConsoleHandler(RichHandler):
    """Messages on stderr: :class:`rich.logging.RichHandler` on a terminal (tqdm bars are cleared
    while it writes and redrawn below), plain ``HH:MM:SS LEVEL message`` lines elsewhere (pipes,
    captured output), one line per message."""

    plain = PlainFormatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("console", Console(stderr=True))
        kwargs.setdefault("show_path", False)
        kwargs.setdefault("log_time_format", "[%X]")
        super().__init__(**kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True) is False:
            return
        if not self.console.is_terminal:
            try:
                sys.stderr.write(self.plain.format(record) + "\n")
                sys.stderr.flush()
            except Exception:
                self.handleError(record)
            return
        with tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)


def console_logging(level: int = logging.INFO) -> None:
    """Send recrl's messages at ``level`` and above to the console (:class:`ConsoleHandler`),
    outside a Hydra job; nothing changes when the ``recrl`` logger or the root logger already
    has handlers (a Hydra job, an application's own logging setup)."""
    package = logging.getLogger("recrl")
    if package.handlers or logging.getLogger().handlers:
        return
    package.addHandler(ConsoleHandler())
    package.setLevel(level)
