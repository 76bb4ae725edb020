"""Training-time augmentation: the symmetries of the data (``train.augment``) and random crops (``train.crop``).

Each row gets one element of a symmetry group of the square, drawn from the step's generator, and
the same element is applied to its target, condition and mask, so the pairing between them is kept.
Element k in 0..7: an optional transpose (k >= 4, a reflection about the diagonal) followed by
k mod 4 quarter turns. Groups:

* ``none``: nothing.
* ``flips``: the identity, the half turn and the two axis flips (any H x W).
* ``rot90``: the four quarter turns (square fields). Rotations only: valid for any isotropic field,
  including pseudo-scalars such as 2-D vorticity, whose sign flips under a reflection (a mirrored flow
  has its vortices' spirals winding the wrong way for their sign).
* ``d4``: all eight (square fields): rotations and reflections, for isotropic scalar fields.
"""

from __future__ import annotations

import torch

AUGMENTS = ("none", "flips", "rot90", "d4")
_ELEMENTS = {"none": (0,), "flips": (0, 2, 5, 7), "rot90": (0, 1, 2, 3), "d4": tuple(range(8))}
# flips: 5 = transpose then a quarter turn = a flip of the rows; 7 = transpose then three turns = a flip of columns


def needs_square(kind: str) -> bool:
    return kind in ("rot90", "d4")


def apply_element(x: torch.Tensor, k: int) -> torch.Tensor:
    """Group element k (see the module docstring) on the last two axes of x."""
    if k >= 4:
        x = x.transpose(-2, -1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def augment_rows(batch: dict[str, torch.Tensor], kind: str, generator: torch.Generator,
                 keys: tuple[str, ...] = ("x0", "cond", "mask")) -> dict[str, torch.Tensor]:
    """Apply one random element of the ``kind`` group per row, the same to every tensor in ``keys``."""
    if kind == "none":
        return batch
    elements = _ELEMENTS[kind]
    n = batch[keys[0]].shape[0]
    ks = torch.tensor(elements)[torch.randint(len(elements), (n,), generator=generator, device="cpu")]
    out = dict(batch)
    for key in keys:
        x = batch[key]
        y = torch.empty_like(x)
        for k in elements:
            rows = (ks == k).nonzero().flatten().to(x.device)
            if len(rows):
                y[rows] = apply_element(x[rows], k)
        out[key] = y
    return out


def crop_rows(batch: dict[str, torch.Tensor], size: tuple[int, int], generator: torch.Generator | None = None,
              keys: tuple[str, ...] = ("x0", "cond", "mask")) -> dict[str, torch.Tensor]:
    """Cut an ``size`` = (h, w) window out of every row (``train.crop``), the same window for each of ``keys``
    present in the batch. With a generator each row gets its own uniformly drawn window (training);
    without one, every row gets the centre window (validation, so that its metrics are comparable)."""
    h, w = size
    keys = tuple(k for k in keys if k in batch)
    n, _, H, W = batch[keys[0]].shape
    if (h, w) == (H, W):
        return batch
    if generator is None:
        tops, lefts = [(H - h) // 2] * n, [(W - w) // 2] * n
    else:
        tops = torch.randint(H - h + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(W - w + 1, (n,), generator=generator).tolist()
    out = dict(batch)
    for key in keys:
        x = batch[key]
        out[key] = torch.stack([x[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(zip(tops, lefts))])
    return out
