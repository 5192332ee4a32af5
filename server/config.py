"""The human-owned configuration: `autoresearch.toml` at the repository root (all keys optional)."""

from __future__ import annotations

import difflib
import glob
import os
import re
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args, get_origin

import annotated_types
import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from server.errors import ConfigError

CONFIG_NAME = "autoresearch.toml"
STEERING_FILES = ("program.md", "CLAUDE.md", ".mcp.json", ".claude/settings.json")
# Environment overrides, for the launcher (the demo, tests, a night's script); every run records the ones in
# effect. .mcp.json could set them too, which is why it is pinned with the steering files.
ENV_OVERRIDES = {
    "AUTORESEARCH_TAG": "tag",
    "AUTORESEARCH_TIME_BUDGET": "time_budget",
    "AUTORESEARCH_TIMEOUT": "timeout",
    "AUTORESEARCH_EVAL_TOKENS": "eval_tokens",
    "AUTORESEARCH_STATE_DIR": "state_dir",
    "AUTORESEARCH_SLOTS": "slots",
}


class Config(BaseModel):
    """Everything the server knows about the experiment it drives."""

    model_config = ConfigDict(extra="forbid")

    tag: str = Field("default", description="run tag; the run branch is autoresearch/<tag>")
    editable: str = Field("experiment/train.py", description="the one file the agent may change")
    locked: list[str] = Field(
        default_factory=lambda: ["experiment/prepare.py", "experiment/evaluate.py", "experiment/causal.py"]
    )
    steering: list[str] = Field(
        default_factory=lambda: list(STEERING_FILES), description="files that steer the agent, pinned too"
    )
    command: list[str] = Field(
        default_factory=lambda: ["{python}", "experiment/train.py"],
        description="argv run in the snapshot; {python} is the server's interpreter",
    )
    contract: Literal["evaluated", "self-reported"] = Field(
        "evaluated", description="evaluated: the server's evaluator scores the handed-over model"
    )
    evaluator: list[str] = Field(
        default_factory=lambda: ["{python}", "experiment/evaluate.py", "{model}", "--result", "{result}"],
        description="argv run in a folder holding only the locked files; {model} and {result} are paths",
    )
    data_dir: str = Field("", description="the prepared dataset; empty: AUTORESEARCH_CACHE/AUTORESEARCH_DATASET")
    train_files: list[str] = Field(
        default_factory=lambda: ["train.bin", "tokenizer.json", "token_bytes.npy", "meta.json"],
        description="the files of the dataset a training run may read; the rest only the evaluator sees",
    )
    metric: str = "val_bpb"
    direction: Literal["minimize", "maximize"] = "minimize"
    time_budget: float = Field(300.0, gt=0, description="seconds of training per experiment")
    timeout: float = Field(0.0, ge=0, description="hard wall-clock limit in seconds; 0 = computed")
    budget_tolerance: float = Field(
        0.01, ge=0, description="fraction over budget accepted, at least 1 s (docs/CONTRACT.md)"
    )
    startup_allowance: float = Field(
        0.0, ge=0, description="seconds from start to timed training; 0: 60 on a GPU machine, 15 without"
    )
    handover_allowance: float = Field(
        0.0, ge=0, description="seconds from the end of training to exit; 0: 30 on a GPU machine, 15 without"
    )
    min_improvement: float = Field(
        0.0, ge=0, description="noise floor: a run must beat the best by more than this to be kept"
    )
    noise_seeds: int = Field(
        3, ge=1, le=20, description="seeds the first run of a tag (the baseline) runs with, to measure the noise floor"
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="a kept run's gain must be beyond the noise at this one-sided confidence"
    )
    holdout: bool = Field(True, description="score every kept run on the dataset's holdout split (never shown to "
                          "the agent)")  # fmt: skip
    holdout_gate: bool = Field(True, description="keep refuses a run whose validation gain does not hold on the "
                               "holdout (Thresholdout: server/lab/reuse.py); needs holdout")  # fmt: skip
    holdout_budget: int = Field(20, ge=0, description="holdout disagreements a dataset answers before it should be "
                                "split anew; then validation alone decides")  # fmt: skip
    eval_tokens: int = Field(40 * 524288, gt=0)
    eval_batch_size: int = Field(0, ge=0, description="rows per evaluation batch; 0: 2 on a CPU, 32 on a GPU")
    seed: int = Field(42, description="the seed every run gets (AUTORESEARCH_SEED)")
    sandbox: Literal["bwrap", "off"] = Field("bwrap", description="off: runs see the whole machine")
    network: bool = Field(False, description="let runs reach the network")
    spares: bool = Field(
        True, description="start each slot's next run process ahead, imports done (server/run/spares.py)"
    )
    starved_share: float = Field(
        0.3,
        gt=0,
        le=1,
        description="a run whose threads waited this much more of their runnable time for a CPU than the tag "
        "baseline's did (other processes held the cores) is flagged starved: its result is not evidence",
    )
    memory_limit_gb: float = Field(0.0, ge=0, description="0 = 90% of this machine's memory")
    max_processes: int = Field(512, ge=8, description="processes a run may have at once")
    env_allow: list[str] = Field(default_factory=list, description="server variables passed to runs")
    refuse_duplicates: bool = Field(True, description="refuse code identical to an earlier run's, unless a reason")
    max_experiments: int = Field(0, ge=0, description="the night's cap on experiments; 0: none")
    max_gpu_hours: float = Field(0.0, ge=0, description="the night's cap on hours of runs; 0: none")
    deadline: str = Field("", description="no run starts after this local time (ISO, e.g. 2026-11-27T07:00)")
    max_consecutive_crashes: int = Field(5, ge=0, description="stop after this many failed runs in a row; 0: never")
    plateau_runs: int = Field(0, ge=0, description="stop after this many runs without a kept one; 0: never")
    kill_grace: float = Field(5.0, ge=0, description="seconds between SIGTERM and SIGKILL")
    max_log_bytes: int = Field(5_000_000, ge=10_000)
    max_file_bytes: int = Field(50_000, ge=1_000, description="size cap of the editable file: about 3x the "
                                "default train.py (16 KB): room for code, not for a slice of the corpus")  # fmt: skip
    state_dir: str = ".autoresearch"
    slots: int = Field(0, ge=0, le=64, description="runs in flight at once; 0: one per GPU on a GPU machine, else 1")
    runner: Literal["local", "ray"] = Field("local", description="ray: each run is a task on a Ray cluster")
    ray_address: str = Field("", description="the Ray cluster; empty: RAY_ADDRESS, else a cluster on this machine")
    ray_num_gpus: float = Field(1.0, ge=0, description="GPUs each Ray task of a run asks for")
    ray_num_cpus: float = Field(1.0, ge=0, description="CPUs each Ray task of a run asks for")
    ray_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each task of a run asks for (pins runs to the nodes "
        "that offer them)")  # fmt: skip
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for each run")
    overrides: dict[str, str] = Field(default_factory=dict, description="(set by the server) launcher overrides")

    @field_validator("deadline")
    @classmethod
    def _deadline_is_a_time(cls, value: str) -> str:
        try:
            if value:
                datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"deadline must be a local time like 2026-11-27T07:00, not {value!r}") from None
        return value

    @field_validator("tag")
    @classmethod
    def _tag_is_ref_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value) or ".." in value:
            raise ValueError("tag must be letters, digits, '.', '_' or '-' (e.g. nov25)")
        return value

    @field_validator("train_files")
    @classmethod
    def _no_evaluation_split(cls, value: list[str]) -> list[str]:
        shown = [name for name in value if Path(name).name in ("val.bin", "holdout.bin")]
        if shown:
            raise ValueError(f"train_files must not include {shown[0]}: only the evaluator may read it")
        return value

    @property
    def startup_limit(self) -> float:
        """Seconds a run may take before timed training (torch.compile on a GPU needs tens of them)."""
        return self.startup_allowance or (60.0 if _has_gpu() else 15.0)

    @property
    def handover_limit(self) -> float:
        """Seconds a run may take after timed training: exporting the model."""
        return self.handover_allowance or (30.0 if _has_gpu() else 15.0)

    @property
    def hard_timeout(self) -> float:
        """The wall-clock limit: what the allowances add up to, with a margin for the slowest step."""
        allowed = self.startup_limit + self.time_budget * (1 + self.budget_tolerance) + self.handover_limit
        return self.timeout or max(2 * self.time_budget + 60, allowed + 60)

    @property
    def evaluated(self) -> bool:
        return self.contract == "evaluated"

    @property
    def memory_limit_mb(self) -> float:
        total = psutil.virtual_memory().total / 2**20
        return self.memory_limit_gb * 1024 if self.memory_limit_gb else 0.9 * total

    @property
    def slot_devices(self) -> list[str]:
        """The GPU each slot's run sees, in slot order (empty: no GPUs, or Ray, which assigns its own)."""
        return [] if self.runner == "ray" else gpu_indices()

    @property
    def slot_count(self) -> int:
        return self.slots or max(1, len(self.slot_devices))

    def argv(self) -> list[str]:
        return [sys.executable if part == "{python}" else part for part in self.command]

    def evaluator_argv(self, model: Path, result: Path) -> list[str]:
        names = {"{python}": sys.executable, "{model}": str(model), "{result}": str(result)}
        return [names.get(part, part) for part in self.evaluator]

    def pinned_files(self) -> list[str]:
        """Everything pinned when a tag starts: the locked files, the steering files, this configuration."""
        return list(dict.fromkeys([*self.locked, *self.steering, CONFIG_NAME]))

    def better(self, metric: float, best: float | None) -> bool:
        """Strictly better in the metric's direction, by more than the noise floor min_improvement."""
        if best is None:
            return True
        gain = best - metric if self.direction == "minimize" else metric - best
        return gain > self.min_improvement


