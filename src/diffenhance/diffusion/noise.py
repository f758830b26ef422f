"""Start noise that belongs to the image, not to the tile: `FieldGenerator`.

Tiled inference cross-fades neighbouring tiles over their overlap. With a generator of its
own per tile, two tiles draw independent start noise for the same pixels, and the cross-fade
averages two independent samples there: along every overlap the sample's spread drops by up to
1 - sqrt(1/2), about 30% (the shipped sr2 at its balanced preset: 1.5 against 2.1-2.3 codes of
255 inside the tiles), a lattice of bands with less detail. A `FieldGenerator` draws the start
noise of its tile as the crop of one noise field over the whole image, defined block by block
on a fixed grid (`BLOCK` output pixels; each block's numbers from its own seeded generator,
`block_seed`), so overlapping tiles start from the same numbers for the same pixels, and a
tiled sample is the untiled one up to the network's context.

Noise a sampler draws per step (DDPM's ancestral steps, indi's eta) comes from the fields
too (the k-th draw of every tile reads field k, and every tile makes the same draws), so the
tiles of a stochastic sampler agree in their overlaps as well. It is a `torch.Generator`
too, seeded with the tile's own seed: a draw that is not an image on the output grid (a
per-sample scalar) comes from that.
"""

from __future__ import annotations

import hashlib

import torch

BLOCK = 32  # side of the field's blocks in the draw's own pixels (output pixels)


def block_seed(image_seed: int, draw: int, by: int, bx: int) -> int:
    """63-bit seed of block (by, bx) of the `draw`-th field of the image seeded `image_seed`."""
    h = hashlib.blake2b(f"{image_seed}\0{draw}\0{by}\0{bx}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


class FieldGenerator(torch.Generator):
    """A tile's generator: `manual_seed`ed with the tile's own seed (per-step noise), and able
    to `draw` its start noise from the image's noise fields (module docstring).

    image_seed: the image's seed (the same for all its tiles); y0, x0: the tile's position and
    (h, w) its size, in input pixels. The k-th `draw` of every tile reads field k, so sample k
    of each tile starts from the same field."""

    def __new__(cls, *args: int) -> FieldGenerator:  # torch.Generator.__new__ takes a device
        return super().__new__(cls)

    def __init__(self, tile_seed: int, image_seed: int, y0: int, x0: int, h: int, w: int):
        super().__init__()
        self.manual_seed(tile_seed)
        self.image_seed, self.y0, self.x0, self.h, self.w = image_seed, y0, x0, h, w
        self.draws = 0

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        """N(0, 1) float32 of `shape` (C, H, W), on the CPU: where H and W are whole multiples
        of the tile's input size (an image at the output grid of a scale-s model), the tile's
        crop of the next field, whose pixel (Y, X) is the same number in every tile that
        covers it; any other shape (a per-sample scalar, say) from the tile's own generator."""
        if len(shape) != 3 or shape[1] % self.h or shape[2] % self.w:
            return torch.randn(shape, generator=self)
        c, hh, ww = shape
        oy, ox = self.y0 * (hh // self.h), self.x0 * (ww // self.w)
        by0, bx0 = oy // BLOCK, ox // BLOCK
        by1, bx1 = (oy + hh - 1) // BLOCK, (ox + ww - 1) // BLOCK
        rows = []
        for by in range(by0, by1 + 1):
            row = [
                torch.randn(
                    (c, BLOCK, BLOCK),
                    generator=torch.Generator().manual_seed(
                        block_seed(self.image_seed, self.draws, by, bx)
                    ),
                )
                for bx in range(bx0, bx1 + 1)
            ]
            rows.append(torch.cat(row, dim=2))
        field = torch.cat(rows, dim=1)
        self.draws += 1
        y, x = oy - by0 * BLOCK, ox - bx0 * BLOCK
        return field[:, y : y + hh, x : x + ww].contiguous()
