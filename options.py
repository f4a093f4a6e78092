"""The options of a training run: every flag of `python train.py`, its checks and its defaults.

Defines `get_args` (the command line; every flag has help, fixed sets of values are `choices`), the
default number of steps of each data regime (`DEFAULT_STEPS`, `SCENE_STEPS`, `default_steps`), what the
regime flags imply (`finite_or_mixed`, `unlabelled_batch`) and which flags a resumed run keeps
(`RESUME_MAY_CHANGE`, `restore_args`). train.py reads them; the benchmarks build runs from them.
"""
import argparse

import torch

import kd_baselines
import losses
from cache import DEFAULT_CACHE_ROOT
from data import DATASETS, DEFAULT_IMAGE_SIZE
from model import ENCODER_CHANNELS, StudentConfig
from teacher import default_teacher

# Default training length per dataset: the synthetic demo takes ~5 minutes on 2 CPU cores.
DEFAULT_STEPS = {"synthetic": 300, "nuscenes": 30000, "ddad": 30000}
# Default training length with --train-scenes N: where the supervised baseline has plateaued on the
# validation split (docs/EXPERIMENTS.md, section 7.2); numbers of scenes not listed take the next larger one's.
SCENE_STEPS = {16: 1200, 64: 2400}


def get_args(argv=None):
    """The command line of train.py -> the run's args; every flag has help, fixed sets of values are `choices`."""
    p = argparse.ArgumentParser(description="Train the student: supervised terms, CKD and VRKD, Eq. (17).")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="training data")
    p.add_argument("--dataroot", default=None,
                   help="nuScenes root folder (holds samples/, sweeps/, v1.0-*/), or DDAD's (holds ddad.json)")
    p.add_argument("--ddad-masks", default=None,
                   help="DDAD: folder of self-occlusion masks, CAMERA_01.png .. CAMERA_09.png, non-zero where a "
                        "pixel counts, zero on the ego car; excluded from Eqs. (10) and (12) (default: none)")
    p.add_argument("--version", default="v1.0-trainval", choices=["v1.0-trainval", "v1.0-mini"],
                   help="nuScenes version; its splits are train/val or mini_train/mini_val")
    p.add_argument("--lidar-sweeps", type=int, default=1,
                   help="nuScenes: LiDAR sweeps accumulated for training ground truth")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: 300 synthetic, 30000 nuScenes and DDAD; with --train-scenes N "
                        "the regime's budget, SCENE_STEPS)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="labelled surround samples per step (each holds 6 views)")
    p.add_argument("--train-scenes", type=int, default=None, metavar="N",
                   help="synthetic: the labelled training set is N finite scenes of a few frames each, the car "
                        "driving along one street (default: an unlimited stream of fresh worlds)")
    p.add_argument("--unlabelled-scenes", type=int, default=0, metavar="M",
                   help="synthetic, with --train-scenes: M more scenes whose images are used without ground truth")
    p.add_argument("--unlabelled-sweeps", type=int, default=0, metavar="K",
                   help="nuScenes: K camera sweep frames per keyframe as unlabelled images")
    p.add_argument("--unlabelled-ratio", type=float, default=1.0,
                   help="unlabelled surround samples per labelled one in every batch (with unlabelled images)")
    p.add_argument("--oracle-dense-gt", action="store_true",
                   help="a benchmark oracle, not the method (synthetic): supervise with the dense ground truth "
                        "on every training image, labelled or not, instead of the LiDAR")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument("--num-bins", type=int, default=64, help="K, the number of adaptive depth bins (Eqs. 2-7)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size, multiples of 32 (default: 96 160 synthetic, 352 640 nuScenes, 384 640 DDAD)")
    p.add_argument("--encoder", default="resnet18", choices=list(ENCODER_CHANNELS),
                   help="student encoder (regnet_x_400mf: the light one, README \"Speed\")")
    p.add_argument("--decoder-channels", type=int, nargs="+", default=list(StudentConfig.decoder_channels),
                   help="U-Net decoder widths from stride 16 down; 3 stages decode to stride 4 (default), "
                        "4 to stride 2")
    p.add_argument("--logit-scale", type=float, default=StudentConfig.logit_scale,
                   help="z = scale * conv1x1(F) (Eq. 4): lets the bin head reach sharp P^S within a short schedule")
    p.add_argument("--upsample", default=StudentConfig.upsample, choices=["convex", "bilinear"],
                   help="depth from the decoder's stride to the input size: bilinear (default) or learned "
                        "convex weights (model.convex_upsample)")
    p.add_argument("--shared-bins", action="store_true", help="one set of bin widths per surround sample (Eq. 2)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet encoder weights via torchvision (default: on for real data, off for synthetic)")
    p.add_argument("--beta-bins", type=float, default=0.0,
                   help="beta, weight of the bin chamfer loss (Eq. 17); AdaBins uses 0.1, which hurt here: "
                        "see docs/EXPERIMENTS.md")
    p.add_argument("--teacher", default="auto",
                   help="'auto' (emulated on synthetic, Depth-Anything-V2-Small on real data), 'emulated' "
                        "(strength 1; 'emulated:S' for S), "
                        "a Hugging Face id or a local Depth Anything V2 folder")
    p.add_argument("--teacher-cache", default="auto",
                   help="teacher cache folder written by `cache.py` (checked against this run); 'auto' (default): the "
                        f"cache under {DEFAULT_CACHE_ROOT} made for this run's flags, if any; 'none': run the teacher")
    p.add_argument("--lambda-ckd", type=float, default=0.1,
                   help="weight of L_CKD (Eq. 17); 0 turns CKD off (0.1: see the README's ablation)")
    p.add_argument("--lambda-cross", type=float, default=1.0, help="lambda_x, weight of L_cross inside L_CKD (Eq. 11)")
    p.add_argument("--tau", type=float, default=1.0, help="temperature of the bin KD (Eq. 10)")
    p.add_argument("--sigma", type=float, default=None, help="width of the teacher's soft bins (Eq. 7; default 1/K)")
    p.add_argument("--teacher-norm", default="affine", choices=losses.FARNESS_MODES,
                   help="normalisation of the teacher disparity behind its bins (Eq. 6; README, Eq. 6 study)")
    p.add_argument("--lambda-vr", type=float, default=1.0, help="weight of L_VRKD (Eq. 17); 0 turns VRKD off")
    p.add_argument("--lambda-rkd", type=float, default=0.0,
                   help="weight of response KD on the metric-aligned teacher (Eq. 21), a baseline; 0: off")
    p.add_argument("--rkd-off-lidar", type=int, default=None, metavar="R",
                   help="response KD only off the LiDAR pixels and their R-pixel neighbourhood (Eq. 23); "
                        "default: on every pixel (Eq. 21)")
    p.add_argument("--rkd-self-align", action="store_true",
                   help="response KD on views without LiDAR (unlabelled images): the teacher aligned to the "
                        "student's own detached depth (Eq. 24); default: such views get no response KD")
    p.add_argument("--rkd-teacher-pixels", default="all", choices=kd_baselines.TEACHER_PIXELS,
                   help="pixels response KD reads the teacher on (Eq. 21): all, or unclipped (0 < s < 1: not the "
                        "sky, not the pixels Eq. 6 clips)")
    p.add_argument("--lambda-fkd", type=float, default=0.0,
                   help="weight of feature KD, FitNets (Eq. 22), a baseline; 0: off (needs the live teacher)")
    p.add_argument("--vr-strip", type=float, default=0.25, help="border strip width ratio rho (Eq. 12)")
    p.add_argument("--vr-grid", type=int, nargs=2, default=(4, 2), metavar=("GH", "GW"),
                   help="token grid per strip (Eq. 12)")
    p.add_argument("--feature-level", type=int, default=1, choices=[0, 1, 2, 3],
                   help="decoder stage whose features VRKD distills (Eq. 12): 0/1/2/3 = stride 16/8/4/2")
    p.add_argument("--vr-student", default="features", choices=["features", "probs"],
                   help="student tokens of VRKD (Eq. 12): decoder features, or its bin probabilities P^S (Eq. 4)")
    p.add_argument("--vr-tau", type=float, default=0.1, help="temperature tau_v of the relation softmax (Eq. 13)")
    p.add_argument("--val-every", type=int, default=100, help="validate and save every this many steps")
    p.add_argument("--val-samples", type=int, default=16, help="validation surround samples")
    p.add_argument("--out", default="outputs/run",
                   help="folder for checkpoint.pt, args.json, metrics.jsonl; a fresh run refuses one that holds a run")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--render-cache", default=None,
                   help="synthetic data: keep each rendered world in this folder and read it back (runs of "
                        "one seed share their worlds; ~1.5 MB per item at 96 x 160)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batch order and synthetic worlds")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (0: load in the main process)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision of forward and losses (auto: bf16 on CUDA, off on CPU)")
    args = p.parse_args(argv)
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE[args.data]
    if args.amp == "auto":
        args.amp = "bf16" if torch.device(args.device).type == "cuda" else "off"
    if args.steps is None and not args.resume:  # a resumed run keeps its own, unless given
        args.steps = default_steps(args.data, args.train_scenes)
    if args.pretrained is None:
        args.pretrained = args.data != "synthetic"
    if args.ddad_masks is not None and args.data != "ddad":
        p.error("--ddad-masks needs --data ddad")
    if args.render_cache is not None and args.data != "synthetic":
        p.error("--render-cache needs --data synthetic")
    if (args.train_scenes is not None or args.oracle_dense_gt) and args.data != "synthetic":
        p.error("--train-scenes and --oracle-dense-gt need --data synthetic")
    if args.train_scenes is not None and args.train_scenes < 1 or args.unlabelled_scenes < 0:
        p.error("--train-scenes needs N >= 1, --unlabelled-scenes M >= 0")
    if args.unlabelled_scenes > 0 and args.train_scenes is None:
        p.error("--unlabelled-scenes needs --train-scenes (the unlabelled scenes follow the labelled ones)")
    if args.unlabelled_sweeps < 0 or args.unlabelled_sweeps > 0 and args.data != "nuscenes":
        p.error("--unlabelled-sweeps needs --data nuscenes and K >= 0")
    if args.unlabelled_ratio < 0:
        p.error("--unlabelled-ratio must be >= 0")
    if args.rkd_self_align and args.lambda_rkd <= 0:
        p.error("--rkd-self-align needs --lambda-rkd > 0")
    if args.teacher == "auto":
        args.teacher = default_teacher(args.data)
    args.image_size, args.vr_grid = list(args.image_size), list(args.vr_grid)
    if args.rkd_off_lidar is not None and (args.rkd_off_lidar < 0 or args.lambda_rkd <= 0):
        p.error("--rkd-off-lidar needs a radius >= 0 and --lambda-rkd > 0")
    if args.lambda_fkd > 0 and args.teacher_cache not in ("auto", "none"):
        p.error("--lambda-fkd needs the teacher's feature grid, which the teacher cache lacks; drop --teacher-cache")
    if finite_or_mixed(args) and args.teacher_cache not in ("auto", "none"):
        p.error("the teacher cache covers the plain training split; with --train-scenes or unlabelled images "
                "drop --teacher-cache (the teacher runs live)")
    try:  # StudentConfig checks the decoder flags; report its message as a usage error
        StudentConfig(decoder_channels=args.decoder_channels, feature_level=args.feature_level)
    except ValueError as err:
        p.error(str(err))
    return args


