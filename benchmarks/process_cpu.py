"""Where a benchmark's cores went, by process: snapshots of the CPU seconds of the benchmark's own Ray (every one of
its processes descends from the benchmark process), of the benchmark process itself and of the whole machine, and
the cores each used between two snapshots. Shared by train_overhead.py and ingest.py, which import it as a sibling
script module (Python puts a script's own folder, benchmarks/, on sys.path)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

RAY_IDLE_WORKER = "ray::IDLE"


def process_title(proc: psutil.Process) -> str:
    cmdline = proc.cmdline()
    title = cmdline[0] if cmdline else proc.name()
    if title.startswith("ray::"):  # ray::RayTrainWorker.run, ray::IDLE, ray::SplitCoordinator.start_epoch ...
        name = title.split()[0]
        if "(" in name and "." not in name.split("(")[0]:  # a Ray Data task: its operators, ray::MapBatches(f)->...
            return name
        return name.split(".")[0].split("(")[0]
    name = os.path.basename(title.split()[0])
    if name.startswith("python"):  # Ray's Python daemons: name them by their script (log_monitor.py, ...)
        script = next((a for a in cmdline[1:] if not a.startswith("-")), "")
        return f"python {os.path.basename(script)}".strip()
    return name


def ray_tree_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process of this benchmark's own Ray (all descend from this process), with the
    process's title: Ray names its workers by what they run (`ray::RayTrainWorker...`), its daemons by binary."""
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
            out[proc.pid] = (process_title(proc), t.user + t.system)
        except psutil.Error:
            pass
    return out


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    tree: dict[int, tuple[str, float]]  # pid → (title, CPU seconds) of every process under this one
    driver: float  # this process's CPU seconds
    busy: float  # the machine's busy CPU seconds (idle and I/O wait excluded)

    @classmethod
    def take(cls) -> CpuSnapshot:
        machine = psutil.cpu_times()
        driver = psutil.Process().cpu_times()
        return cls(time.time(), ray_tree_cpu_seconds(), driver.user + driver.system,
                   sum(machine) - machine.idle - getattr(machine, "iowait", 0.0))


def cores_by_process(first: CpuSnapshot, last: CpuSnapshot, titles: dict[int, str] | None = None,
                     driver: str = "this driver process") -> tuple[float, dict[str, float]]:
    """(seconds, {title: cores}) between two snapshots: each process's CPU seconds over the wall seconds, summed by
    title (from `titles` where it names the pid, else from `last`), then `driver` (this process), every other process
    on the machine, and the idle cores."""
    seconds = max(last.wall - first.wall, 1e-9)
    titles = titles or {}
    cores: dict[str, float] = {}
    for pid, (title, cpu) in last.tree.items():
        title = titles.get(pid, title)
        cores[title] = cores.get(title, 0.0) + (cpu - first.tree.get(pid, ("", 0.0))[1]) / seconds
    cores[driver] = (last.driver - first.driver) / seconds
    busy = (last.busy - first.busy) / seconds
    cores["other processes on the machine"] = max(0.0, busy - sum(cores.values()))
    cores["idle"] = max(0.0, (os.cpu_count() or 1) - busy)
    return seconds, cores


def print_cores(cores: dict[str, float], indent: str = "      ") -> None:
    for title, used in sorted(cores.items(), key=lambda kv: -kv[1]):
        if used >= 0.005:
            print(f"{indent}{used:5.2f}  {title}")


class TaskTitles(threading.Thread):
    """Which task each Ray worker under this process was seen running, sampled every 0.5 s until `stop()`: a
    worker is titled by its task only while it runs one (`ray::IDLE` between tasks and after the run), so a
    breakdown taken afterwards would lump the workers that did the work with the idle ones."""

    def __init__(self, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.titles: dict[int, str] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid, (title, _) in ray_tree_cpu_seconds().items():
                if title.startswith("ray::") and title != RAY_IDLE_WORKER:
                    self.titles[pid] = title
            self._stop_event.wait(self.interval_s)

    def stop(self) -> dict[int, str]:
        self._stop_event.set()
        self.join()
        return self.titles
