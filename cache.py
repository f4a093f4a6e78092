"""The teacher targets of training, Eqs. (6) and (12)-(13), run live or read from a compact cache.

    python cache.py [train.py's data, teacher and token flags] [--num-samples 2000] [--cache-root outputs/teacher_cache]

Defines
- `distillation_targets`: what training needs from the frozen teacher for a batch, at full
  resolution (the live path of `train.py`);
- `compact_targets`: the same, compact, as the cache stores it: s of Eq. (6) average-pooled to the
  logit stride and quantised to 8 bits, and the teacher's border-token similarities of Eq. (13);
- `cache_key` (everything that defines a cache's contents), `cache_folder`, `find_cache`,
  `check_cache` (a one-line error naming the key that differs), `CachedTargets`, `write_cache`.
`losses.objective` takes either form: a coarse s is upsampled bilinearly to the ground truth's
size before P^T of Eq. (7) is built, and the similarities replace the teacher's tokens in
Eq. (13). tests/test_ckd.py bounds the difference between the two paths.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import losses
from cli import InputError, atomic_path, run_cli
from data import DATASETS, DEFAULT_IMAGE_SIZE, batch_to_device, build_dataset, split_name
from rig import ADJACENT_PAIRS
from teacher import build_teacher, default_teacher, teacher_name

CACHE_FORMAT = 2  # 1: s in fp16 at the input size + tokens; 2: s in 8 bits at CACHE_STRIDE + similarities
CACHE_STRIDE = 4  # s is stored at the student's logit resolution, where Eq. (10) uses it
FARNESS_LEVELS = 255  # s in [0, 1] -> round(s * 255) in uint8: steps of 1/255, a quarter of the bin width 1/64
DEFAULT_CACHE_ROOT = "outputs/teacher_cache"  # where `cache.py` writes and `train.py` looks


def teacher_pass(teacher, batch):
    """One frozen teacher pass over a batch (images float in [0, 1], see `data.batch_to_device`;
    the un-jittered `images_teacher` when augmenting) -> the normalised farness s of Eq. (6),
    (B, N, 1, H, W), and the teacher's features (B, N, C, h, w) (tokens of Eq. 12, targets of Eq. 22)."""
    images = batch.get("images_teacher", batch["images"])
    b, n = images.shape[:2]
    dense = batch.get("depth_dense")
    out = teacher(images.flatten(0, 1), None if dense is None else dense.flatten(0, 1))
    farness = losses.normalised_farness(out["disparity"]).unflatten(0, (b, n))  # (B, N, 1, H, W)
    return farness, out["features"].unflatten(0, (b, n))  # (B, N, C, h, w)


class TeacherMemo:
    """The frozen teacher's passes of a finite training set, kept per item: `teacher_pass` for a batch whose
    items (the `index` of `sampling.SeededItems`) were seen before reads them back instead of running the
    teacher again. Exact, since a frozen teacher gives each item the same output whatever the batch; worth it
    when a small set is seen for many epochs (synthetic finite scenes), on the device the targets live on."""

    def __init__(self, teacher):
        self.teacher, self.items = teacher, {}

    def __call__(self, batch):
        """`teacher_pass(teacher, batch)` -> (farness (B, N, 1, H, W), features (B, N, C, h, w))."""
        keys = batch["index"].tolist()
        todo = [i for i, key in enumerate(keys) if key not in self.items]
        if todo:
            sub = {k: v[todo] for k, v in batch.items() if k in ("images", "images_teacher", "depth_dense")}
            farness, features = teacher_pass(self.teacher, sub)
            for j, i in enumerate(todo):
                self.items[keys[i]] = (farness[j], features[j])
        return tuple(torch.stack([self.items[key][part] for key in keys]) for part in (0, 1))


def distillation_targets(teacher, batch, strip, grid, passed=None):
    """What training needs from the teacher for a batch: the normalised farness s of Eq. (6),
    (B, N, 1, H, W), and the border tokens (left, right) of Eq. (12), each (B, N, L, C).
    passed: the result of `teacher_pass` on this batch, if already run (else it runs here)."""
    farness, features = teacher_pass(teacher, batch) if passed is None else passed
    # Self-occlusion masks (DDAD, `omega`): the tokens pool the kept pixels only, as the student's.
    return farness, losses.border_tokens(features, strip, tuple(grid), batch.get("omega"))


