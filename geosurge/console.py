"""The console of a pipeline command: stage headers, one progress line per long stage, warnings that matter and
the final summary. Everything else (Ray, Ray Data, Ray Train, DeepSpeed, transformers, MLflow, the workers'
output) goes to files under the run folder's `logs/`, and `--verbose` brings it all back to the console.

`quiet_console(log_dir)` is called once by the command before anything heavy is imported; `runtime.init_ray`
calls `route_worker_output()` once Ray runs, so the workers' stdout and stderr land in `logs/workers.log`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import TextIO

# Libraries that print on their own; their loggers go to the log file only (errors still reach the console).
NOISY_LOGGERS = ("ray", "deepspeed", "DeepSpeed", "transformers", "mlflow", "alembic", "torch", "urllib3",
                 "filelock", "huggingface_hub", "py.warnings", "h5py", "matplotlib", "PIL", "numexpr")
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # tqdm bars in any library (transformers' "Writing model shards", ...)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Ray's tqdm and Ray Train replace `builtins.print` with wrappers (the workers' copy logs each line twice)
    "RAY_TQDM_PATCH_PRINT": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
PRINT_WRAPPERS = ("tqdm_ray.py", "patch_print.py")  # a print through these is its caller's
# `<stage>: 24/240 images ...` and a training worker's `[train] epoch 1/2 ...`: progress, drawn as one line
PROGRESS = re.compile(r"^(?P<stage>[\w .-]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>[a-z]+)\b")
TRAIN_EPOCH = re.compile(r"\[train\] epoch (?P<done>\d+)/(?P<total>\d+) (?P<rest>.*)$")
WORKER_ERROR = re.compile(r"^\w*(Error|Exception)\b[^:]*: ")
PROGRESS_EVERY_S = 10.0  # plain progress lines when stdout is not a terminal (a Ray job's log)
# Ray workers that run our code (training loop, Ray Data map tasks and actors); Ray's own actors' errors stay in
# the log
USER_CODE_WORKERS = ("RayTrainWorker", "MapWorker", "MapBatches", "Map(", "ReadFiles", "fetch", "write", "stage")


class _State:
    log_dir: Path | None = None
    verbose = True  # until quiet_console: a library user's own console is left alone
    console: TextIO = sys.stdout
    progress: ProgressLine | None = None
    log_file: TextIO | None = None


STATE = _State()


def log_dir() -> str | None:
    """Where this run's logs are written (None: everything went to the console)."""
    return str(STATE.log_dir) if STATE.log_dir else None


def is_quiet() -> bool:
    return not STATE.verbose


class ProgressLine:
    """One live line per stage: done/total, rate and ETA. On a terminal it is redrawn in place; elsewhere it is a
    plain line every PROGRESS_EVERY_S seconds, and the last one."""

    def __init__(self, out: TextIO, tty: bool):
        self.out, self.tty = out, tty
        self.stage, self.first, self.last_print, self.open = "", (0.0, 0), 0.0, False
        self.last_done = -1

    def update(self, stage: str, done: int, total: int, unit: str, note: str = "") -> None:
        now = time.time()
        if stage == self.stage and done == self.last_done:
            return  # the same line again (a worker's output forwarded twice)
        if stage != self.stage:
            self.finish()
            self.stage, self.first, self.last_print = stage, (now, done), 0.0
        self.last_done = done
        (t0, done0), width = self.first, 24
        filled = int(width * min(done / max(total, 1), 1.0))
        text = f"{stage} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}"
        if now > t0 and done > done0:  # rate and time left from what moved since this stage's first line
            rate = (done - done0) / (now - t0)
            text += f" {rate:.3g} {unit}/s" + (f" ETA {(total - done) / rate:.0f} s" if done < total else "")
        text += f"  {note}" if note else ""
        if self.tty:
            self.out.write(f"\r\033[K{text}")
            self.open = True
            if done >= total:
                self.finish()
        elif done >= total or now - self.last_print >= PROGRESS_EVERY_S:
            self.out.write(text + "\n")
            self.last_print = now
        self.out.flush()

    def finish(self) -> None:
        if self.open:
            self.out.write("\n")
            self.out.flush()
            self.open = False


# who may print to the console: our package and workflows, `python -c`, and tracebacks (always worth showing)
OURS = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "workflows"), "<string>",
        str(Path(traceback.__file__).resolve()))