def _has_gpu() -> bool:
    """An NVIDIA GPU on this machine (its device files), without importing torch into the server."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def gpu_indices() -> list[str]:
    """The GPUs runs may use: CUDA_VISIBLE_DEVICES where the launcher set it, else every NVIDIA device file."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    found = (re.fullmatch(r"/dev/nvidia(\d+)", p) for p in glob.glob("/dev/nvidia[0-9]*"))
    return sorted((m.group(1) for m in found if m), key=int)


def load_config(root: Path) -> Config:
    """Read autoresearch.toml (if present) and apply environment overrides."""
    data: dict[str, object] = {}
    path = root / CONFIG_NAME
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{CONFIG_NAME} is not valid TOML ({exc}); fix it and restart.") from exc
        data = dict(raw.get("autoresearch", raw))
    origins = {key: CONFIG_NAME for key in data}
    overrides = {}
    for var, key in ENV_OVERRIDES.items():
        if os.environ.get(var):
            data[key], origins[key] = os.environ[var], f"the environment variable {var}"
            overrides[key] = os.environ[var]
    data["overrides"] = overrides
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(plain_error(exc.errors()[0], origins) + "; fix it and restart.") from exc


def plain_error(error: ErrorDetails, origins: dict[str, str]) -> str:
    """A validation error in words for the person who wrote the file: the key, what it must be, the value given."""
    key = str(error["loc"][0]) if error["loc"] else ""
    where = origins.get(key, CONFIG_NAME)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(Config.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where} has an unknown key {key!r}{hint}; the keys are {', '.join(Config.model_fields)}"
    path = ".".join(str(part) for part in error["loc"])
    given = f", not {error['input']!r}" if error["type"] != "missing" else ""
    if error["type"] == "value_error":  # a validator's own sentence, already in plain words
        return f"{where}: {str(error['msg']).removeprefix('Value error, ')}{given}"
    what = "text, in quotes" if len(error["loc"]) > 1 else expected(key)  # an item of a list or table
    return f"{where}: {path} must be {what}{given}"


def expected(key: str) -> str:
    """What a key's value must be, in words: its kind, its bounds and what it means."""
    field = Config.model_fields[key]
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        kind = "one of " + " or ".join(repr(choice) for choice in get_args(annotation))
    else:
        kind = _KINDS.get(annotation, "a value of the documented kind")
    bounds = [f"above {m.gt:g}" for m in field.metadata if isinstance(m, annotated_types.Gt)]
    bounds += [f"of at least {m.ge:g}" for m in field.metadata if isinstance(m, annotated_types.Ge)]
    meaning = f" ({field.description})" if field.description else ""
    return " ".join([kind, *bounds]) + meaning


_KINDS: dict[object, str] = {
    str: "text",
    float: "a number",
    int: "a whole number",
    list[str]: 'a list of strings, e.g. ["a.py", "b.py"]',
    dict[str, str]: 'a table of strings, e.g. [autoresearch.env] NAME = "value"',
}