def compact_targets(farness, tokens):
    """Full-resolution targets of `distillation_targets` -> what the cache stores for each sample:
    'farness' (B, N, H/4, W/4) uint8, s average-pooled over CACHE_STRIDE x CACHE_STRIDE cells and
    quantised to 1/255; 'similarity' (B, |A|, L, L) float32, `losses.border_similarity`."""
    pooled = F.avg_pool2d(farness.flatten(0, 1).float(), CACHE_STRIDE).unflatten(0, farness.shape[:2])
    levels = torch.round(pooled[:, :, 0] * FARNESS_LEVELS).to(torch.uint8)  # (B, N, H/4, W/4)
    return {"farness": levels, "similarity": losses.border_similarity(tokens, ADJACENT_PAIRS).float()}


def cache_key(args):
    """Everything that defines a cache's contents, from train.py's (or this CLI's) flags. The seed
    counts only on synthetic data, whose training worlds it draws."""
    return {"format": CACHE_FORMAT, "teacher": teacher_name(args.teacher), "data": args.data,
            "version": args.version if args.data != "synthetic" else None,
            "split": split_name(args.data, args.version, "train"),
            "seed": args.seed if args.data == "synthetic" else None, "image_size": list(args.image_size),
            "strip": args.vr_strip, "grid": list(args.vr_grid), "stride": CACHE_STRIDE,
            "masks": None if getattr(args, "ddad_masks", None) is None else os.path.abspath(args.ddad_masks)}


def cache_folder(root, key):
    """The folder of the cache with `key` under `root`: its name spells the key."""
    h, w = key["image_size"]
    seed = "" if key["seed"] is None else f"-seed{key['seed']}"
    return os.path.join(root, f"{key['teacher']}_{key['data']}-{key['split']}{seed}_{h}x{w}_strip{key['strip']:g}"
                              f"_grid{key['grid'][0]}x{key['grid'][1]}{'_masked' if key['masks'] else ''}"
                              f"_v{key['format']}")


def cache_file(folder, index):
    """The path of the cache file of dataset item `index` in cache `folder`."""
    return os.path.join(folder, f"{index:07d}.npz")


def read_meta(folder):
    """meta.json of a cache folder as a dict; InputError (one line) when there is none."""
    path = os.path.join(folder, "meta.json")
    if not os.path.isfile(path):
        raise InputError(f"{folder}: no teacher cache here ; write one with `python cache.py` and the run's flags, "
                         "or pass --teacher-cache none")
    with open(path) as f:
        return json.load(f)


def check_cache(folder, key):
    """Raise InputError, one line naming the first key that differs and the fix, unless the cache
    in `folder` was made for `key`; returns its meta."""
    meta = read_meta(folder)
    for name, value in key.items():
        if meta.get(name) != value:
            raise InputError(f"{folder}: teacher cache made for {name} {meta.get(name)}, this run has {name} {value} ; "
                             "write a cache for this run with `python cache.py` and the run's data, teacher and "
                             "token flags, or pass --teacher-cache none")
    return meta


def find_cache(root, key):
    """The folder under `root` of a cache made for `key` with at least one item, or None."""
    folder = cache_folder(root, key)
    if not os.path.isfile(os.path.join(folder, "meta.json")) or not os.path.isfile(cache_file(folder, 0)):
        return None
    return folder if all(read_meta(folder).get(k) == v for k, v in key.items()) else None


class CachedTargets(torch.utils.data.Dataset):
    """A dataset whose items also carry the cached teacher targets: `teacher_farness` (N, 1, h, w)
    float in [0, 1] at the logit stride and `teacher_similarity` (|A|, L, L), so training runs no
    teacher. Its length is the number of leading items that were cached; `key` is checked first."""

    def __init__(self, dataset, folder, key):
        self.meta = check_cache(folder, key)
        self.dataset, self.folder = dataset, folder
        self.length = 0
        while (self.length < min(self.meta["num_samples"], len(dataset))
               and os.path.isfile(cache_file(folder, self.length))):
            self.length += 1

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        with np.load(cache_file(self.folder, index), allow_pickle=False) as cached:
            farness = torch.from_numpy(cached["farness"]).float().div_(FARNESS_LEVELS)[:, None]  # (N, 1, h, w)
            item["teacher_farness"], item["teacher_similarity"] = farness, torch.from_numpy(cached["similarity"])
        return item