class ConsoleStream(io.TextIOBase):
    """The driver's stdout while the console is quiet: every line goes to the log file; a line printed by a
    library (DeepSpeed's checkpoint conversion, ...) stays there; progress lines are drawn by the ProgressLine; the
    rest of our own lines pass to the console as they are."""

    def __init__(self, console: TextIO, log: TextIO, progress: ProgressLine | None, ours: tuple[str, ...] = OURS):
        self.console, self.log, self.progress, self.ours = console, log, progress, ours
        self.pending, self.pending_ours = "", True

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # for libraries that ask (faulthandler, subprocess): the console's own
        return self.console.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.console, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        try:
            frame = sys._getframe(1)  # who printed: our code, or a library's
            while frame.f_back is not None and frame.f_code.co_filename.endswith(PRINT_WRAPPERS):
                frame = frame.f_back
            caller = frame.f_code.co_filename
        except ValueError:  # called from C with no Python frame: the interpreter's own error report
            caller = OURS[-1]
        self.pending_ours = caller.startswith(self.ours)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(line, self.pending_ours)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def _line(self, line: str, ours: bool) -> None:
        self.log.write(line + "\n")
        if not ours:
            return
        if self.progress is not None and (m := PROGRESS.match(line)):
            self.progress.update(m["stage"], int(m["done"]), int(m["total"]), m["unit"])
            return
        if STATE.progress is not None:
            STATE.progress.finish()
        self.console.write(line + "\n")
        self.console.flush()  # line by line, as a Ray job's log is read while it runs


class _ConsoleFilter(logging.Filter):
    """Log records worth a line on the console: our own warnings, and errors from anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.name == "py.warnings":  # Python warnings: those raised by our code, deprecations aside
            message = record.getMessage()
            return "/geosurge/" in message and "DeprecationWarning" not in message
        return record.name.startswith("geosurge") and record.levelno >= logging.WARNING


def quiet_console(log_dir: str, verbose: bool = False) -> None:
    """Route what libraries print to `log_dir/driver.log` (C-level output of Ray's core worker included) and keep
    the console for headers, progress, warnings that matter and summaries. `verbose`: leave everything as is."""
    STATE.verbose = verbose
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    path = Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    STATE.log_dir = path
    log = open(path / "driver.log", "a", buffering=1)  # noqa: SIM115 — lives as long as the process
    STATE.log_file = log
    tty = sys.stdout.isatty()
    # Ray's core worker (C++) and the processes ray.init starts write to fd 2: point fd 2 at the log, and give
    # Python's stderr (our errors, tracebacks of bugs) a copy of the console's fd
    sys.stderr.flush()
    console_err = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(log.fileno(), 2)
    STATE.console = sys.stdout
    STATE.progress = ProgressLine(sys.stdout, tty)
    sys.stdout = ConsoleStream(STATE.console, log, STATE.progress)
    sys.stderr = ConsoleStream(console_err, log, None)  # a library's own prints to stderr (MLflow's) to the log

    logging.captureWarnings(True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    to_file = logging.StreamHandler(log)
    to_file.setLevel(logging.INFO)  # a library logger set to DEBUG (Ray Data's) stays out of the file too
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler(console_err)
    to_console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    to_console.addFilter(_ConsoleFilter())
    root.handlers = [to_file, to_console]
    silence_library_loggers()


def silence_library_loggers() -> None:
    """Take the console handlers off the libraries' own loggers (Ray, Ray Data, MLflow, DeepSpeed install them at
    import), so their records reach the root logger's file and console filter instead. Called again after Ray and
    Ray Data are imported."""
    if STATE.verbose:
        return
    for name in list(logging.root.manager.loggerDict):
        if not name.startswith(NOISY_LOGGERS):
            continue
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not _is_console_handler(h)]
        logger.propagate = True


def _is_console_handler(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = handler.stream
    return (stream in (sys.__stderr__, sys.__stdout__) or isinstance(stream, ConsoleStream)
            or getattr(stream, "name", None) in ("<stderr>", "<stdout>"))


def route_worker_output() -> None:
    """Ray workers' stdout and stderr (forwarded to the driver) into `logs/workers.log`; a training worker's
    `[train] epoch` lines become the training progress line. A Ray-internal hook: the public switch
    (`ray.init(log_to_driver=False)`) would leave the lines on each node, where a Ray job's user never looks."""
    if STATE.verbose or STATE.log_dir is None:
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    workers = open(STATE.log_dir / "workers.log", "a", buffering=1)  # noqa: SIM115 — lives as long as Ray

    def route(batch: dict) -> None:
        who = batch.get("actor_name") or batch.get("task_name") or "worker"
        for line in batch.get("lines", []):
            workers.write(f"({who} pid={batch.get('pid')}) {line}\n")
            if (m := TRAIN_EPOCH.search(line)) and STATE.progress is not None:
                STATE.progress.update("train", int(m["done"]), int(m["total"]), "epochs", m["rest"])
            elif who.startswith(USER_CODE_WORKERS) and WORKER_ERROR.match(line):
                # the last line of a traceback in a worker running our code: Ray may retry, but say so
                logging.getLogger("geosurge.workers").warning(
                    f"{who} (pid {batch.get('pid')}) failed: {line.strip()} (its output: {workers.name})")

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.remove_handler("geosurge_console")
    global_worker_stdstream_dispatcher.add_handler("geosurge_console", route)
    silence_library_loggers()
