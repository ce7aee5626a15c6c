"""Progress bars: shown on a terminal, silent elsewhere, and silenced or forced when asked."""

from __future__ import annotations

import io

from entangle.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drawn(**kwargs) -> str:
    out = kwargs.pop("file")
    assert sum(progress(range(4), desc="work", file=out, **kwargs)) == 6
    return out.getvalue()


def test_bars_follow_the_terminal_and_the_environment(monkeypatch):
    monkeypatch.delenv("ENTANGLE_PROGRESS", raising=False)
    assert "work: 100%" in drawn(file=Terminal())
    assert drawn(file=io.StringIO()) == ""          # a log file or a pipe: quiet
    monkeypatch.setenv("ENTANGLE_PROGRESS", "0")
    assert drawn(file=Terminal()) == ""
    monkeypatch.setenv("ENTANGLE_PROGRESS", "1")
    assert "work: 100%" in drawn(file=io.StringIO())
    assert drawn(file=Terminal(), disable=True) == ""  # an explicit choice still wins
