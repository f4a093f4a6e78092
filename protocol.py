"""The evaluation protocol of the FSMDE papers (SurroundDepth): what `evaluate.py` scores against.

Eq. (18) on nuScenes and DDAD is computed against the keyframe LiDAR ground truth at each
camera's native resolution (1600 x 900, 1936 x 1216), the prediction resized to it, not against
the ground truth re-rendered at the network's input size. A dataset offers that ground truth
through `native_depth(index)` (N float32 arrays (H0, W0), meters, 0 = no point). Defines
- `base_dataset`, `has_native_depth`: find a dataset's native ground truth under torch Subsets;
- `WithNativeDepth`: the items of a dataset plus 'depth_native';
- `flip_averaged`: test-time averaging with the horizontally flipped prediction.
"""
import torch


def base_dataset(dataset, index):
    """(dataset, index) under any torch Subsets: where item `index` of `dataset` comes from."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    return dataset, index


def has_native_depth(dataset):
    """True when `dataset` (under its Subsets) has ground truth at the cameras' native resolution."""
    return len(dataset) > 0 and hasattr(base_dataset(dataset, 0)[0], "native_depth")


class WithNativeDepth(torch.utils.data.Dataset):
    """The items of `dataset` plus 'depth_native': its `native_depth(index)`, N arrays (H0, W0) meters."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        source, source_index = base_dataset(self.dataset, index)
        return {**self.dataset[index], "depth_native": source.native_depth(source_index)}


def flip_averaged(predict):
    """Test-time flip: predict(batch) -> (B, N, 1, H, W) becomes the mean of the prediction and the
    prediction of the horizontally flipped images, flipped back (SurroundDepth's --post_process)."""
    def averaged(batch):
        flipped = {**batch, "images": batch["images"].flip(-1)}
        return 0.5 * (predict(batch) + predict(flipped).flip(-1))
    return averaged