def write_cache(teacher, dataset, folder, key, num_samples, device):
    """Run the teacher once over the first `num_samples` items of `dataset` into `folder`; one
    compressed .npz of `compact_targets` per item, written atomically. Items already there are
    skipped, so an interrupted run resumes. Returns the number of items written now."""
    from tqdm import tqdm

    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "meta.json")) as tmp, open(tmp, "w") as f:
        json.dump({**key, "num_samples": num_samples}, f)
    written = 0
    for i in tqdm(range(num_samples), desc=f"cache {key['teacher']}", dynamic_ncols=True):
        path = cache_file(folder, i)
        if os.path.isfile(path):
            continue
        batch = batch_to_device({k: v[None] for k, v in dataset[i].items()}, device)
        with torch.inference_mode():
            targets = compact_targets(*distillation_targets(teacher, batch, key["strip"], key["grid"]))
        with atomic_path(path) as tmp:  # tmp ends in .npz, so savez_compressed keeps the name
            np.savez_compressed(tmp, **{k: v[0].cpu().numpy() for k, v in targets.items()})
        written += 1
    return written


def get_args(argv=None):
    """The cache command line: the data, teacher and token flags of train.py that define a cache."""
    p = argparse.ArgumentParser(description="Write the teacher cache of a training split (Eqs. 6, 12-13).")
    p.add_argument("--num-samples", type=int, default=2000, help="cache the first this many items of the split")
    p.add_argument("--cache-root", default=DEFAULT_CACHE_ROOT, help="root folder of all caches (train.py looks here)")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="dataset, as train.py --data")
    p.add_argument("--dataroot", default=None, help="dataset root folder, as train.py --dataroot")
    p.add_argument("--ddad-masks", default=None, help="DDAD self-occlusion masks, as train.py --ddad-masks")
    p.add_argument("--version", default="v1.0-trainval", choices=["v1.0-trainval", "v1.0-mini"],
                   help="nuScenes version, as train.py --version")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size, as train.py --image-size (default: the dataset's)")
    p.add_argument("--teacher", default="auto", help="teacher, as train.py --teacher ('random-small': timing only)")
    p.add_argument("--vr-strip", type=float, default=0.25, help="border strip width ratio rho (Eq. 12)")
    p.add_argument("--vr-grid", type=int, nargs=2, default=(4, 2), metavar=("GH", "GW"), help="token grid (Eq. 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic training worlds, as train.py --seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = p.parse_args(argv)
    if args.ddad_masks is not None and args.data != "ddad":
        p.error("--ddad-masks needs --data ddad")
    args.image_size = list(args.image_size or DEFAULT_IMAGE_SIZE[args.data])
    if args.teacher == "auto":
        args.teacher = default_teacher(args.data)
    return args


def main(argv=None):
    """`python cache.py ...`: the teacher cache of a training split, in the folder its key names."""
    args = get_args(argv)
    device = torch.device(args.device)
    key = cache_key(args)
    masks = {"masks": args.ddad_masks} if args.ddad_masks else {}
    dataset = build_dataset(args.data, key["split"], image_size=args.image_size, dataroot=args.dataroot,
                            version=args.version, seed=args.seed, **masks)
    teacher = build_teacher(args.teacher, device=device)
    folder = cache_folder(args.cache_root, key)
    start = time.perf_counter()
    written = write_cache(teacher, dataset, folder, key, min(args.num_samples, len(dataset)), device)
    seconds = time.perf_counter() - start
    rate = f", {written / seconds:.3f} samples/s" if written else ""
    print(f"teacher cache: {folder}  ({written} items written in {seconds:.1f} s{rate}; train.py finds it when "
          f"run with the same flags, or pass --teacher-cache {folder})")
    return folder


if __name__ == "__main__":
    run_cli(main)
