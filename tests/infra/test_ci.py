"""CI (.ci/run: `make test` with CI=true) runs every test: what a test needs is installed, and a skip fails there."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.infra.infra_helpers import REPO

SKIPPING_TESTS = '''
import pytest

def test_needs_something_missing():
    pytest.skip("the thing is not installed")

def test_runs():
    assert True
'''
SKIPPING_MODULE = 'import pytest\n\npytest.importorskip("a_module_that_is_not_installed")\n\ndef test_x():\n    pass\n'

# make test runs `-n 2`: the conftest's CI checks must hold in a worker process too
IN_ONE_PROCESS_AND_UNDER_XDIST = pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])


def _run_with_the_projects_conftest(tmp_path, files: dict[str, str], ci: str | None,
                                    *args: str) -> tuple[int, str]:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", *args, str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    return result.returncode, result.stdout + result.stderr


@IN_ONE_PROCESS_AND_UNDER_XDIST
def test_a_skip_fails_under_ci_and_names_what_was_missing(tmp_path, workers):
    returncode, out = _run_with_the_projects_conftest(tmp_path, {"test_skips.py": SKIPPING_TESTS}, "true", *workers)
    assert returncode == 1 and re.search(r"\b1 failed, 1 passed\b", out), out[-3000:]
    assert "skipped in CI" in out and "the thing is not installed" in out


@IN_ONE_PROCESS_AND_UNDER_XDIST
def test_a_module_level_importorskip_fails_the_run_under_ci(tmp_path, workers):
    returncode, out = _run_with_the_projects_conftest(tmp_path, {"test_module_skip.py": SKIPPING_MODULE}, "true",
                                                      *workers)
    assert returncode != 0 and re.search(r"\b1 error\b", out), out[-3000:]
    assert "skipped in CI" in out and "a_module_that_is_not_installed" in out


def test_outside_ci_a_skip_stays_a_skip_with_its_reason(tmp_path):
    files = {"test_skips.py": SKIPPING_TESTS, "test_module_skip.py": SKIPPING_MODULE}
    returncode, out = _run_with_the_projects_conftest(tmp_path, files, ci=None)
    assert returncode == 0 and re.search(r"\b1 passed, 2 skipped\b", out), out[-3000:]
    assert "the thing is not installed" in out


def test_ci_runs_make_test_which_installs_the_postgresql_server_the_infra_tests_need():
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), re.MULTILINE)
    dry_run = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    commands = dry_run.stdout
    assert "apt-get install" in commands and " postgresql " in commands  # only when initdb is missing, as root
    assert commands.index("initdb") < commands.index("pytest")  # before the tests
