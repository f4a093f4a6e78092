"""What a training run keeps in its --out folder, so that `train.py --resume` continues it exactly.

Defines
- `check_out`: a fresh run refuses a folder that holds a run (checkpoint.pt or metrics.jsonl).
- `drop_log_after`: on resume, metrics.jsonl loses the lines after the checkpoint's step and a
  half-written last line, rewritten atomically.
- `rng_state` / `set_rng_state`: the random streams the checkpoint saves and resume restores.
Imports only cli.py of the project.
"""
import json
import os

import torch

from cli import InputError, write_text


def check_out(out, resume):
    """A fresh run refuses a folder that holds a run (checkpoint.pt or metrics.jsonl): it would
    append its log to the old run's and overwrite its checkpoint. --resume continues it instead."""
    if resume:
        return
    if os.path.exists(os.path.join(out, "checkpoint.pt")):
        raise InputError(f"{out}: holds a run ; use --resume or another --out")
    if os.path.exists(os.path.join(out, "metrics.jsonl")):  # killed before its first checkpoint
        raise InputError(f"{out}: holds the log of a run without a checkpoint ; delete {out}/metrics.jsonl "
                         "or use another --out")


def drop_log_after(path, step):
    """On resume, forget log lines of steps after the checkpoint (a crashed run wrote them) and
    a last line cut short by the crash; the log is rewritten atomically."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    if lines and not lines[-1].endswith("\n"):  # the half line of a killed job
        lines.pop()
    keep = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}: line {number} is not JSON ; repair or delete the line, then resume") from None
        if record["step"] <= step:
            keep.append(line)
    write_text(path, "".join(keep))


def rng_state(device):
    """The random streams of the training process: torch's CPU generator and, on CUDA, the
    device's. The loop draws no numpy or Python randomness, and the data's augmentation is
    seeded per item (train.SeededItems), not drawn from these streams."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device):
    """Restore what rng_state saved (the CUDA stream only when both runs are on CUDA); older
    checkpoints hold the CPU state alone."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state, "cuda": None}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