def finite_or_mixed(args):
    """True when the training set is not the plain split the teacher cache covers: finite scenes or
    unlabelled images (the teacher then runs live)."""
    return args.train_scenes is not None or args.unlabelled_scenes > 0 or args.unlabelled_sweeps > 0


def default_steps(data, train_scenes=None):
    """The default --steps of a regime: DEFAULT_STEPS per dataset; with N finite scenes, SCENE_STEPS of the
    smallest listed number >= N (the largest listed beyond them)."""
    if train_scenes is None:
        return DEFAULT_STEPS[data]
    listed = sorted(SCENE_STEPS)
    return SCENE_STEPS[next((n for n in listed if n >= train_scenes), listed[-1])]


def unlabelled_batch(args):
    """Unlabelled surround samples per step: round(--unlabelled-ratio x --batch-size), 0 without unlabelled images."""
    if args.unlabelled_scenes == 0 and args.unlabelled_sweeps == 0:
        return 0
    return int(round(args.unlabelled_ratio * args.batch_size))


# Flags a resumed run may change; every other flag (data, image size, losses, seed, ...) is
# restored from the checkpoint, so a resumed run continues the same training.
RESUME_MAY_CHANGE = ("steps", "out", "resume", "device", "workers", "val_every", "val_samples", "amp",
                     "teacher_cache", "dataroot", "ddad_masks", "render_cache")  # the data may have moved


def restore_args(args, saved, cfg):
    """On --resume: set every flag outside RESUME_MAY_CHANGE to its value in `saved` (the
    checkpoint's args), then the model flags to the checkpoint's StudentConfig `cfg` (which
    wins for flags older args lack); --steps, when not given, to the saved one -> names of the
    flags whose command-line value was overridden."""
    changed = []
    model_flags = {k: getattr(cfg, k) for k in ("encoder", "num_bins", "decoder_channels", "feature_level",
                                                "logit_scale", "shared_bins", "upsample", "image_size")}
    model_flags = {k: list(v) if isinstance(v, tuple) else v for k, v in model_flags.items()}
    for key, value in {**saved, **model_flags}.items():
        if key not in RESUME_MAY_CHANGE and hasattr(args, key) and getattr(args, key) != value:
            changed.append(key)
            setattr(args, key, value)
    if args.steps is None:
        args.steps = saved.get("steps", DEFAULT_STEPS[args.data])
    return changed
