"""Faults of the scripts, each pinned by a test that fails without its fix: exact resume (colour
jitter in DataLoader workers, fp16 loss scale, a killed job's half log line), the --out policy,
atomic and line-by-line writes, infer.py's output names and montages, cli.atomic_path and the
umask; plus the pure pieces of the loop, StepSampler and one_cycle_lr."""
import contextlib
import json
import math
import os
import stat
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import infer
import nuscenes_fixture as fx
import run_state
import sampling
import train
import viz
from model import Student, StudentConfig, save_checkpoint
from rig import CAMERAS

TINY = ["--image-size", "32", "64", "--batch-size", "1", "--num-bins", "16", "--val-samples", "1", "--workers", "0"]
BASELINE = ["--lambda-ckd", "0", "--lambda-vr", "0"]  # no teacher: the faults are in the loop, not the terms


def crash_at(monkeypatch, crash_step):
    """Make train.main die (KeyboardInterrupt) as it starts step index `crash_step`, as a killed job does."""
    schedule = train.one_cycle_lr

    def lr(step, total, max_lr):
        if step == crash_step:
            raise KeyboardInterrupt
        return schedule(step, total, max_lr)

    monkeypatch.setattr(train, "one_cycle_lr", lr)
    return lambda: monkeypatch.setattr(train, "one_cycle_lr", schedule)


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]


def log_lines(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


# --- 1. exact resume -------------------------------------------------------------------------

def test_resume_with_a_worker_and_colour_jitter_is_exact(tmp_path, monkeypatch):
    """nuScenes with colour jitter, one DataLoader worker: 2 steps straight == 1 step, a kill
    (which leaves half a log line), --resume to 2. The jitter of step 2 is seeded by its place in
    the stream, not by a worker's history, so the weights are bit-equal; the log and args.json
    are rewritten by rename (a new inode), the half line is gone."""
    root = tmp_path / "nuscenes"
    fx.build_dataroot(root)
    args = ["--data", "nuscenes", "--dataroot", str(root), "--version", "v1.0-mini", "--no-pretrained",
            "--workers", "1", "--steps", "2", "--val-every", "1"] + TINY[:-2] + BASELINE
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    train.main(args + ["--out", straight])
    restore = crash_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--out", resumed])
    restore()
    with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
        f.write('{"step": 2, "lr": 0.0')  # the job was killed while writing this line
    inodes = {f: os.stat(os.path.join(resumed, f)).st_ino for f in ("metrics.jsonl", "args.json")}
    train.main(args + ["--out", resumed, "--resume"])

    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert [x["step"] for x in log_lines(resumed)] == [1, 1, 2, 2]  # train and val lines, no half line
    assert [x.get("loss") for x in log_lines(resumed)] == [x.get("loss") for x in log_lines(straight)]
    assert all(os.stat(os.path.join(resumed, f)).st_ino != ino for f, ino in inodes.items())  # renamed onto
    assert not [f for f in os.listdir(resumed) if f.startswith(".tmp-")]


def test_resume_restores_the_fp16_loss_scale(tmp_path, monkeypatch):
    """GradScaler's state is part of the run. A skipped step (a non-finite loss, what an fp16
    overflow looks like to GradScaler) halves the scale at step 1; the resumed run must go on
    with the halved scale, not start again at 2**16. The arithmetic stays fp32 (autocast off):
    fp16 convolutions on the CPU take ~25 s a step here, and the scale is what is tested."""
    scalers, calls, poison = [], [], set()

    class Recorded(torch.amp.GradScaler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            scalers.append(self)

    objective = train.losses.objective

    def overflow_at_first_call(*a, **k):
        loss, terms = objective(*a, **k)
        calls.append(1)
        return (loss * math.inf if len(calls) in poison else loss), terms

    monkeypatch.setattr(torch.amp, "GradScaler", Recorded)
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(train.losses, "objective", overflow_at_first_call)
    args = TINY + BASELINE + ["--steps", "2", "--val-every", "1", "--amp", "fp16"]
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")

    calls.clear(), poison.update({1})
    train.main(args + ["--out", straight])
    assert scalers[-1].get_scale() == 2.0**15  # the test bites: step 1 was skipped, the scale halved
    calls.clear()
    restore = crash_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--out", resumed])
    restore()
    calls.clear(), poison.clear()  # the resumed run starts at step 2, which did not overflow
    train.main(args + ["--out", resumed, "--resume"])
    assert scalers[-1].get_scale() == 2.0**15 and scalers[-1].state_dict() == scalers[0].state_dict()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_drop_log_after_tolerates_a_half_line_and_rewrites_atomically(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 2, "val": {}}\n'
                    '{"step": 3, "loss": 0.2}\n{"step": 4, "lo')
    inode = os.stat(path).st_ino
    run_state.drop_log_after(str(path), 2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 2, "val": {}}\n'
    assert os.stat(path).st_ino != inode and os.listdir(tmp_path) == ["metrics.jsonl"]  # renamed onto
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')  # a broken line inside: not a crash's mark
    with pytest.raises(cli.InputError, match=r"metrics.jsonl: line 2 is not JSON ; "):
        run_state.drop_log_after(str(path), 2)


def test_log_lines_reach_the_disk_as_they_are_written(tmp_path, monkeypatch):
    """metrics.jsonl is line-buffered: a job killed before it validates keeps its step lines."""
    crash_at(monkeypatch, 1)
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt) as killed:  # `killed` keeps the loop's frame, its open log
        train.main(TINY + BASELINE + ["--steps", "2", "--val-every", "2", "--out", out])
    assert [x["step"] for x in log_lines(out)] == [1]
    del killed


