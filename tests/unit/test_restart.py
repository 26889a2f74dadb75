"""Stack.restart_exited: what `kensaku up` does with a process that exits, on real processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.stack.stack import RESTART_LIMIT, Stack


def _stack(tmp_path: Path) -> Stack:
    (tmp_path / "logs").mkdir()
    return Stack(data_dir=tmp_path, flower=False)


def test_an_exited_process_starts_again_with_its_command_line(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    marker = tmp_path / "runs"
    script = f"open({str(marker)!r}, 'a').write('x')"
    first = stack._spawn("job", [sys.executable, "-c", script], {"KENSAKU_X": "1"})
    first.popen.wait(30)
    assert stack.restart_exited() == ["job"]
    again = stack.procs["job"]
    assert again is not first
    assert again.args == first.args and again.extra_env == {"KENSAKU_X": "1"}
    again.popen.wait(30)
    assert marker.read_text() == "xx"


def test_a_stopped_or_living_process_is_left_alone(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stopped = stack._spawn("stopped", [sys.executable, "-c", "import time; time.sleep(60)"])
    living = stack._spawn("living", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stopped.stop(timeout=5)
        assert stack.restart_exited() == []
        assert stack.procs["stopped"] is stopped and stack.procs["living"] is living
    finally:
        living.stop(timeout=5)


def test_a_process_that_keeps_exiting_is_given_up_on(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack._spawn("crash", [sys.executable, "-c", "print('bad settings'); raise SystemExit(3)"])
    for _ in range(RESTART_LIMIT):
        stack.procs["crash"].popen.wait(30)
        assert stack.restart_exited() == ["crash"]
    stack.procs["crash"].popen.wait(30)
    with pytest.raises(ConfigError, match="crash exited 6 times") as err:
        stack.restart_exited()
    assert "bad settings" in str(err.value)
