"""Metric depth for your own images with a trained student (Eq. 5 of the README's method section).

    python infer.py img_dir/ [--checkpoint outputs/demo/checkpoint.pt] [--out outputs/infer]

Takes an image file, a folder of images, or a .txt list of image paths. For each image it
writes `<name>_depth.npy` (float32 meters at the original resolution) and `<name>_depth.png`
(inverse depth colour-mapped over a robust range) into --out. <name> is the file's stem; inputs
that share a stem (a/CAM_FRONT.jpg, b/CAM_FRONT.jpg in a list) are told apart by their folder
(`a_CAM_FRONT`, `b_CAM_FRONT`), then by a counter (`_2`, `_3`, ...) in input order, so no
output overwrites another. When the inputs hold the six nuScenes camera names (e.g.
`..._CAM_FRONT_LEFT_...jpg` or `CAM_FRONT_LEFT.png`), it also writes montages laid out like the
rig, FL F FR over BL B BR: the k-th image of each camera, in input order, goes into montage k
(`surround_depth.png`, then `surround_2_depth.png`, ...); images of a camera beyond the last full
set of six are named in one line, never dropped in silence. Files it wrote itself, non-images,
corrupt images and a path listed twice are skipped with one line each. DDAD's camera names
(CAMERA_01 .. CAMERA_09) count too, in the file name or its folder (DDAD's rgb/CAMERA_05/<time>.png;
six views of one sample share a stem, so their outputs are CAMERA_05_<time>_depth.*). Nothing is written over
an input, and every output appears whole or not at all. Exits non-zero if nothing was processed.

    python infer.py --onnx student.onnx img_dir/         # the same, run by onnxruntime (export.py)
    python infer.py --sample 0 --ply [--ply-stride 2]    # a surround sample of --data, with calibration

`--sample I` takes the six views of test sample I of --data (synthetic, or nuScenes with
--dataroot) instead of files; `--ply` adds `<data>_<split>_<I>_points.ply`, the fused six-view
point cloud in the ego frame (pointcloud.py: the lifting of Eq. (20)).
"""
import argparse
import collections
import os
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cli import InputError, atomic_path, run_cli
from data import DATASETS, build_dataset, split_name
from ddad import DDAD_CAMERAS
from export import OnnxStudent
from model import load_student
from pipeline import PipelineStudent
from pointcloud import surround_points, write_ply
from rig import CAMERAS
from viz import depth_figure, save_png, surround_figure, to_uint8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_SUFFIX = "_depth"  # infer.py's own outputs end in this; they are never read as inputs


def list_inputs(source):
    """A file, folder or .txt list -> the paths to try, sorted; raises InputError if none exist."""
    if os.path.isdir(source):
        paths = [os.path.join(source, f) for f in sorted(os.listdir(source))]
        return [p for p in paths if os.path.isfile(p)]
    if source.endswith(".txt") and os.path.isfile(source):
        with open(source) as f:
            base = os.path.dirname(os.path.abspath(source))
            return [os.path.join(base, line.strip()) for line in f if line.strip()]
    if os.path.isfile(source):
        return [source]
    raise InputError(f"{source}: no such file or folder; pass an image, a folder of images or a .txt list")


def _camera_in(text):
    """Ring index of the nuScenes or DDAD camera name in `text`, any case (a whole token, so
    CAM_FRONT != CAM_FRONT_LEFT and CAMERA_01 != CAMERA_010), or None."""
    names = {**{c: n for n, c in enumerate(CAMERAS)}, **{c: n for n, c in enumerate(DDAD_CAMERAS)}}
    for cam in sorted(names, key=len, reverse=True):
        if re.search(rf"(?<![A-Z0-9]){cam}(?![A-Z0-9]|_[A-Z])", text.upper()):
            return names[cam]
    return None


def camera_of(path):
    """Ring index (the order of rig.CAMERAS) of the camera named in a file name or, failing that,
    in its folder's name (DDAD's rgb/CAMERA_01/<time>.png), or None."""
    stem = os.path.splitext(os.path.basename(path))[0]
    found = _camera_in(stem)
    return _camera_in(os.path.basename(os.path.dirname(os.path.abspath(path)))) if found is None else found