# --- 2. the --out policy ---------------------------------------------------------------------

@pytest.mark.parametrize("held, message", [
    (("checkpoint.pt", "metrics.jsonl"), "holds a run ; use --resume or another --out"),
    (("metrics.jsonl",), "holds the log of a run without a checkpoint ; delete"),
])
def test_a_fresh_run_refuses_an_out_that_holds_a_run(tmp_path, held, message):
    out = tmp_path / "run"
    out.mkdir()
    for name in held:
        (out / name).write_text("the old run\n")
    with pytest.raises(cli.InputError, match=f"^{out}: {message}"):
        train.main(TINY + ["--steps", "1", "--out", str(out)])
    assert sorted(os.listdir(out)) == sorted(held)
    assert all((out / name).read_text() == "the old run\n" for name in held)


# --- StepSampler, SeededItems, one_cycle_lr ----------------------------------------------------

def stream(n, batch, world, steps, seed=0, start=0):
    """Indices of steps start..steps-1, rank after rank, as the global batches list them."""
    samplers = [sampling.StepSampler(n, batch, seed, start, steps, rank, world) for rank in range(world)]
    return [i for s in range(start, steps) for sampler in samplers for i in sampler.batch(s)]


@pytest.mark.parametrize("world, batch", [(1, 3), (2, 2), (3, 1)])
def test_step_sampler_takes_every_item_once_per_epoch_across_ranks(world, batch):
    n = 7
    items = stream(n, batch, world, steps=math.ceil(3 * n / (world * batch)))
    epochs = [items[e * n:(e + 1) * n] for e in range(3)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh permutation each epoch
    assert items[:n] == [int(i) for i in np.random.default_rng([0, 0]).permutation(n)]  # epoch e: rng([seed, e])


def test_step_sampler_is_a_pure_function_of_seed_and_step():
    first = list(sampling.StepSampler(10, 2, 5, 0, 8, rank=1, world=2))
    assert list(sampling.StepSampler(10, 2, 5, 3, 8, rank=1, world=2)) == first[3:]  # resume at step 3
    assert [[i for _, i in keys] for keys in first] == [sampling.StepSampler(10, 2, 5, 0, 8, 1, 2).batch(s)
                                                        for s in range(8)]
    other_rank = list(sampling.StepSampler(10, 2, 5, 0, 8, rank=0, world=2))
    seeds = [s for keys in first + other_rank for s, _ in keys]
    assert len(set(seeds)) == len(seeds)  # every position, on every rank, its own augmentation seed
    assert list(sampling.StepSampler(10, 2, 6, 0, 8, rank=1, world=2)) != first


class Jitter(torch.utils.data.Dataset):
    """Items drawn from torch's global generator, as nusc.py's ColorJitter draws."""

    def __len__(self):
        return 5

    def __getitem__(self, index):
        return {"x": torch.rand(3) + index}


@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_items_draw_the_same_jitter_in_any_worker_and_after_resume(workers):
    def batches(start, rank=0):
        sampler = sampling.StepSampler(5, 2, 0, start, 6, rank, world=2)
        return [b["x"] for b in torch.utils.data.DataLoader(sampling.SeededItems(Jitter()), batch_sampler=sampler,
                                                            num_workers=workers)]

    straight = batches(0)
    assert all(torch.equal(a, b) for a, b in zip(straight[2:], batches(2)))
    in_process = [b["x"] for b in torch.utils.data.DataLoader(sampling.SeededItems(Jitter()),
                                                              batch_sampler=sampling.StepSampler(5, 2, 0, 0, 6, 0, 2))]
    assert all(torch.equal(a, b) for a, b in zip(straight, in_process))  # workers or not
    other_rank = batches(0, rank=1)
    assert not any(torch.equal(a - a.floor(), b - b.floor()) for a, b in zip(straight, other_rank))
    before = torch.get_rng_state()
    item = sampling.SeededItems(Jitter())[(7, 1)]
    assert torch.equal(item["x"], sampling.SeededItems(Jitter())[(7, 1)]["x"]) and item["index"] == 1
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched


def test_one_cycle_lr_hand_computed():
    # 100 steps, peak 1e-3: warm-up of 10 steps from 1e-3/25 = 4e-5, cosine to 1e-3/1000 = 1e-6.
    assert train.one_cycle_lr(0, 100, 1e-3) == pytest.approx(4e-5)
    assert train.one_cycle_lr(5, 100, 1e-3) == pytest.approx(5.2e-4)  # 4e-5 + 0.5 * 9.6e-4
    assert train.one_cycle_lr(10, 100, 1e-3) == pytest.approx(1e-3)  # end of warm-up: the peak
    assert train.one_cycle_lr(55, 100, 1e-3) == pytest.approx(5.005e-4)  # half way down: (1e-3 + 1e-6) / 2
    # last step: 1e-6 + 0.5 * 9.99e-4 * (1 + cos(pi * 89 / 90)), cos(pi * 89 / 90) = -0.99939083 (cos 2 deg)
    assert train.one_cycle_lr(99, 100, 1e-3) == pytest.approx(1.3042819e-6, rel=1e-6)
    assert train.one_cycle_lr(100, 100, 1e-3) == pytest.approx(1e-6)
    assert train.one_cycle_lr(0, 4, 1.0) == pytest.approx(0.04)  # 4 steps: int(0.4) -> at least 1 warm-up step
    assert train.one_cycle_lr(1, 4, 1.0) == pytest.approx(1.0)


# --- 5. infer.py names and montages ----------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Student(StudentConfig(num_bins=16, image_size=(32, 64)))
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")
    save_checkpoint(path, {"config": asdict(model.cfg), "model": model.state_dict()})
    return path


def test_output_names_tell_apart_inputs_that_share_a_stem():
    names = infer.output_names(["a/CAM_FRONT.jpg", "b/CAM_FRONT.png", "x/b_CAM_FRONT.jpg", "c/b/CAM_FRONT.jpg",
                                "one.jpg"])
    assert names == ["a_CAM_FRONT", "b_CAM_FRONT_2", "b_CAM_FRONT", "b_CAM_FRONT_3", "one"]


def test_infer_list_with_repeated_names_writes_every_output_and_every_montage(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for cam in CAMERAS:
            Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(tmp_path / folder / f"{cam}.jpg")
            lines.append(f"{folder}/{cam}.jpg")
    (tmp_path / "c").mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(tmp_path / "c" / "CAM_FRONT.jpg")
    (tmp_path / "list.txt").write_text("\n".join(lines + ["c/CAM_FRONT.jpg", "a/CAM_BACK.jpg"]) + "\n")
    out = tmp_path / "out"
    assert infer.main([str(tmp_path / "list.txt"), "--checkpoint", checkpoint, "--out", str(out)]) == 13
    printed = capsys.readouterr().out
    names = [f"{f}_{c}" for f in "ab" for c in CAMERAS] + ["c_CAM_FRONT"]
    depth = {name: np.load(out / f"{name}{infer.OUTPUT_SUFFIX}.npy") for name in names}
    assert len(os.listdir(out)) == 2 * 13 + 2  # npy + png each, two montages
    assert not np.array_equal(depth["a_CAM_FRONT"], depth["b_CAM_FRONT"])  # neither overwrote the other
    second = np.asarray(Image.open(out / f"surround_2{infer.OUTPUT_SUFFIX}.png"))
    b_six = viz.render(viz.surround_figure([depth[f"b_{c}"] for c in CAMERAS]))
    assert np.array_equal(second, b_six)  # montage 2 is b's six, in the rig's places
    assert f"skip {tmp_path}/a/CAM_BACK.jpg: listed twice" in printed
    assert f"surround montage: left out {tmp_path}/c/CAM_FRONT.jpg (no full set of the six cameras)" in printed


# --- 6. cli.atomic_path ----------------------------------------------------------------------

def test_atomic_path_keeps_the_umask_and_applies_it(tmp_path):
    old = os.umask(0o027)
    try:
        cli.write_text(str(tmp_path / "a.txt"), "x")
        assert os.umask(0o027) == 0o027  # what atomic_path left is what we set
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o640  # 0o666 & ~0o027, as open() gives


def test_a_failed_atomic_write_leaves_no_file(tmp_path):
    with pytest.raises(ZeroDivisionError), cli.atomic_path(str(tmp_path / "new.npy")) as tmp:
        np.save(tmp, np.zeros(3))
        1 / 0
    assert os.listdir(tmp_path) == []
    cli.write_text(str(tmp_path / "old.txt"), "old")
    with pytest.raises(ZeroDivisionError), cli.atomic_path(str(tmp_path / "old.txt")) as tmp, open(tmp, "w") as f:
        f.write("half")
        1 / 0
    assert os.listdir(tmp_path) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "old"
