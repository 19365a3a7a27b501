"""Run messages (recrl.logs), progress-bar settings and the CLI's signal handling, in process.

The end-to-end checks (the run folder's ``cli.log``, exit codes 130/143 of a real run) are in
tests/test_cli.py.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
from omegaconf import OmegaConf

from recrl.cli import Terminated, stop_on_signals
from recrl.config import CONF_DIR, check_node
from recrl.logs import ConsoleHandler, PlainFormatter, progress_disable
from recrl.loop import Trainer
from recrl.report import summary_line
from recrl.types import RecrlError


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("recrl.test", logging.INFO, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_progress_auto_follows_the_terminal_true_and_false_force_it() -> None:
    assert progress_disable("auto") is None  # tqdm: off when stderr is not a terminal
    assert progress_disable(True) is False and progress_disable(False) is True
    with pytest.raises(RecrlError, match="use auto, true or false"):
        progress_disable("sometimes")
    assert Trainer().progress == "auto"
    with pytest.raises(RecrlError, match="progress='sometimes'"):
        Trainer(progress="sometimes")


def test_trainer_progress_config_values() -> None:
    trainer = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    assert trainer.progress == "auto"
    for value in ("auto", True, False):
        trainer.progress = value
        check_node(trainer, "trainer")
    trainer.progress = "yes"
    with pytest.raises(RecrlError, match=r"trainer\.progress='yes' is not a valid"):
        check_node(trainer, "trainer")


def test_plain_formatter_drops_markup_of_markup_records_only() -> None:
    formatter = PlainFormatter("%(levelname)s %(message)s")
    assert formatter.format(record("[bold]done[/bold] in [i]2s[/i]", markup=True)) == "INFO done in 2s"
    assert formatter.format(record("cache hit /tmp/[x]/a.pt")) == "INFO cache hit /tmp/[x]/a.pt"


def test_console_handler_off_a_terminal_writes_plain_lines(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # rich would treat the captured stderr as a terminal
        monkeypatch.delenv(name, raising=False)
    handler = ConsoleHandler()
    handler.emit(record("[yellow]careful[/yellow]", markup=True))
    handler.emit(record("only in the log file", console=False))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("INFO    careful")


def test_summary_line_names_the_result_and_the_report() -> None:
    stat = {"mean": 2.5, "ci95": 0.25, "n": 64}
    report = {"run_dir": "/runs/a", "algo": "dqn", "evaluation": {
        "simulator": {"random": {"return": stat}, "dqn": {"return": {"mean": 3.0, "ci95": 0.5}}},
        "ground_truth": {"dqn": {"return": stat, "oracle_share": {"mean": 0.4, "ci95": 0.1}}}}}
    assert summary_line(report) == ("result: dqn return 3.000 ± 0.500 in simulator; dqn return 2.500 ± 0.250 "
                                    "in ground_truth (40% of the oracle); report in /runs/a/report.md")
    behavior = {"task": "behavior", "offline": {"full": {"ndcg@10": 0.12345, "hr@10": 0.25}}}
    assert summary_line(behavior) == ("result: behavior model offline ranking (full): ndcg@10 0.1235, "
                                      "hr@10 0.2500")
    assert summary_line({}) == "result: no evaluation results"


def _wait_for_signal() -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the handler runs between two bytecodes of this loop
        time.sleep(0.01)
    pytest.fail("the signal did not arrive")


def test_stop_on_signals_overrides_inherited_dispositions_and_restores_them() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a non-interactive shell
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with stop_on_signals():
            with pytest.raises(KeyboardInterrupt) as stop:
                os.kill(os.getpid(), signal.SIGINT)
                _wait_for_signal()
            assert not isinstance(stop.value, Terminated)
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                _wait_for_signal()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_console_logging_outside_hydra_adds_one_console_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from recrl.logs import console_logging

    package = logging.getLogger("recrl")
    monkeypatch.setattr(package, "handlers", [])
    monkeypatch.setattr(package, "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # no application or Hydra setup
    console_logging()
    console_logging()  # idempotent
    assert [type(h) for h in package.handlers] == [ConsoleHandler] and package.level == logging.INFO
    monkeypatch.setattr(package, "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])  # configured elsewhere
    console_logging()
    assert package.handlers == []