def output_names(paths):
    """Input paths -> the <name> of each one's outputs, all different: the stem when no other
    input has it; else `<folder>_<stem>`, then `<folder>_<stem>_2`, `_3`, ... while taken."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    count = collections.Counter(stems)
    taken = {stem for stem in stems if count[stem] == 1}
    names = []
    for path, stem in zip(paths, stems):
        name = stem
        if count[stem] > 1:
            base = f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}_{stem}"
            name, k = base, 2
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
        names.append(name)
    return names


def surround_sets(cameras):
    """The camera of each processed image, in input order ([(path, ring index or None)]) -> the
    montages, each {ring index: path} with all six (the k-th image of each camera goes into set
    k), and the paths of camera images that fit no full set."""
    by_camera = {n: [path for path, c in cameras if c == n] for n in range(len(CAMERAS))}
    full = min(len(paths) for paths in by_camera.values())
    sets = [{n: by_camera[n][k] for n in by_camera} for k in range(full)]
    left = [path for path, n in cameras if n is not None and by_camera[n].index(path) >= full]
    return sets, left


def get_args(argv=None):
    """The command line; every flag has help."""
    p = argparse.ArgumentParser(description="Metric depth for your own images with a trained student.")
    p.add_argument("input", nargs="?", help="an image, a folder of images, or a .txt file listing image paths")
    p.add_argument("--checkpoint", default="outputs/demo/checkpoint.pt",
                   help="a checkpoint.pt written by train.py, a model folder (OUT/student: config.json + "
                        "model.safetensors) or a Hugging Face hub id owner/name")
    p.add_argument("--onnx", default=None, help="an ONNX file written by export.py: run it with onnxruntime on the "
                   "CPU instead of the checkpoint")
    p.add_argument("--sample", type=int, default=None,
                   help="instead of files: the six views of test sample I of --data")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="dataset of --sample")
    p.add_argument("--dataroot", default=None, help="root folder of --data (nuScenes: holds samples/, v1.0-*/)")
    p.add_argument("--version", default="v1.0-trainval", choices=["v1.0-trainval", "v1.0-mini"],
                   help="nuScenes version")
    p.add_argument("--ply", action="store_true",
                   help="with --sample: also write the fused point cloud (.ply, ego frame)")
    p.add_argument("--ply-stride", type=int, default=1, help="keep every k-th pixel along rows and columns of the .ply")
    p.add_argument("--out", default="outputs/infer", help="folder for <name>_depth.npy / .png and the montage")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (the GPU when there is one; --onnx runs on the CPU)")
    return p.parse_args(argv)


def write_outputs(model, pending, out_dir, tiles):
    """Run one batch [(path, name, image)] and write <name>_depth.npy / .png (the depth with a colour
    bar in meters) for each; the depth of each image with a camera name goes into `tiles` -> the depth
    maps written."""
    written = []
    for (path, name, _), depth in zip(pending, model.infer_images([image for _, _, image in pending])):
        npy, png = (os.path.join(out_dir, name + OUTPUT_SUFFIX + e) for e in (".npy", ".png"))
        with atomic_path(npy) as tmp:
            np.save(tmp, depth.astype(np.float32), allow_pickle=False)
        save_png(depth_figure(depth, name), png)
        if camera_of(path) is not None:
            tiles[path] = depth
        written.append(depth)
        tqdm.write(f"{path} -> {npy} (depth {depth.min():.1f}-{depth.max():.1f} m)")
    return written


def write_montages(tiles, out_dir):
    """The surround montages of the processed camera images (`tiles`: path -> depth (H, W) meters, in
    input order), as `surround_sets` groups them, each in one colour range -> the montage paths written."""
    sets, left = surround_sets([(path, camera_of(path)) for path in tiles])
    written = []
    for k, group in enumerate(sets, 1):
        name = "surround" + (f"_{k}" if k > 1 else "") + OUTPUT_SUFFIX + ".png"  # skipped as input, like the rest
        written.append(os.path.join(out_dir, name))
        save_png(surround_figure([tiles[group[n]] for n in range(len(CAMERAS))]), written[-1])
        print(f"surround montage -> {written[-1]}")
    if left:
        print(f"surround montage: left out {', '.join(left)} (no full set of the six cameras)")
    return written


def load_model(args):
    """The student of --onnx (onnxruntime) or of --checkpoint (torch, in its inference form; on CUDA the
    device pipeline of pipeline.py)."""
    if args.onnx:
        return OnnxStudent(args.onnx)
    model, _ = load_student(args.checkpoint, torch.device(args.device))
    if model.mean.device.type == "cuda":  # uint8 frames uploaded, the rest on the GPU in CUDA graphs (bf16)
        return PipelineStudent(model, model.mean.device)
    return model.for_inference()  # BatchNorm folded, channels_last: same depth, faster


def infer_sample(args, model):
    """--sample I: depth for the six views of test sample I of --data, the montage, and with --ply the
    fused point cloud -> the number of views processed."""
    split = split_name(args.data, args.version, "test")
    dataset = build_dataset(args.data, split, image_size=model.cfg.image_size, dataroot=args.dataroot,
                            version=args.version)
    if not 0 <= args.sample < len(dataset):
        raise InputError(f"--sample {args.sample}: {args.data} {split} has samples 0-{len(dataset) - 1}; pick one")
    sample = dataset[args.sample]
    images = [to_uint8(image) for image in sample["images"].numpy()]  # (H, W, 3) uint8 each
    stem = f"{args.data}_{split}_{args.sample}"
    out_dir, tiles = os.path.abspath(args.out), {}
    views = [(f"{stem}_{cam}.png", f"{stem}_{cam}", im) for cam, im in zip(CAMERAS, images)]
    depths = write_outputs(model, views, out_dir, tiles)
    write_montages(tiles, out_dir)
    if args.ply:
        cloud = surround_points(np.stack(depths), np.stack(images), sample["intrinsics"].numpy(),
                                sample["cam_to_ego"].numpy(), args.ply_stride)
        path = os.path.join(out_dir, f"{stem}_points.ply")
        write_ply(path, cloud)
        print(f"point cloud ({len(cloud)} points, pixel stride {args.ply_stride}) -> {path}")
    return len(depths)


def main(argv=None):
    """Run the CLI; returns the number of images processed."""
    args = get_args(argv)
    if args.ply_stride < 1:
        raise InputError(f"--ply-stride {args.ply_stride}: must be >= 1; pass 1 to keep every pixel")
    if args.sample is not None or args.ply:
        if args.sample is None or args.input:
            raise InputError("--sample: a point cloud needs calibration, which image files lack; pass --sample I "
                             "(and --data, --dataroot) instead of an input")
        return infer_sample(args, load_model(args))
    if args.input is None:
        raise InputError("infer.py: no input; pass an image, a folder or a .txt list, or --sample I")
    paths, seen = [], set()
    for path in list_inputs(args.input):
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() not in IMAGE_EXTENSIONS or stem.endswith(OUTPUT_SUFFIX):
            print(f"skip {path}: not an input image")
        elif os.path.abspath(path) in seen:
            print(f"skip {path}: listed twice")
        else:
            paths.append(path)
            seen.add(os.path.abspath(path))
    if not paths:  # before loading a model or drawing a progress bar
        raise InputError(f"{args.input}: no readable image was found; pass .jpg/.png images or a .txt list of them")
    model = load_model(args)
    out_dir = os.path.abspath(args.out)
    done, tiles, pending = 0, {}, []
    for path, name in tqdm(list(zip(paths, output_names(paths))), desc="infer", unit="image", dynamic_ncols=True):
        try:
            with Image.open(path) as im:
                pending.append((path, name, np.asarray(im.convert("RGB"))))
        except (UnidentifiedImageError, OSError) as err:
            tqdm.write(f"skip {path}: unreadable image ({err.__class__.__name__})")
            continue
        if len(pending) == args.batch_size:
            done += len(write_outputs(model, pending, out_dir, tiles))
            pending = []
    if pending:
        done += len(write_outputs(model, pending, out_dir, tiles))
    write_montages(tiles, out_dir)
    if done == 0:
        raise InputError(f"{args.input}: no readable image was found; pass .jpg/.png images or a .txt list of them")
    return done


if __name__ == "__main__":
    run_cli(main)
