"""Train the student: supervised terms, CKD and VRKD, Eq. (17) of the README's method section.

    python train.py                              # synthetic world, the paper's method
    python train.py --lambda-ckd 0 --lambda-vr 0 # the supervised baseline, same budget
    python train.py --lambda-ckd 0 --lambda-vr 0 --lambda-rkd 1  # response KD baseline (Eq. 21)
    python train.py --lambda-ckd 0 --lambda-vr 0 --lambda-fkd 1  # feature KD baseline (Eq. 22)
    python train.py --data nuscenes --dataroot /data/nuscenes
    python train.py --data ddad --dataroot /data/ddad_train_val [--ddad-masks masks/]

The loop in `main` reads top to bottom: data, teacher targets, forward, losses, backward,
step, log, validate, save. The schedule (`one_cycle_lr`), the loss (`losses.objective`) and the
batch order (`sampling.StepSampler`) are small pure pieces. Checkpoints are written atomically and
hold only tensors and plain values (checkpoint.py): the StudentConfig, weights, optimizer and GradScaler
states, random streams, step and args; beside them, OUT/student/ is the deployable model folder;
`--resume` continues exactly (`SeededItems` seeds each item's augmentation by its place in the
stream). A fresh run refuses an --out that holds a run (run_state.py).
"""
import functools
import json
import math
import os
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import kd_baselines
import losses
from cache import (DEFAULT_CACHE_ROOT, CachedTargets, TeacherMemo, cache_key, distillation_targets, find_cache,
                   teacher_pass)
from checkpoint import STUDENT_FOLDER
from cli import InputError, run_cli, write_text
from data import CAMERA_NAMES, batch_to_device, build_dataset, build_unlabelled, depth_range, split_name
from evaluate import METRIC_KEYS, evaluate_model
from model import Student, StudentConfig, load_checkpoint, save_checkpoint
from options import finite_or_mixed, get_args, restore_args, unlabelled_batch  # noqa: F401 (get_args: train.get_args)
from rig import ADJACENT_PAIRS
from run_state import check_out, drop_log_after, rng_state, set_rng_state
from sampling import SeededItems, mixed_sampler, seed_of
from teacher import build_teacher
from viz import write_curves

# One-cycle schedule (Smith 2018, as AdaBins trains): warm up for this fraction of the steps
# from max_lr / ONE_CYCLE_DIV to max_lr, then cosine down to max_lr / ONE_CYCLE_FINAL_DIV.
ONE_CYCLE_WARMUP = 0.1
ONE_CYCLE_DIV = 25.0
ONE_CYCLE_FINAL_DIV = 1e3
PREFETCH_BATCHES = 4  # batches each DataLoader worker loads ahead (torch's default is 2)


def unlabelled_set(args):
    """The unlabelled images of the run (the scenes after the labelled ones, or nuScenes' camera sweeps),
    or None."""
    if unlabelled_batch(args) == 0:
        return None
    return build_unlabelled(args.data, split_name(args.data, args.version, "train"), image_size=args.image_size,
                            dataroot=args.dataroot, version=args.version, seed=args.seed,
                            scenes=args.unlabelled_scenes, first_scene=args.train_scenes or 0,
                            sweeps=args.unlabelled_sweeps, cache_dir=args.render_cache)


def train_options(args):
    """Dataset options of the training split only: nuScenes' sweeps and colour jitter, DDAD's
    self-occlusion masks (validation and evaluation never use them), the synthetic render cache."""
    if args.data == "nuscenes":
        return {"lidar_sweeps": args.lidar_sweeps, "augment": True}
    if args.data == "ddad":
        return {"masks": args.ddad_masks}
    return {"cache_dir": args.render_cache, "scenes": args.train_scenes}


def one_cycle_lr(step, total_steps, max_lr):
    """Learning rate at `step` of a one-cycle schedule: linear warm-up, then cosine decay."""
    warm = max(1, int(ONE_CYCLE_WARMUP * total_steps))
    if step < warm:
        return max_lr / ONE_CYCLE_DIV + (max_lr - max_lr / ONE_CYCLE_DIV) * step / warm
    progress = (step - warm) / max(1, total_steps - warm)
    low = max_lr / ONE_CYCLE_FINAL_DIV
    return low + 0.5 * (max_lr - low) * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_config(args):
    """The hyperparameters of Eq. (17) from the command line -> losses.LossConfig."""
    d_min, d_max = depth_range(args.data)
    return losses.LossConfig(pairs=ADJACENT_PAIRS, min_depth=d_min, max_depth=d_max, beta_bins=args.beta_bins,
                             lambda_ckd=args.lambda_ckd, lambda_cross=args.lambda_cross, tau=args.tau,
                             sigma=args.sigma, lambda_vr=args.lambda_vr, vr_strip=args.vr_strip,
                             vr_grid=tuple(args.vr_grid), vr_tau=args.vr_tau, vr_student=args.vr_student,
                             teacher_norm=args.teacher_norm)


