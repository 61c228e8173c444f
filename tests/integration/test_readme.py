"""The README's first lines are the two fresh-machine commands, and .ci/run runs the test one verbatim."""

from __future__ import annotations

import os

from integration_support import REPO


def _readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("```bash") + 1
    end = lines.index("```", start)
    return lines[start:end]


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    assert demo.endswith("ruc-service demo") and "pip install -e '.[ml,api]'" in demo
    assert tests.endswith("-m pytest -q") and "pip install -e '.[ml,api,test]'" in tests


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    body = ci.read_text().splitlines()
    assert body[0] == "#!/usr/bin/env bash"
    assert _readme_commands()[1] in body
    assert any("pg_isready" in ln for ln in body) and any("redis-cli" in ln for ln in body)
