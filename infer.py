"""Metric depth for your own images with a trained student (Eq. 5 of the README's method section).

    python infer.py img_dir/ [--checkpoint outputs/demo/checkpoint.pt] [--out outputs/infer]

Takes an image file, a folder of images, or a .txt list of image paths. For each image it
writes `<name>_depth.npy` (float32 meters at the original resolution) and `<name>_depth.png`
(inverse depth colour-mapped over a robust range) into --out. When the inputs hold the six
nuScenes camera names (e.g. `..._CAM_FRONT_LEFT_...jpg` or `CAM_FRONT_LEFT.png`), it also
writes `surround_depth.png` laid out like the rig: FL F FR over BL B BR. DDAD's camera names
(CAMERA_01 .. CAMERA_09) count too, in the file name or its folder (DDAD's rgb/CAMERA_05/<time>.png:
then the outputs are named CAMERA_05_<time>_depth.*, as the six views share one time). Files it wrote
itself, non-images and corrupt images are skipped with one line each; nothing is written over
an input, and every output appears whole or not at all. Exits non-zero if nothing was processed.
"""
import argparse
import os
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cli import InputError, atomic_path, run_cli
from ddad import DDAD_CAMERAS
from model import load_checkpoint
from rig import CAMERAS
from viz import colorize, montage, save_png

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


def output_stem(path):
    """The stem of an image's outputs: its own, prefixed with its folder's name when only the
    folder names the camera (DDAD's six views of one sample share a file name)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if _camera_in(stem) is None and camera_of(path) is not None:
        return os.path.basename(os.path.dirname(os.path.abspath(path))) + "_" + stem
    return stem


def get_args(argv=None):
    """The command line; every flag has help."""
    p = argparse.ArgumentParser(description="Metric depth for your own images with a trained student.")
    p.add_argument("input", help="an image, a folder of images, or a .txt file listing image paths")
    p.add_argument("--checkpoint", default="outputs/demo/checkpoint.pt", help="checkpoint written by train.py")
    p.add_argument("--out", default="outputs/infer", help="folder for <name>_depth.npy / .png and the montage")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (the GPU when there is one)")
    return p.parse_args(argv)


def write_outputs(model, pending, out_dir, tiles):
    """Run one batch [(path, image)] and write <name>_depth.npy / .png for each -> count written."""
    written = 0
    for (path, _), depth in zip(pending, model.infer_images([image for _, image in pending])):
        npy, png = (os.path.join(out_dir, output_stem(path) + OUTPUT_SUFFIX + e) for e in (".npy", ".png"))
        with atomic_path(npy) as tmp:
            np.save(tmp, depth.astype(np.float32), allow_pickle=False)
        colored = colorize(depth)
        save_png(colored, png)
        camera = camera_of(path)
        if camera is not None:
            tiles[camera] = colored
        written += 1
        tqdm.write(f"{path} -> {npy} (depth {depth.min():.1f}-{depth.max():.1f} m)")
    return written


def main(argv=None):
    """Run the CLI; returns the number of images processed."""
    args = get_args(argv)
    paths = []
    for path in list_inputs(args.input):
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() in IMAGE_EXTENSIONS and not stem.endswith(OUTPUT_SUFFIX):
            paths.append(path)
        else:
            print(f"skip {path}: not an input image")
    if not paths:  # before loading a model or drawing a progress bar
        raise InputError(f"{args.input}: no readable image was found; pass .jpg/.png images or a .txt list of them")
    model, _ = load_checkpoint(args.checkpoint, torch.device(args.device))
    model = model.for_inference()  # BatchNorm folded, channels_last: same depth, faster
    out_dir = os.path.abspath(args.out)
    done, tiles, pending = 0, {}, []
    for path in tqdm(paths, desc="infer", unit="image", dynamic_ncols=True):
        try:
            with Image.open(path) as im:
                pending.append((path, np.asarray(im.convert("RGB"))))
        except (UnidentifiedImageError, OSError) as err:
            tqdm.write(f"skip {path}: unreadable image ({err.__class__.__name__})")
            continue
        if len(pending) == args.batch_size:
            done += write_outputs(model, pending, out_dir, tiles)
            pending = []
    if pending:
        done += write_outputs(model, pending, out_dir, tiles)
    if len(tiles) == len(CAMERAS):
        path = os.path.join(out_dir, "surround" + OUTPUT_SUFFIX + ".png")  # skipped as input, like the rest
        save_png(montage([tiles[n] for n in range(len(CAMERAS))]), path)
        print(f"surround montage -> {path}")
    if done == 0:
        raise InputError(f"{args.input}: no readable image was found; pass .jpg/.png images or a .txt list of them")
    return done


if __name__ == "__main__":
    run_cli(main)
