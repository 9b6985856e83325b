from __future__ import annotations

import pytest

from sample import sample_print_stmt


def test_sample_print_stmt_prints_and_returns_its_argument(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert sample_print_stmt("hello, index") == "hello, index"
    assert capsys.readouterr().out == "hello, index\n"