def baseline_config(args):
    """The weights of the existing-KD baselines (Eqs. 21-23) -> kd_baselines.BaselineConfig."""
    return kd_baselines.BaselineConfig(lambda_rkd=args.lambda_rkd, rkd_lidar_radius=args.rkd_off_lidar,
                                       rkd_self_align=args.rkd_self_align,
                                       rkd_teacher_pixels=args.rkd_teacher_pixels, lambda_fkd=args.lambda_fkd)


def distribute(model, device, world):
    """The network the loop runs: `model` itself on one process; under torchrun its BatchNorms
    become SyncBatchNorm (batch statistics over all ranks' samples, so 2 ranks x batch 1 normalise
    like 1 x batch 2) and it is wrapped in DDP (gradients averaged across ranks). SyncBatchNorm
    runs on GPUs only (torch raises on CPU tensors), so CPU/gloo runs keep per-rank statistics."""
    if world == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model)


def setup_distributed(device):
    """Under torchrun (WORLD_SIZE > 1) join the process group -> (rank, world size, device);
    plain `python train.py` -> (0, 1, device) and nothing else changes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def validate(model, val_set, device, rank, world):
    """Sparse-ground-truth metrics of the validation set; under torchrun each rank scores its
    shard and the metrics are averaged across ranks, weighted by their sample counts."""
    shard = torch.utils.data.Subset(val_set, range(rank, len(val_set), world))
    part = (None, 0)  # a rank past the last sample (fewer samples than ranks) scores nothing
    if len(shard):
        results = evaluate_model(model, shard, device, progress=False)
        part = (results["all"]["sparse"], results["num_samples"])
    parts = [part]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, part)
    parts = [(m, n) for m, n in parts if n > 0]
    total = sum(n for _, n in parts)
    return {k: sum(m[k] * n for m, n in parts) / total for k in METRIC_KEYS}


def main(argv=None):
    args = get_args(argv)
    check_out(args.out, args.resume)  # before torchrun's rendezvous: every rank checks before any writes
    rank, world, device = setup_distributed(torch.device(args.device))
    main_process = rank == 0  # only rank 0 writes checkpoints, logs and progress bars
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if args.resume:  # the checkpoint's own StudentConfig rebuilds the model, its args the run
        model, ckpt = load_checkpoint(ckpt_path, device)
        changed = restore_args(args, ckpt.get("args", {}), model.cfg)
        if changed and main_process:
            print(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} taken from {ckpt_path}, "
                  "not from the command line", file=sys.stderr)
    torch.manual_seed(args.seed)

    # Data: a surround sample is (N=6 views); batches follow StepSampler (seed, step), with unlabelled
    # images (finite scenes or camera sweeps) mixed in by sampling.MixedSampler.
    train_set = build_dataset(args.data, split_name(args.data, args.version, "train"),
                              image_size=args.image_size, dataroot=args.dataroot, version=args.version,
                              seed=args.seed, **train_options(args))
    val_set = build_dataset(args.data, split_name(args.data, args.version, "val"),
                            image_size=args.image_size, dataroot=args.dataroot,
                            version=args.version)  # fixed worlds: seed 0
    val_set = torch.utils.data.Subset(val_set, range(min(args.val_samples, len(val_set))))
    if args.data == "synthetic":  # render the worlds once, not at every validation
        val_set = [val_set[i] for i in range(len(val_set))]

    # Teacher targets: from a cache made for this run (found, or the folder given), or a frozen teacher
    # run live (always for feature KD, Eq. 22: the cache holds no feature grid); the adapter of Eq. (22).
    objective_cfg, baseline_cfg = loss_config(args), baseline_config(args)
    needs_targets = args.lambda_ckd > 0 or args.lambda_vr > 0 or args.lambda_rkd > 0  # Eq. (6) and (12) targets
    cache = None
    if needs_targets and args.lambda_fkd == 0 and args.teacher_cache != "none" and not finite_or_mixed(args):
        cache = find_cache(DEFAULT_CACHE_ROOT, cache_key(args)) if args.teacher_cache == "auto" else args.teacher_cache
    teacher = None
    if (needs_targets and cache is None) or args.lambda_fkd > 0:
        teacher = build_teacher(args.teacher, device=device)
    # Finite synthetic scenes are seen for many epochs: each item's teacher pass is kept (exact).
    run_teacher = TeacherMemo(teacher) if args.train_scenes is not None else functools.partial(teacher_pass, teacher)
    adapter = None
    if args.lambda_fkd > 0:  # student feature channels -> teacher channels; trained, dropped at inference
        adapter = torch.nn.Conv2d(args.decoder_channels[args.feature_level], teacher.feature_channels, 1).to(device)
        if args.resume:
            adapter.load_state_dict(ckpt["adapter"])
        if world > 1:
            raise InputError("--lambda-fkd: feature KD runs in one process (its adapter is not synchronised "
                             "across ranks) ; run it without torchrun")
    extra = [] if adapter is None else list(adapter.parameters())

    # Model and optimizer; --resume restores both, and the step.
    step = 0
    if args.resume:
        model.train()
        optimizer = torch.optim.AdamW(list(model.parameters()) + extra, lr=args.lr, weight_decay=args.weight_decay)
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        if main_process:
            drop_log_after(os.path.join(args.out, "metrics.jsonl"), step)
    else:
        d_min, d_max = depth_range(args.data)
        cfg = StudentConfig(encoder=args.encoder, num_bins=args.num_bins, min_depth=d_min, max_depth=d_max,
                            decoder_channels=tuple(args.decoder_channels), shared_bins=args.shared_bins,
                            feature_level=args.feature_level, logit_scale=args.logit_scale,
                            upsample=args.upsample, image_size=tuple(args.image_size))
        model = Student(cfg, pretrained=args.pretrained).to(device)
        optimizer = torch.optim.AdamW(list(model.parameters()) + extra, lr=args.lr, weight_decay=args.weight_decay)
    if main_process:
        write_text(os.path.join(args.out, "args.json"), json.dumps(vars(args), indent=2))
    net = distribute(model, device, world)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)  # fp16 needs loss scaling
    if args.resume and "scaler" in ckpt:  # the fp16 loss scale the run had reached (older checkpoints lack it)
        scaler.load_state_dict(ckpt["scaler"])

    if cache is not None:
        train_set = CachedTargets(train_set, cache, cache_key(args))
        if main_process:
            print(f"teacher cache: using {cache} (its first {len(train_set)} items; --teacher-cache none: "
                  "run the teacher instead)", file=sys.stderr)

    unlabelled = unlabelled_set(args)  # images without ground truth: only the teacher's terms act on them
    num_labelled = len(train_set)
    if unlabelled is not None:
        train_set = torch.utils.data.ConcatDataset([train_set, unlabelled])
    sampler = mixed_sampler(num_labelled, len(train_set) - num_labelled, args.batch_size, unlabelled_batch(args),
                            args.seed, step, args.steps, rank, world)
    workers_seed = torch.Generator().manual_seed(seed_of(args.seed, step, rank))  # not drawn from the global one
    loader = torch.utils.data.DataLoader(SeededItems(train_set), batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
                                         prefetch_factor=PREFETCH_BATCHES if args.workers > 0 else None,
                                         generator=workers_seed)
    log = open(os.path.join(args.out, "metrics.jsonl"), "a", buffering=1) if main_process else None  # per line
    if args.resume:  # the random streams as the checkpoint left them, just before its next step
        set_rng_state(ckpt["rng"], device)
    bar = tqdm(loader, total=args.steps, initial=step, desc="train", dynamic_ncols=True, disable=not main_process)
    model.train()
    for batch in bar:
        # Data and teacher targets (from the cache, or one frozen teacher pass).
        batch = batch_to_device(batch, device)  # uint8 images become float in [0, 1] here
        if args.oracle_dense_gt:  # the benchmark's oracle: dense ground truth on every image, not the method
            batch["depth"] = batch["depth_dense"]
        farness, tokens = batch.pop("teacher_farness", None), batch.pop("teacher_similarity", None)
        passed = None if teacher is None else run_teacher(batch)  # one frozen pass per step (or kept ones)
        if cache is None and needs_targets:
            farness, tokens = distillation_targets(teacher, batch, args.vr_strip, args.vr_grid, passed)
        features = None if adapter is None else passed[1]  # Eq. (22): the same pass's features
        # Forward, losses, backward, step.
        lr = one_cycle_lr(step, args.steps, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):  # the forward only
            out = net(batch["images"])
        loss, terms = losses.objective(out, batch["depth"], objective_cfg, farness, tokens,  # Eq. (17), fp32
                                       batch.get("omega"))  # omega: DDAD's masks
        if baseline_cfg.active:  # the existing-KD baselines, Eqs. (21)-(24)
            added, more = kd_baselines.baseline_objective(out, batch["depth"], objective_cfg, baseline_cfg, farness,
                                                          batch.get("omega"), features, adapter)
            loss, terms = loss + added, {**terms, **more}
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        # Log.
        if main_process:
            terms = {k: v.item() for k, v in terms.items()}
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
            log.write(json.dumps({"step": step, "lr": lr, "loss": loss.item(), **terms, "time": time.time()}) + "\n")
        # Validate and save.
        if step % args.val_every == 0 or step == args.steps:
            metrics = validate(model, val_set, device, rank, world)
            if main_process:
                log.write(json.dumps({"step": step, "val": metrics}) + "\n")
                log.flush()
                write_curves(os.path.join(args.out, "metrics.jsonl"), os.path.join(args.out, "curves.png"))
                bar.write(f"step {step}: val abs_rel {metrics['abs_rel']:.4f} rmse {metrics['rmse']:.3f} "
                          f"a1 {metrics['a1']:.3f}")
                save_checkpoint(ckpt_path, {"config": asdict(model.cfg), "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict(), "step": step, "args": vars(args),
                                            "rng": rng_state(device), "scaler": scaler.state_dict(),
                                            **({} if adapter is None else {"adapter": adapter.state_dict()})})
                model.save_pretrained(os.path.join(args.out, STUDENT_FOLDER), args.data, CAMERA_NAMES[args.data])
    if main_process:
        log.close()
    if world > 1:
        dist.destroy_process_group()
    return model


if __name__ == "__main__":
    run_cli(main)
