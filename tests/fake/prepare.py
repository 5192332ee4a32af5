"""A fake experiment that follows docs/CONTRACT.md and misbehaves on request (locked in test repos)."""

import math
import os
import subprocess
import sys
import time

NOISE_SIGMA = 0.01  # the "noisy" mode's same-code spread


def summary(metric, training=None):
    budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "1"))
    training = budget if training is None else training
    print("---")
    print(f"val_bpb:          {metric:.6f}")
    print(f"training_seconds: {training:.1f}")
    print(f"total_seconds:    {training + 0.1:.1f}")
    print("peak_memory_mb:   100.0")
    print("total_tokens_M:   0.003")  # 3 steps of 1000 tokens
    print("epoch:            1")
    print("num_steps:        3")


def main(mode, metric):
    budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "1"))
    for step in range(3):
        print(f"step {step} | loss {3.0 - step:.4f} | elapsed {step * 0.01:.2f}s | remaining 0.1s", flush=True)
    if mode == "ok":
        summary(metric)
    elif mode == "noisy":  # metric + NOISE_SIGMA * N(0, 1), drawn from the seed the server set
        import random

        summary(metric + NOISE_SIGMA * random.Random(int(os.environ["AUTORESEARCH_SEED"])).gauss(0.0, 1.0))
    elif mode == "spin":  # every core busy for the budget, in processes of its own: a real run's CPU work
        end = f"import time\nend = time.time() + {budget}\nwhile time.time() < end: pass"
        for proc in [subprocess.Popen([sys.executable, "-c", end]) for _ in range(os.cpu_count() or 1)]:
            proc.wait()
        summary(metric)
    elif mode == "sleep":  # sleeps through its budget, like a real run that does nothing
        time.sleep(budget)
        summary(metric)
    elif mode == "crash":
        raise RuntimeError("boom: a deliberate crash")
    elif mode == "nan":
        print("FAIL: loss is nan at step 3")
        sys.exit(1)
    elif mode == "hang":
        time.sleep(3600)
    elif mode == "ignore_term":
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    elif mode == "fork":  # a child that leaves the process group and outlives its parent
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)", "autoresearch-test-escapee"], start_new_session=True
        )
        with open("child.pid", "w") as fh:
            fh.write(str(child.pid))
        time.sleep(1)  # the run lives on a moment, so a test can see its child alive
        print(f"child {child.pid}")
        summary(metric)
    elif mode == "flood":
        line = "x" * 1023 + "\n"
        for _ in range(20_000):
            sys.stdout.write(line)
        summary(metric)
    elif mode == "silent":
        time.sleep(3600)
    elif mode == "no_metric":
        print("done, but no summary")
    elif mode == "fake_then_real":
        print("---\nval_bpb: 0.000001")
        print("more training output")
        summary(metric)
    elif mode == "over_budget":
        summary(metric, training=budget * 3 + 5)
    elif mode == "metric_nan":
        summary(math.nan)
    elif mode == "tamper":
        with open("prepare.py", "a") as fh:
            fh.write("\n# tampered\n")
        summary(metric)
    elif mode == "oom":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown mode {mode}")
