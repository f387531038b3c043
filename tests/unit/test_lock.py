"""requirements.lock pins every dependency of pyproject.toml (runtime and the test extra) inside
pyproject's range, and pyproject gives every dependency an upper bound (packaging/check-lock)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "packaging" / "check-lock"


def _check_lock():  # the script has no .py suffix: load it by path
    loader = importlib.machinery.SourceFileLoader("check_lock", str(SCRIPT))
    spec = importlib.util.spec_from_loader("check_lock", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


PYPROJECT = """
[project]
name = "x"
dependencies = ["fastapi>=0.110,<1", "panoramisk==1.4"]
[project.optional-dependencies]
test = ["pytest>=8,<9.1"]
"""


def test_the_repository_lock_matches_pyproject() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_a_consistent_lock_passes() -> None:
    lock = "fastapi==0.165.0 \\\n    --hash=sha256:ab\npanoramisk==1.4\n    # via x\npytest==9.0.3\n"
    assert _check_lock().problems(PYPROJECT, lock) == []


def test_a_dependency_missing_from_the_lock_is_named() -> None:
    assert _check_lock().problems(PYPROJECT, "fastapi==0.165.0\npanoramisk==1.4\n") == [
        "pytest: in pyproject.toml but not pinned in requirements.lock"
    ]


def test_a_pin_outside_the_range_is_named() -> None:
    lock = "fastapi==1.0.0\npanoramisk==1.4\npytest==9.0.3\n"
    assert _check_lock().problems(PYPROJECT, lock) == [
        "fastapi: locked 1.0.0 is outside pyproject's <1,>=0.110"
    ]


def test_names_are_compared_canonically() -> None:
    deps = '["SQLAlchemy[asyncio]>=2.0,<2.2", "python_multipart<1"]'
    pyproject = f'[project]\nname = "x"\ndependencies = {deps}\n'
    assert _check_lock().problems(pyproject, "sqlalchemy==2.1.9\npython-multipart==0.0.34\n") == []


def test_a_dependency_without_upper_bound_is_named() -> None:
    pyproject = '[project]\nname = "x"\ndependencies = ["structlog>=24.1"]\n'
    assert _check_lock().problems(pyproject, "structlog==26.1.0\n") == [
        "structlog: no upper bound in pyproject.toml (>=24.1)"
    ]


def test_the_script_exits_1_with_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "requirements.lock").write_text("fastapi==2.0\n")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "pyproject.toml"), str(tmp_path / "requirements.lock")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "check-lock: fastapi: locked 2.0 is outside pyproject's <1,>=0.110",
        "check-lock: panoramisk: in pyproject.toml but not pinned in requirements.lock",
        "check-lock: pytest: in pyproject.toml but not pinned in requirements.lock",
    ]
