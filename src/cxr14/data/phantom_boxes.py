"""Ground-truth boxes for the phantom: where render_image actually drew a finding's sign.

    extent = sign_extent(density_after - density_before)   # WORK-pixel bounds, or None
    x, y, w, h = to_image_box(extent, m, image_size)      # through the positioning affine + resize

The phantom draws every sign into a density map at the working resolution WORK, then warps the
map with a small rotation/scale/shift `m` (cv2.warpAffine) and resizes it to the output size.
A box is the bounding box of the sign's density change above BOX_FRACTION of its peak (so the
faint tails of soft masks do not stretch it), its corners mapped through `m` and the resize,
clipped to the image. Bilateral signs (effusion on both sides, two nodules) get one box around
both, as `BBox_List_2017.csv` has one box per image and finding here.
"""

from __future__ import annotations

import numpy as np

from cxr14.data.boxes import BOX_FINDINGS, NIH_HEADER, NIH_SPELLING

# Share of the sign's peak |density change| a pixel needs to count as inside the box. 0.2
# leaves out the soft lung-mask edges and the faint whole-lung haze of a pneumothorax (~0.04
# density against a pleural line of ~0.16), which the reader would not box either.
BOX_FRACTION = 0.2
BOXED = frozenset(BOX_FINDINGS.values())  # our label names of the 8 findings NIH boxed
Extent = tuple[int, int, int, int]  # x0, y0, x1, y1: inclusive WORK pixel indices
Box = tuple[float, float, float, float]  # x, y, w, h in output pixels


def sign_extent(change: np.ndarray, fraction: float = BOX_FRACTION) -> Extent | None:
    """Bounding pixels of |change| > fraction x its maximum, or None when nothing changed."""
    magnitude = np.abs(change)
    peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak <= 0:
        return None
    ys, xs = np.nonzero(magnitude > fraction * peak)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def to_image_box(extent: Extent, m: np.ndarray, work: int, image_size: int) -> Box | None:
    """Map a WORK-pixel extent through the cv2.warpAffine matrix `m` and the resize to image_size.

    cv2 puts pixel i's centre at coordinate i, so the extent's outer edges are at i - 0.5 and
    i + 0.5; the warped corners' axis-aligned bounds are clipped to the image, then scaled.
    Returns None if the sign was warped entirely out of the frame.
    """
    x0, y0, x1, y1 = extent
    corners = np.array([[x, y, 1.0] for x in (x0 - 0.5, x1 + 0.5) for y in (y0 - 0.5, y1 + 0.5)])
    warped = corners @ np.asarray(m, dtype=np.float64).T + 0.5  # back to edge coordinates
    left, top = np.clip(warped.min(axis=0), 0, work)
    right, bottom = np.clip(warped.max(axis=0), 0, work)
    if right <= left or bottom <= top:
        return None
    scale = image_size / work
    return float(left * scale), float(top * scale), float((right - left) * scale), float((bottom - top) * scale)


def bbox_csv(rows: list[tuple[str, str, Box]]) -> str:
    """`BBox_List_2017.csv` text in NIH's own format for (image_id, our finding, box) rows.

    NIH's header and spelling ("Infiltrate"), rows sorted by (image, finding) so the bytes do not
    depend on the order workers finished in.
    """
    lines = [NIH_HEADER]
    for image_id, finding, (x, y, w, h) in sorted(rows, key=lambda row: (row[0], NIH_SPELLING[row[1]])):
        lines.append(f"{image_id},{NIH_SPELLING[finding]},{x:.3f},{y:.3f},{w:.3f},{h:.3f}")
    return "\n".join(lines) + "\n"
