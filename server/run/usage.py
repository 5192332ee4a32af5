"""What the server measures about a running process tree from the kernel: memory (resident sets, each
process's high-water mark), processes, CPU time (user and system, ended threads and reaped children included),
each thread's time on a CPU and waiting for one (schedstat), and GPU memory where nvidia-smi exists. Standard
library and psutil only; runner.py samples it every SAMPLE_EVERY_S."""

from __future__ import annotations

import glob
import shutil
import subprocess
from typing import Literal

import psutil


class Usage:
    """Peak memory (resident sets summed over the tree, and each process's kernel high-water mark) and the
    most processes seen at once; GPU memory from nvidia-smi where it exists."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.peak_gpu_mb: float | None = None
        self.most = 0
        self.now_mb = 0.0
        self.count = 0
        self.smi = shutil.which("nvidia-smi")
        self.sched: dict[str, tuple[int, int]] = {}  # thread -> (ns on a CPU, ns runnable but waiting for one)
        self.cpu_seen = 0.0  # the most CPU seconds the tree was seen to have used (cpu_now), every sample

    def sample(self, tree: list[psutil.Process]) -> None:
        total, highest = 0.0, 0.0
        for proc in tree:
            try:
                total += proc.memory_info().rss / 2**20
                highest = max(highest, high_water_mb(proc.pid))
            except psutil.Error:
                continue
            self.sched.update(schedstats(proc.pid))
        self.now_mb, self.count = total, len(tree)
        self.peak_mb = max(self.peak_mb, total, highest)
        self.cpu_seen = max(self.cpu_seen, cpu_now(tree))
        self.most = max(self.most, len(tree))

    def cpu_seconds(self) -> float | None:
        return round(sum(ran for ran, _ in self.sched.values()) / 1e9, 3) if self.sched else None

    def wait_seconds(self) -> float | None:
        return round(sum(waited for _, waited in self.sched.values()) / 1e9, 3) if self.sched else None

    def kernel_peak(self, mb: float) -> None:
        self.peak_mb = max(self.peak_mb, mb)

    def sample_gpu(self, pids: set[int]) -> None:
        if self.smi is None or not pids:
            return
        query = [self.smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return
        used = sum(float(mb) for pid, _, mb in (line.partition(",") for line in out.splitlines())
                   if pid.strip().isdigit() and int(pid) in pids and mb.strip().replace(".", "").isdigit())  # fmt: skip
        if used:
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, used)

    def over(self, memory_limit_mb: float, max_processes: int) -> Literal["memory", "processes"] | None:
        if memory_limit_mb and self.now_mb > memory_limit_mb:
            return "memory"
        if max_processes and self.count > max_processes:
            return "processes"
        return None


def schedstats(pid: int) -> dict[str, tuple[int, int]]:
    """Each thread's time on a CPU and time runnable in the run queue, in ns (/proc/<pid>/task/*/schedstat;
    a thread that ended since the last sample keeps the figures it had then)."""
    found = {}
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path, encoding="ascii") as fh:
                ran, waited, _ = fh.read().split()
        except (OSError, ValueError):
            continue
        found[f"{pid}/{path.split('/')[-2]}"] = (int(ran), int(waited))
    return found


def high_water_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_now(tree: list[psutil.Process]) -> float:
    """CPU seconds the tree's processes used so far: each one's user and system time (its ended threads
    included) and its ended, reaped children's."""
    total = 0.0
    for proc in tree:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return round(total, 3)
