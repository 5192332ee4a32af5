"""What each process of a run is given: its environment (an allowlist, never the server's own) and its view
of the file system (sandbox.View). The training run and the evaluator differ in one thing that matters:
only the evaluator sees the validation data.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from server.config import CONFIG_NAME, Config
from server.run import sandbox

# Passed through from the server's environment when set: locale, devices, libraries, threads, and the
# experiment's own documented variables (docs/CONTRACT.md). Nothing else: no keys, tokens or paths.
BASE_ALLOW = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "PYTORCH_CUDA_ALLOC_CONF", "AUTORESEARCH_DEVICE", "AUTORESEARCH_MODEL_SIZE",
)  # fmt: skip
DEFAULT_CACHE = "~/.cache/autoresearch"  # prepare.py's defaults, for a run whose config names no data
DEFAULT_DATASET = "shakespeare-bpe8192"
CUDA_DATASET = "climbmix10-bpe8192"  # prepare.py's default where torch sees CUDA (prepare.CUDA_DATASET)


@dataclass(frozen=True)
class Places:
    """Where things are for one repository: what runs must not see, and what they share."""

    root: Path
    state: Path
    data: Path  # the prepared dataset
    compile_cache: Path  # kernels and autotuning results, kept across runs

    @classmethod
    def of(cls, root: Path, config: Config) -> Places:
        state = (root / config.state_dir).resolve()
        return cls(root.resolve(), state, data_dir(config), state / "cache")

    def hidden(self) -> list[Path]:
        """Covered by an empty folder in every sandbox: the repository (its .git too), the state folder, the
        home folder (credentials), the data cache, and the raw text the dataset was made from."""
        home = Path(os.environ.get("HOME") or "/nonexistent")
        paths = [self.root, self.state, self.data.parent, *source_paths(self.data)]
        if home.is_dir() and home != Path("/"):
            paths.append(home)
        return [p.resolve() for p in paths]

    def interpreter(self) -> list[Path]:
        """The interpreter's folders, read-only, without the repository itself (a source checkout on
        sys.path would otherwise bring .git and the state folder back)."""
        return [p for p in sandbox.interpreter_paths() if p != self.root and p not in self.root.parents]


def data_dir(config: Config) -> Path:
    if config.data_dir:
        return Path(config.data_dir).expanduser().resolve()
    cache = config.env.get("AUTORESEARCH_CACHE") or os.environ.get("AUTORESEARCH_CACHE") or DEFAULT_CACHE
    name = config.env.get("AUTORESEARCH_DATASET") or os.environ.get("AUTORESEARCH_DATASET")
    name = name or (CUDA_DATASET if cuda_available() else DEFAULT_DATASET)
    return (Path(cache).expanduser() / name).resolve()


@functools.cache
def cuda_available() -> bool:
    """Whether the runs' torch sees CUDA, as prepare.py's default dataset depends on it. The server does not
    import torch: where no NVIDIA driver library loads the answer is no at once, else torch is asked once."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"


def source_paths(data: Path) -> list[Path]:
    """The raw corpus the dataset was prepared from (its validation text too), as prepare.py recorded it."""
    try:
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [Path(p) for p in meta.get("source_paths", []) if isinstance(p, str) and Path(p).is_absolute()]


def train_tokens(data: Path) -> int | None:
    """Tokens in the dataset's train split, as prepare.py recorded them in meta.json (None if unknown)."""
    try:
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
        tokens = meta["outputs"]["train.bin"]["tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tokens if isinstance(tokens, int) and tokens > 0 else None


def run_env(config: Config, places: Places, scratch: Path, output: Path, seed: int) -> dict[str, str]:
    """The training run's whole environment."""
    env = _base_env(config, places, scratch)
    env.update(
        AUTORESEARCH_TIME_BUDGET=f"{config.time_budget:g}", AUTORESEARCH_OUTPUT=str(output),
        AUTORESEARCH_SEED=str(seed), TORCHINDUCTOR_CACHE_DIR=str(places.compile_cache / "inductor"),
        TRITON_CACHE_DIR=str(places.compile_cache / "triton"),
    )  # fmt: skip
    if config.eval_batch_size:  # save_model exports the model for the evaluator's batch
        env["AUTORESEARCH_EVAL_BATCH"] = str(config.eval_batch_size)
    return env


def eval_env(config: Config, places: Places, scratch: Path) -> dict[str, str]:
    """The evaluator's environment: the evaluation size and batch come from the pinned configuration."""
    env = _base_env(config, places, scratch)
    env.update(AUTORESEARCH_EVAL_TOKENS=str(config.eval_tokens))
    if config.eval_batch_size:
        env["AUTORESEARCH_EVAL_BATCH"] = str(config.eval_batch_size)
    return env


def _base_env(config: Config, places: Places, scratch: Path) -> dict[str, str]:
    allowed = (*BASE_ALLOW, *config.env_allow)
    env = {name: os.environ[name] for name in allowed if name in os.environ}
    env.update(config.env)
    env.update(
        HOME=str(scratch), TMPDIR=str(scratch), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
        AUTORESEARCH_CACHE=str(places.data.parent), AUTORESEARCH_DATASET=places.data.name,
    )  # fmt: skip
    env.setdefault("PATH", os.defpath)
    return env


def run_view(config: Config, places: Places, snapshot: Path, output: Path, scratch: Path) -> sandbox.View:
    """The training run: the interpreter, the training files of the dataset, its snapshot (locked files
    read-only), its output folder, the compile cache; the validation data is not there at all."""
    train = [places.data / name for name in config.train_files]
    locked = [snapshot / rel for rel in [*config.locked, CONFIG_NAME]]
    places.compile_cache.mkdir(parents=True, exist_ok=True)
    return sandbox.View(hide=places.hidden(), read_only=[*places.interpreter(), *train],
                        writable=[snapshot, output, scratch, places.compile_cache], locked=locked,
                        network=config.network)  # fmt: skip


def eval_view(places: Places, folder: Path, model_dir: Path, result_dir: Path, scratch: Path) -> sandbox.View:
    """The evaluator: the interpreter, the whole dataset, the locked files and the handed-over model, all
    read-only; it writes only its result."""
    return sandbox.View(hide=places.hidden(), read_only=[*places.interpreter(), places.data, model_dir, folder],
                        writable=[result_dir, scratch])  # fmt: skip
