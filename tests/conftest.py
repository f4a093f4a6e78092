"""pytest setup: the project is a flat folder of modules; make them importable from tests/."""
import contextlib
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny Depth Anything V2: DINOv2 with 32 channels, 2 blocks, 2 heads, 14 px patches, and a
# two-level DPT neck fed by both blocks (so the last feature map is the last block).
TINY_HIDDEN = 32
TINY_LONG_SIDE = 56  # 4 patches on the long side


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny relative DA-V2 saved with save_pretrained, as `hf download` would leave it."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    backbone = dict(model_type="dinov2", hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                    patch_size=14, image_size=28, out_indices=[1, 2], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=TINY_HIDDEN, patch_size=14,
                                 neck_hidden_sizes=[8, 16], reassemble_factors=[2, 1], fusion_hidden_size=8,
                                 head_hidden_size=4)
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # larger weights than the 0.02 init, so that the disparity varies
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
        model.head.conv3.bias.fill_(1.0)  # and the final ReLU stays active
    folder = tmp_path_factory.mktemp("tiny-da-v2")
    model.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def hidden(path):
    """Move a fixture file away for the duration of a block."""
    os.rename(path, path + ".hidden")
    try:
        yield path
    finally:
        os.rename(path + ".hidden", path)


def identity_adapter(channels):
    """A 1x1 conv that maps C channels to themselves unchanged (feature KD's adapter, Eq. 22)."""
    conv = torch.nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return conv
