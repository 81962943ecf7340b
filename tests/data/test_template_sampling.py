import numpy as np
import pytest
import torch

from pipeline.data.template_sampling import SupportedMaps


def _dense_profile(maps: np.ndarray, vox: torch.Tensor, step: torch.Tensor | None, n: int) -> torch.Tensor:
    """The slice-profile sum as synthesis computed it before: every channel at every point."""
    volume = torch.from_numpy(maps)[None]
    size = torch.tensor(maps.shape[1:], dtype=torch.float32)[:, None]
    total = torch.zeros((maps.shape[0], vox.shape[1]))
    for k in range(n):
        at = vox + step * ((k + 0.5) / n - 0.5) if n > 1 else vox
        coords = (2 * at / (size - 1) - 1).flip(0).T.contiguous()
        total += torch.nn.functional.grid_sample(volume, coords.view(1, 1, 1, -1, 3), align_corners=True).view(
            maps.shape[0], -1)
    return total


@pytest.mark.parametrize("n", [1, 4])
def test_sampling_only_where_the_maps_reach_gives_the_dense_values_to_the_bit(n):
    rng = np.random.default_rng(0)
    maps = np.zeros((3, 30, 34, 28), np.float32)
    maps[:, 9:17, 12:20, 5:11] = rng.uniform(0, 1, (3, 8, 8, 6))  # a blob; the rest of the template is zero
    vox = torch.from_numpy(rng.uniform(-4, 37, (3, 20000)).astype(np.float32))  # in, near and beyond the volume
    step = torch.from_numpy(rng.normal(0, 1.5, (3, 20000)).astype(np.float32)) if n > 1 else None
    group = SupportedMaps.of(maps)
    index, sums = group.slice_profile_sum(vox, step, n)
    sparse = torch.zeros((3, vox.shape[1]))
    sparse[:, index] = sums
    dense = _dense_profile(maps, vox, step, n)
    assert 0 < len(index) < vox.shape[1] // 2  # most points were skipped
    assert torch.equal(sparse, dense) and dense.abs().sum() > 0


def test_all_zero_maps_are_not_sampled_and_points_all_inside_need_no_index():
    empty = SupportedMaps.of(np.zeros((2, 6, 6, 6), np.float32))
    vox = torch.full((3, 5), 2.5)
    assert empty.empty and empty.slice_profile_sum(vox, None, 1) == (None, None)
    full = SupportedMaps.of(np.ones((1, 6, 6, 6), np.float32))
    index, sums = full.slice_profile_sum(vox, None, 1)
    assert index is None and torch.allclose(sums, torch.ones(1, 5))
