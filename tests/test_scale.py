"""Scaling up: a 2-process torchrun (gloo, CPU) training run; one DDP step on 2 ranks x batch 1
against 1 rank x batch 2, with validation on fewer samples than ranks; SyncBatchNorm on GPUs;
bf16 autocast on the CPU."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import evaluate
import losses
import sampling
import train
from data import build_dataset
from model import Student, StudentConfig, load_checkpoint
from cache import distillation_targets
from teacher import build_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchrun_two_processes_writes_one_loadable_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "train.py", "--steps", "2", "--val-every", "2", "--val-samples", "2", "--image-size", "64", "96",
           "--batch-size", "1", "--workers", "0", "--num-bins", "16", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # rank 0 only
    assert sorted(os.listdir(out)) == ["args.json", "checkpoint.pt", "curves.png", "metrics.jsonl", "student"]
    assert sorted(os.listdir(out / "student")) == ["config.json", "model.safetensors"]  # no temp files either
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2]  # one writer, not two
    model, ckpt = load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    results = evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--max-samples", "1"])
    assert 0 < results["student"]["all"]["sparse"]["abs_rel"] < 10


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    torch.manual_seed(0)
    model = Student(StudentConfig(num_bins=16, image_size=(32, 64))).eval()
    images = torch.rand(1, 2, 3, 64, 96)
    with torch.inference_mode():
        fp32 = model(images)["depth"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(images)["depth"].float()
    rel = ((bf16 - fp32).abs() / fp32).max().item()
    assert 0 < rel < 0.05, rel  # bf16 is really used (not identical), and close


def one_step(rank, world, batch_size, device=torch.device("cpu")):
    """One optimizer step of the full objective (emulated teacher) on the global batch of step 0,
    this rank's share of it, BatchNorm frozen (eval) -> the model. The loss of each sample is
    taken alone and averaged: DDP averages the ranks' gradients, and SILog (Eq. 15) is a batch
    statistic (a square root over the batch), so 2 x 1 equals 1 x 2 for that mean, not for one
    SILog over both samples."""
    args = train.get_args(["--image-size", "32", "64", "--num-bins", "16", "--batch-size", str(batch_size)])
    torch.manual_seed(args.seed)
    model = Student(StudentConfig(num_bins=16, image_size=(32, 64))).eval()
    net = train.distribute(model, device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    data = build_dataset("synthetic", "train", image_size=args.image_size, length=2)
    sampler = sampling.StepSampler(len(data), batch_size, args.seed, 0, 1, rank, world)
    (batch,) = torch.utils.data.DataLoader(sampling.SeededItems(data), batch_sampler=sampler)
    teacher = build_teacher("emulated")
    out = net(batch["images"])
    per_sample = []
    for i in range(batch_size):
        farness, tokens = distillation_targets(teacher, {k: v[i:i + 1] for k, v in batch.items()}, args.vr_strip,
                                               args.vr_grid)
        per_sample.append(losses.objective({k: v[i:i + 1] for k, v in out.items()}, batch["depth"][i:i + 1],
                                           train.loss_config(args), farness, tokens)[0])
    for group in optimizer.param_groups:
        group["lr"] = train.one_cycle_lr(0, args.steps, args.lr)
    torch.stack(per_sample).mean().backward()
    optimizer.step()
    return model


def ddp_rank(rank, world, port, folder):
    """A torchrun rank without torchrun (gloo, CPU): one step, then validation on 1 sample."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    _, _, device = train.setup_distributed(torch.device("cpu"))
    model = one_step(rank, world, batch_size=1)
    val = build_dataset("synthetic", "val", image_size=(32, 64), length=1)  # fewer samples than ranks
    metrics = train.validate(model, val, device, rank, world)
    torch.save({"model": model.state_dict(), "val": metrics,
                "sync_bn": any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())},
               os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_one_step_on_two_ranks_of_batch_1_equals_one_rank_of_batch_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(ddp_rank, args=(2, port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    reference = one_step(0, 1, batch_size=2)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(ranks[0]["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k])  # DDP kept the ranks in step
    val = build_dataset("synthetic", "val", image_size=(32, 64), length=1)
    alone = train.validate(reference, val, torch.device("cpu"), 0, 1)
    assert ranks[0]["val"] == ranks[1]["val"]  # the rank without a sample gets the result too
    assert ranks[0]["val"] == pytest.approx(alone, rel=1e-4)  # the one sample, not averaged with a zero
    assert not ranks[0]["sync_bn"]  # SyncBatchNorm runs on GPUs only: CPU ranks keep their own statistics


def test_distribute_uses_sync_batchnorm_on_gpus(monkeypatch):
    """Under torchrun on CUDA every BatchNorm becomes SyncBatchNorm (statistics over all ranks'
    samples); the state dict keeps its keys, so checkpoints load into a plain Student."""
    monkeypatch.setattr(train, "DistributedDataParallel", lambda module: module)  # no process group here
    model = Student(StudentConfig(num_bins=16, image_size=(64, 96)))
    keys = list(model.state_dict())
    net = train.distribute(model, torch.device("cuda"), world=2)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert list(net.state_dict()) == keys
    assert train.distribute(model, torch.device("cpu"), world=1) is model
