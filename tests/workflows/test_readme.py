"""The README's commands work as written: every `geosurge` and workflow command in its bash blocks parses with the
real parser and names config files that exist; no block calls the venv's tools (`ray`, `python`, `mlflow`) bare
without activating the venv first; and the cheap blocks run: new imagery from `geosurge synth --id-prefix`, the
serving request body built into a file for `curl -d @body.json` (a large photo included)."""

import base64
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geosurge.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent
WORKFLOW_COMMANDS = {"full_pipeline.py": "run", "retrain.py": "retrain", "evaluate.py": "eval"}
VENV_TOOLS = {"ray", "python", "mlflow", "geosurge", "pytest", "uvicorn"}


def bash_blocks() -> list[str]:
    blocks = re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", README, flags=re.MULTILINE | re.DOTALL)
    return [block.replace("\\\n", " ") for block in blocks]  # continuation lines joined


def commands(block: str) -> list[list[str]]:
    """Each simple command of a block (split at `&&`, `;`, `|`), as shell words, comments dropped."""
    out = []
    for line in block.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a heredoc's Python, not shell
            continue
        current: list[str] = []
        for word in words:
            if word in ("&&", ";", "|", "||", "&"):
                out.append(current)
                current = []
            else:
                current.append(word)
        out.append(current)
    return [c for c in out if c]


def cli_invocations() -> list[tuple[str, list[str]]]:
    """(command, its arguments) for every `geosurge …` and `python workflows/X.py …` in the README."""
    found = []
    for block in bash_blocks():
        for words in commands(block):
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the program
                words = words[1:]
            if words and Path(words[0]).name == "geosurge":
                found.append((words[1], words[2:]))
                continue
            for i, word in enumerate(words):  # `python workflows/X.py`, on its own or after `ray job submit … --`
                if word.startswith("workflows/") and Path(word).name in WORKFLOW_COMMANDS:
                    found.append((WORKFLOW_COMMANDS[Path(word).name], words[i + 1:]))
                    break
    return found


def test_every_command_in_the_readme_parses_and_its_preset_files_exist():
    invocations = cli_invocations()
    assert {"run", "retrain", "eval", "predict", "synth"} <= {c for c, _ in invocations}
    for command, args in invocations:
        try:
            parsed = build_parser(command).parse_args([command, *args])
        except SystemExit:
            pytest.fail(f"README: `geosurge {command} {' '.join(args)}` does not parse")
        for path in getattr(parsed, "config", []):
            if path.startswith("configs/"):
                assert (REPO / path).is_file(), f"README names {path}, which does not exist"


def test_no_block_runs_a_venv_tool_without_the_venv():
    for block in bash_blocks():
        activated = False
        for words in commands(block):
            if words[:2] == ["source", ".venv/bin/activate"]:
                activated = True
            assert activated or words[0] not in VENV_TOOLS, (
                f"README runs `{' '.join(words)}` with whatever {words[0]} is on PATH: use .venv/bin/{words[0]} or "
                "`source .venv/bin/activate` first")


def _readme_line(pattern: str) -> str:
    (line,) = [line for block in bash_blocks() for line in block.splitlines() if re.search(pattern, line)]
    return line


def _run_as_written(line: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # what `source .venv/bin/activate` does
    line = line.replace(".venv/bin/", f"{BIN}/")
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, check=False, capture_output=True, text=True,
                          timeout=600)


def test_new_imagery_for_retraining_as_the_readme_makes_it(tmp_path):
    out = _run_as_written(_readme_line(r"geosurge synth .*--id-prefix"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (manifest,) = (tmp_path / "runs" / "demo" / "store" / "incoming").glob("*/manifest.parquet")
    ids = pq.read_table(manifest).column("image_id").to_pylist()
    assert len(ids) == 200 and all(i.startswith("batch1_") for i in ids)  # apart from the demo's gw_…


def test_the_serving_request_body_is_built_in_a_file_for_a_large_photo(tmp_path):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    photo = buffer.getvalue()
    assert len(photo) > 150_000  # beyond what fits in one command-line argument (~128 KB)
    (tmp_path / "photo1.jpg").write_bytes(photo)
    out = _run_as_written(_readme_line(r"> body\.json"), tmp_path)
    assert out.returncode == 0, out.stderr
    body = json.loads((tmp_path / "body.json").read_text())
    assert base64.b64decode(body["inputs"][0]["image"]) == photo and body["params"] == {"k": 3}
    assert "-d @body.json" in _readme_line(r"curl .*invocations")
