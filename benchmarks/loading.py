"""`python benchmark.py data`: how fast surround samples load, per DataLoader worker.

Times `NuScenesSurround` on a nuScenes-format dataroot (by default the test fixture's layout,
`tests/nuscenes_fixture.py`, written to a temporary folder with photo-like 1600 x 900 JPEGs:
smooth noise, edges and texture, not flat colours), one sample at a time in one process, as
one DataLoader worker runs it. Side by side in the same run:
- today's loader: JPEG draft decoding (`nusc.decode_image`), uint8 out;
- the loader before it: full decoding, and the conversion to float in the worker.
Each is split into decode, resize (+ float conversion) and ground-truth rendering (the cached
LiDAR points drawn at the input size). A DDAD-format dataroot is timed too: `--ddad-root`, or by
default the DDAD test fixture (`tests/ddad_fixture.py`) at 1936 x 1216 with photo-like images.
The ground-truth cache size per sample is printed as well. Rates are per second of wall-clock
time and per second of CPU time (on a shared machine the second says what one free core gives).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

import data
from nusc import NuScenesSurround, decode_image, render_points, resize_image
from rig import CAMERAS, scale_intrinsics

PHOTO_JPEG_QUALITY = 85  # ~230 kB per 1600 x 900 photo-like image, the order of a nuScenes camera JPEG
NOISE_OCTAVES = ((9, 16), (36, 64), (144, 256))  # (h, w) grids of the smooth noise, coarse to fine
NUM_SHAPES = 40  # rectangles and polygons with hard edges: buildings, cars, poles
TEXTURE_STD = 3.0  # grey levels of per-pixel texture noise (sensor noise, fine texture)
UINT8_MAX = 255.0


def photo_like(rng, height, width):
    """(height, width, 3) uint8: sky gradient over a road, smooth multi-scale colour noise, hard-edged
    shapes and fine texture, so a JPEG of it costs what a street photo costs to decode."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]  # (H, 1, 1)
    sky, road = np.array([150, 180, 220]), np.array([90, 90, 95])
    image = np.where(rows < 0.45, sky * (1 - 0.5 * rows), road * (0.6 + 0.6 * rows)) * np.ones((1, width, 3))
    for gh, gw in NOISE_OCTAVES:
        field = rng.uniform(-1, 1, size=(gh, gw, 3)).astype(np.float32)
        image += 30.0 * np.stack([np.asarray(Image.fromarray(field[..., c]).resize((width, height), Image.BICUBIC))
                                  for c in range(3)], axis=-1) * (gh / NOISE_OCTAVES[-1][0]) ** 0.3
    picture = Image.fromarray(np.clip(image, 0, UINT8_MAX).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(NUM_SHAPES):
        x, y = rng.uniform(0, width), rng.uniform(0.2 * height, height)
        w, h = rng.uniform(20, 400), rng.uniform(20, 300)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.uniform() < 0.5:
            draw.rectangle([x, y - h, x + w, y], fill=colour)
        else:
            draw.polygon([(x, y), (x + w, y), (x + w / 2, y - h)], fill=colour)
    picture = picture.filter(ImageFilter.GaussianBlur(0.7))  # a lens: edges a pixel wide, not aliased
    texture = rng.normal(0.0, TEXTURE_STD, size=(height, width, 1))
    return np.clip(np.asarray(picture) + texture, 0, UINT8_MAX).astype(np.uint8)


class FloatInWorker(NuScenesSurround):
    """The loader before draft decoding: every JPEG decoded in full, images made float in the worker."""

    def _load_image(self, path, native_size):
        return resize_image(decode_image(path, native_size), self.image_size).float() / UINT8_MAX


def stage_times(dataset, indices, draft, to_float):
    """Seconds per sample of each stage, one process: decode, resize (+ float), ground truth."""
    totals = {"decode": 0.0, "resize": 0.0, "ground truth": 0.0}
    height, width = dataset.image_size
    for index in indices:
        record = dataset.samples[index]
        for n, (path, native) in enumerate(zip(record["image_files"], record["image_sizes"])):
            start = time.perf_counter()
            image = decode_image(path, native, dataset.image_size if draft else None)
            decoded = time.perf_counter()
            pixels = resize_image(image, dataset.image_size)
            if to_float:
                pixels = pixels.float() / UINT8_MAX
            totals["decode"] += decoded - start
            totals["resize"] += time.perf_counter() - decoded
        start = time.perf_counter()
        for native, k_native, uvz in zip(record["image_sizes"], record["intrinsics"], dataset.points(index)):
            k = scale_intrinsics(k_native, width / native[1], height / native[0])
            render_points(uvz, k_native, k, height, width, dataset.min_z)
        totals["ground truth"] += time.perf_counter() - start
    return {k: v / len(indices) for k, v in totals.items()}


def sample_rate(dataset, indices):
    """Surround samples per second of `dataset[i]` over `indices`, one process (one worker): per
    second of wall-clock time, and per second of the process's CPU time (what one free core gives)."""
    start, cpu = time.perf_counter(), time.process_time()
    for index in indices:
        dataset[index]
    return len(indices) / (time.perf_counter() - start), len(indices) / (time.process_time() - cpu)


def time_nuscenes(dataroot, version, split, image_size, repeats):
    """Print the side-by-side table of the two nuScenes loaders; returns today's samples/s."""
    loaders = {"today: draft decoding, uint8 out": NuScenesSurround(dataroot, version, split, image_size),
               "before: full decoding, float in the worker": FloatInWorker(dataroot, version, split, image_size)}
    indices = list(range(len(next(iter(loaders.values()))))) * repeats
    first = next(iter(loaders.values()))
    for index in range(len(first)):
        first.points(index)  # the ground-truth cache is written on the first load; time the later ones
    sizes = [os.path.getsize(os.path.join(first.cache_dir, r["token"] + ".npz")) for r in first.samples]
    jpeg = np.mean([os.path.getsize(f) for r in first.samples for f in r["image_files"]])
    print(f"nuScenes-format dataroot {dataroot}, split {split}: {len(first)} samples x {repeats}, "
          f"{len(CAMERAS)} JPEGs of {first.samples[0]['image_sizes'][0][1]}x{first.samples[0]['image_sizes'][0][0]} "
          f"({jpeg / 1e3:.0f} kB each) -> {image_size[0]} x {image_size[1]}, one process")
    print(f"ground-truth cache: {np.mean(sizes) / 1e3:.1f} kB per sample (mean of {len(sizes)})\n")
    print("| loader | samples/s | samples per CPU second | decode (ms/sample) | resize (ms/sample) | "
          "ground truth (ms/sample) |")
    print("|---|---|---|---|---|---|")
    rates = {}
    for round_ in range(2):  # interleaved twice: the machine's load drifts
        for name, dataset in loaders.items():
            draft = not isinstance(dataset, FloatInWorker)
            stages = stage_times(dataset, indices, draft=draft, to_float=not draft)
            rate, cpu_rate = sample_rate(dataset, indices)
            rates.setdefault(name, []).append(rate)
            cells = " | ".join(f"{1e3 * v:.0f}" for v in stages.values())
            print(f"| {name} (round {round_ + 1}) | {rate:.2f} | {cpu_rate:.2f} | {cells} |")
    return float(np.median(rates[next(iter(loaders))]))


def fixture_module(name):
    """The module `name` of tests/ (the fixtures that write nuScenes- and DDAD-format dataroots)."""
    import importlib
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    return importlib.import_module(name)


def photo_like_ddad(root):
    """The DDAD test fixture (`tests/ddad_fixture.py`) at DDAD's native 1936 x 1216, its flat images
    rewritten as photo-like ones in their own format (.png or .jpg) -> the dataroot `root`."""
    ddad_fixture = fixture_module("ddad_fixture")
    ddad_fixture.build_dataroot(root, native=ddad_fixture.FULL_SIZE)
    rng = np.random.default_rng(0)
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if os.path.basename(os.path.dirname(folder)) == "rgb" and name.endswith((".png", ".jpg")):
                Image.fromarray(photo_like(rng, *ddad_fixture.FULL_SIZE)).save(
                    os.path.join(folder, name), **({"quality": PHOTO_JPEG_QUALITY} if name.endswith(".jpg") else {}))
    return root


def time_ddad(ddad_root, image_size, repeats):
    """samples/s of the DDAD loader on `ddad_root`, or one line saying why it is skipped."""
    if "ddad" not in data.DATASETS:
        print("ddad: skipped (this checkout has no DDAD loader: 'ddad' is not in data.DATASETS)")
        return None
    if ddad_root is None:
        print("ddad: skipped (no DDAD-format dataroot)")
        return None
    dataset = data.build_dataset("ddad", data.split_name("ddad", None, "val"), image_size=image_size,
                                 dataroot=ddad_root)
    indices = list(range(min(len(dataset), 4))) * repeats
    dataset[indices[0]]  # caches written on first load
    rate, cpu_rate = sample_rate(dataset, indices)
    print(f"ddad: {rate:.2f} samples/s, {cpu_rate:.2f} per CPU second ({len(indices)} loads of {ddad_root}, "
          "one process)")
    return rate


def data_benchmark(argv=None):
    """`python benchmark.py data`: samples/s per worker, today's loader beside the previous one."""
    p = argparse.ArgumentParser(description="Loading speed of surround samples, per DataLoader worker.")
    p.add_argument("--dataroot", default=None,
                   help="a nuScenes-format dataroot (default: a photo-like copy of the test fixture, in a temp folder)")
    p.add_argument("--version", default="v1.0-mini", choices=["v1.0-trainval", "v1.0-mini"], help="nuScenes version")
    p.add_argument("--split", default="mini_train", help="nuScenes split to load")
    p.add_argument("--ddad-root", default=None,
                   help="a DDAD-format dataroot (default: a photo-like copy of the DDAD test fixture at 1936 x 1216)")
    p.add_argument("--image-size", type=int, nargs=2, default=(352, 640), metavar=("H", "W"), help="input size")
    p.add_argument("--repeats", type=int, default=5, help="passes over the samples per timing")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, where torch runs one thread
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dataroot = args.dataroot
            if dataroot is None:
                nuscenes_fixture = fixture_module("nuscenes_fixture")
                dataroot = tmp
                nuscenes_fixture.build_dataroot(tmp, image_maker=lambda n, rng: Image.fromarray(
                    photo_like(rng, nuscenes_fixture.IMAGE_HEIGHT, nuscenes_fixture.IMAGE_WIDTH)),
                    quality=PHOTO_JPEG_QUALITY)
            rate = time_nuscenes(dataroot, args.version, args.split, tuple(args.image_size), args.repeats)
        print()
        with tempfile.TemporaryDirectory() as tmp:
            ddad_root = args.ddad_root
            if ddad_root is None and "ddad" in data.DATASETS:
                ddad_root = photo_like_ddad(tmp)
            time_ddad(ddad_root, tuple(args.image_size), args.repeats)
    finally:
        torch.set_num_threads(threads)
    return rate
