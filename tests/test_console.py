"""The quiet console: progress lines drawn as one line per stage, library output and Ray's core-worker lines in the
run's log file, our own lines and warnings that matter on the console, everything back with `verbose`."""

import io
import logging
import subprocess
import sys
from pathlib import Path

from geosurge import console
from geosurge.console import OURS, ConsoleStream, ProgressLine, _ConsoleFilter

HERE = (*OURS, str(Path(__file__).parent))  # this test's prints count as the pipeline's own


def test_progress_lines_become_one_line_per_stage_when_not_a_terminal():
    out, log = io.StringIO(), io.StringIO()
    stream = ConsoleStream(out, log, ProgressLine(out, tty=False), HERE)
    for i in range(1, 11):
        print(f"geoworld: {24 * i}/240 images ({400 + i} images/s)", file=stream)
    print("=== 2/7 segmenter ===", file=stream)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # the first progress line, the last one, then the header
    assert lines[0].startswith("geoworld [") and "24/240 images" in lines[0]
    assert "240/240 images" in lines[1] and "images/s" in lines[1]
    assert lines[2] == "=== 2/7 segmenter ==="
    assert len(log.getvalue().splitlines()) == 11  # the log keeps every line


def test_progress_is_redrawn_in_place_on_a_terminal():
    out, log = io.StringIO(), io.StringIO()
    progress = ProgressLine(out, tty=True)
    stream = ConsoleStream(out, log, progress, HERE)
    for i in (10, 50, 100):
        print(f"ingest: {i}/100 rows", file=stream)
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and "100/100 rows" in text.rsplit("\r", 1)[1]
    assert "ETA" in text.split("\r")[2]  # 50/100 done: time left is estimated from the rate since 10


def test_a_librarys_prints_stay_in_the_log():
    out, log = io.StringIO(), io.StringIO()
    stream = ConsoleStream(out, log, ProgressLine(out, tty=False), HERE)
    library_print = compile("print('Processing zero checkpoint x', file=stream)", "/site-packages/deepspeed/x.py",
                            "exec")  # code the stream takes for a library's
    exec(library_print, {"stream": stream})  # noqa: S102
    print("registered geosurge version 1", file=stream)
    wrapped = compile("def safe_print(*args, **kwargs):\n    print(*args, **kwargs)\n",
                      "/site-packages/ray/experimental/tqdm_ray.py", "exec")  # Ray's replacement of print
    namespace: dict = {}
    exec(wrapped, namespace)  # noqa: S102
    namespace["safe_print"]("=== 6/7 register ===", file=stream)
    assert out.getvalue() == "registered geosurge version 1\n=== 6/7 register ===\n"
    assert "Processing zero checkpoint x" in log.getvalue()


def test_console_filter_keeps_our_warnings_and_every_error():
    keep = _ConsoleFilter().filter

    def record(name, level, msg="m"):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert keep(record("geosurge.workers", logging.WARNING))
    assert keep(record("ray.core", logging.ERROR))
    assert not keep(record("ray.data", logging.WARNING, "Progress bars disabled"))
    assert not keep(record("geosurge.x", logging.INFO))
    assert keep(record("py.warnings", logging.WARNING, "/work/geosurge/train/trainer.py:63: UserWarning: no val"))
    assert not keep(record("py.warnings", logging.WARNING, "/work/geosurge/x.py:1: RayDeprecationWarning: old"))
    assert not keep(record("py.warnings", logging.WARNING, "/site-packages/ray/x.py:1: UserWarning: x"))


SCRIPT = """
import logging, os, sys, warnings
from geosurge import console
console.quiet_console(sys.argv[1], verbose=sys.argv[2] == "verbose")
logging.getLogger("ray").info("Started a local Ray instance.")
logging.getLogger("ray.data").warning("Progress bars disabled.")
os.write(2, b"[2026-11-30 E 7828] core_worker.cc:2465: Actor with class name\\n")
print("=== 1/7 data ===")
logging.getLogger("geosurge.x").warning("a warning that matters")
"""


def test_quiet_console_routes_ray_output_to_the_log_file_and_verbose_brings_it_back(tmp_path):
    quiet = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "logs"), "quiet"],
                           check=False, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    console_text = quiet.stdout + quiet.stderr
    assert quiet.stdout == "=== 1/7 data ===\n"
    assert "a warning that matters" in quiet.stderr
    for noise in ("Started a local Ray", "Progress bars disabled", "core_worker.cc"):
        assert noise not in console_text
        assert noise in (tmp_path / "logs" / "driver.log").read_text()

    verbose = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "v"), "verbose"],
                             check=False, capture_output=True, text=True, timeout=120)
    assert "core_worker.cc" in verbose.stderr and "=== 1/7 data ===" in verbose.stdout
    assert not (tmp_path / "v").exists()
    assert console.log_dir() is None  # this process's console was never touched
