"""Selective search: class-agnostic object proposals by hierarchical grouping of superpixels.

Paper: Selective Search for Object Recognition, Uijlings, van de Sande, Gevers, Smeulders,
IJCV 2013 (no arXiv id; the first version is van de Sande et al., "Segmentation as Selective
Search for Object Recognition", ICCV 2011). R-CNN (arXiv:1311.2524) and Fast R-CNN
(arXiv:1504.08083) use its "fast mode", about 2,000 boxes per image.

Follows the paper:
    * Initial regions from Felzenszwalb and Huttenlocher's graph segmentation (scikit-image's
      ``felzenszwalb``) with threshold k, sigma = 0.8 and minimum component size k, computed in
      the strategy's colour space (Sec. 3.1).
    * Hierarchical grouping (Algorithm 1): the similarities of all neighbouring regions; repeatedly
      merge the most similar pair r_t = r_i ∪ r_j, drop the similarities that involve r_i or r_j and
      add those between r_t and its neighbours, until one region covers the image. Every region
      ever formed gives one box.
    * The similarities (Sec. 3.2), each in [0, 1], summed with weights a_i in {0, 1}:
      s_colour = Σ_k min(c_i^k, c_j^k) over L1-normalised colour histograms of 25 bins per
      channel; s_texture = Σ_k min(t_i^k, t_j^k) over L1-normalised histograms of 10 bins of
      Gaussian derivatives (σ = 1) in 8 orientations per channel; s_size = 1 - (|r_i| + |r_j|) / |im|;
      s_fill = 1 - (|BB_ij| - |r_i| - |r_j|) / |im| with BB_ij the tight box around both. A merged
      region's histograms are the size-weighted means (|r_i| C_i + |r_j| C_j) / (|r_i| + |r_j|),
      which equal the histograms of the union: no pixel is read again.
    * Diversification (Sec. 3.3): colour spaces (RGB, HSV, Lab, rgI, I, H), starting thresholds k and
      similarity combinations. ``mode="fast"`` is the paper's fast mode: HSV and Lab, k in {50, 100},
      C+T+S+F and T+S+F (8 strategies); ``"quality"`` is its quality mode: HSV, Lab, rgI, H and I,
      k in {50, 100, 150, 300}, C+T+S+F, T+S+F, F and S (80 strategies); ``"single"`` one strategy
      (HSV, k = 100, C+T+S+F).
    * Ranking (Sec. 3.4): in each hierarchy the region at position i (i = 1 the top, the whole
      image) gets the value RND × i with RND uniform in [0, 1]; all strategies' boxes are sorted
      by this value and duplicates removed, keeping the first.

Deviates, and why:
    * "8 orientations" of a Gaussian derivative: the directional derivative
      D_θ = cos θ ∂G/∂x + sin θ ∂G/∂y at θ = 0°, 45°, ..., 315°, rectified (max(D_θ, 0)), so
      opposite orientations split the signed response as the paper's code does; a channel's 8 maps
      are scaled to [0, 1] by their common maximum over the image (one scale per channel keeps the
      orientations comparable and leaves a flat channel at 0) before the 10-bin histograms.
    * Every colour space is scaled to [0, 1] per channel (Lab: L / 100, (a + 128) / 255,
      (b + 128) / 255) before the segmentation and the 25-bin histograms; Felzenszwalb's k keeps
      the meaning it has for 0..255 images (scikit-image divides it by 255 for float input).
    * ``max_side`` resizes a large image before the search and scales the boxes back, as R-CNN's
      code does (width 500); None keeps the full resolution.
    * Region adjacency is 4-connectivity of the initial segmentation's label map.
    * Written with numpy and scikit-image/scipy rather than the authors' MATLAB/C; the grouping
      is a heap of pairwise similarities with lazy deletion (one Python step per merge).

Boxes are continuous xyxy: a region covering pixel columns x0..x1 and rows y0..y1 gives
(x0, y0, x1 + 1, y1 + 1), the same box as OpenCV's ``boundingRect`` (x, y, w, h).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["COLOUR_SPACES", "SIMILARITIES", "MODES", "Strategy", "strategies_for_mode", "convert_colour_space",
           "initial_regions", "colour_histograms", "texture_responses", "texture_histograms", "region_boxes",
           "region_adjacency", "RegionFeatures", "similarity", "merge", "hierarchical_grouping",
           "selective_search", "SelectiveSearch"]

COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi", "intensity", "hue")
SIMILARITIES = ("colour", "texture", "size", "fill")
MODES = ("single", "fast", "quality")
COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8


@dataclass(frozen=True)
class Strategy:
    """One diversification strategy: a colour space, Felzenszwalb's k and the similarities summed."""

    colour_space: str
    k: float
    similarities: tuple[str, ...]

    def __post_init__(self):
        if self.colour_space not in COLOUR_SPACES:
            raise ValueError(f"colour_space must be one of {COLOUR_SPACES}, got {self.colour_space!r}")
        if not self.k > 0:
            raise ValueError(f"k (Felzenszwalb's threshold) must be > 0, got {self.k!r}")
        if not self.similarities or any(s not in SIMILARITIES for s in self.similarities):
            raise ValueError(f"similarities must be a non-empty subset of {SIMILARITIES}, got {self.similarities!r}")


_CTSF, _TSF = ("colour", "texture", "size", "fill"), ("texture", "size", "fill")


def strategies_for_mode(mode: str) -> list[Strategy]:
    """The paper's strategy sets: "single" (1), "fast" (8) and "quality" (80)."""
    if mode == "single":
        return [Strategy("hsv", 100, _CTSF)]
    if mode == "fast":
        return [Strategy(space, k, sims) for space in ("hsv", "lab") for k in (50, 100) for sims in (_CTSF, _TSF)]
    if mode == "quality":
        return [Strategy(space, k, sims) for space in ("hsv", "lab", "rgi", "hue", "intensity")
                for k in (50, 100, 150, 300) for sims in (_CTSF, _TSF, ("fill",), ("size",))]
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# --------------------------------------------------------------------------- per-pixel features


def convert_colour_space(image: np.ndarray, space: str) -> np.ndarray:
    """RGB float [H, W, 3] in [0, 1] -> [H, W, C] in [0, 1] in ``space`` (C = 1 for intensity and hue)."""
    from skimage import color

    if space == "rgb":
        return image
    if space == "hsv":
        return color.rgb2hsv(image)
    if space == "hue":
        return color.rgb2hsv(image)[..., :1]
    if space == "lab":
        lab = color.rgb2lab(image)
        scaled = np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128.0) / 255.0, (lab[..., 2] + 128.0) / 255.0], -1)
        return np.clip(scaled, 0.0, 1.0)
    total = image.sum(axis=-1, keepdims=True)
    intensity = total / 3.0
    if space == "intensity":
        return intensity
    if space == "rgi":  # normalised r, g and the intensity
        safe = np.where(total > 0, total, 1.0)
        return np.concatenate([image[..., :1] / safe, image[..., 1:2] / safe, intensity], axis=-1)
    raise ValueError(f"colour space must be one of {COLOUR_SPACES}, got {space!r}")


def initial_regions(image: np.ndarray, k: float, sigma: float = 0.8, min_size: int | None = None) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation of [H, W, C] -> labels [H, W] int64 in 0..R-1 (min size k)."""
    from skimage.segmentation import felzenszwalb

    min_size = int(k) if min_size is None else int(min_size)
    if image.shape[-1] == 1:
        labels = felzenszwalb(image[..., 0], scale=k, sigma=sigma, min_size=min_size, channel_axis=None)
    else:
        labels = felzenszwalb(image, scale=k, sigma=sigma, min_size=min_size, channel_axis=-1)
    _, labels = np.unique(labels, return_inverse=True)  # consecutive 0..R-1
    return labels.reshape(image.shape[:2]).astype(np.int64)


def _histograms(values: np.ndarray, labels: np.ndarray, num_regions: int, bins: int) -> np.ndarray:
    """Per region, a histogram of ``bins`` bins over [0, 1] of each feature column, L1-normalised.

    values [P, F] in [0, 1] (P pixels, F features), labels [P] -> [R, F * bins].
    """
    index = np.minimum((values * bins).astype(np.int64), bins - 1)  # (P, F); value 1.0 goes to the last bin
    num_features = values.shape[1]
    flat = labels[:, None] * (num_features * bins) + np.arange(num_features)[None, :] * bins + index
    counts = np.bincount(flat.ravel(), minlength=num_regions * num_features * bins).astype(np.float64)
    counts = counts.reshape(num_regions, num_features * bins)
    return counts / counts.sum(axis=1, keepdims=True)


def colour_histograms(image: np.ndarray, labels: np.ndarray, bins: int = COLOUR_BINS) -> np.ndarray:
    """L1-normalised colour histograms [R, C * 25] of the regions of ``labels`` [H, W] over image [H, W, C]."""
    num_regions = int(labels.max()) + 1
    return _histograms(image.reshape(-1, image.shape[-1]), labels.ravel(), num_regions, bins)


def texture_responses(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Rectified Gaussian-derivative responses in 8 orientations: [H, W, C] -> [H, W, C * 8] in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    responses = []
    angles = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    for channel in range(image.shape[-1]):
        plane = image[..., channel].astype(np.float64)
        d_x = gaussian_filter(plane, sigma, order=(0, 1))  # ∂G/∂x (along columns)
        d_y = gaussian_filter(plane, sigma, order=(1, 0))  # ∂G/∂y (along rows)
        oriented = [np.maximum(np.cos(angle) * d_x + np.sin(angle) * d_y, 0.0) for angle in angles]  # max(D_θ, 0)
        peak = max(float(r.max()) for r in oriented)
        # one scale per channel keeps the orientations comparable; a flat channel has no texture
        responses.extend(r / peak if peak > 1e-12 else np.zeros_like(r) for r in oriented)
    return np.stack(responses, axis=-1)


def texture_histograms(responses: np.ndarray, labels: np.ndarray, bins: int = TEXTURE_BINS) -> np.ndarray:
    """L1-normalised texture histograms [R, C * 8 * 10] of the regions of ``labels`` [H, W]."""
    num_regions = int(labels.max()) + 1
    return _histograms(responses.reshape(-1, responses.shape[-1]), labels.ravel(), num_regions, bins)


def region_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per region of ``labels`` [H, W]: its xyxy box [R, 4] (exclusive ends) and its size in pixels [R]."""
    num_regions = int(labels.max()) + 1
    height, width = labels.shape
    rows = np.broadcast_to(np.arange(height)[:, None], labels.shape).ravel()
    cols = np.broadcast_to(np.arange(width)[None, :], labels.shape).ravel()
    flat = labels.ravel()
    boxes = np.empty((num_regions, 4), dtype=np.int64)
    boxes[:, 0] = np.full(num_regions, width)
    boxes[:, 1] = np.full(num_regions, height)
    boxes[:, 2:] = -1
    np.minimum.at(boxes[:, 0], flat, cols)
    np.minimum.at(boxes[:, 1], flat, rows)
    np.maximum.at(boxes[:, 2], flat, cols)
    np.maximum.at(boxes[:, 3], flat, rows)
    boxes[:, 2:] += 1  # pixel x1 covers [x1, x1 + 1)
    return boxes, np.bincount(flat, minlength=num_regions)


def region_adjacency(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, of regions that touch horizontally or vertically (4-connectivity)."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        pairs.append(np.stack([np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])], axis=1))
    unique = np.unique(np.concatenate(pairs), axis=0)
    return {(int(i), int(j)) for i, j in unique}


# --------------------------------------------------------------------------- similarities and merging


@dataclass
class RegionFeatures:
    """What the similarities need of each region (row r of every array), for the 2R - 1 regions of a hierarchy."""

    colour: np.ndarray  # (capacity, C * 25)
    texture: np.ndarray  # (capacity, C * 80)
    size: np.ndarray  # (capacity,) pixels
    box: np.ndarray  # (capacity, 4) xyxy, exclusive ends
    image_size: int  # |im|, pixels


def similarity(features: RegionFeatures, i: int, j: int, similarities: Sequence[str]) -> float:
    """s(r_i, r_j) = Σ of the chosen similarities among colour, texture, size and fill (Sec. 3.2)."""
    total = 0.0
    if "colour" in similarities:  # Σ_k min(c_i^k, c_j^k)
        total += float(np.minimum(features.colour[i], features.colour[j]).sum())
    if "texture" in similarities:  # Σ_k min(t_i^k, t_j^k)
        total += float(np.minimum(features.texture[i], features.texture[j]).sum())
    both = float(features.size[i] + features.size[j])
    if "size" in similarities:  # 1 - (|r_i| + |r_j|) / |im|
        total += 1.0 - both / features.image_size
    if "fill" in similarities:  # 1 - (|BB_ij| - |r_i| - |r_j|) / |im|
        a, b = features.box[i], features.box[j]
        bb_area = float((max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1])))
        total += 1.0 - (bb_area - both) / features.image_size
    return total


def merge(features: RegionFeatures, i: int, j: int, t: int) -> None:
    """Write r_t = r_i ∪ r_j into row t: size-weighted histograms, summed size, enclosing box."""
    size_i, size_j = float(features.size[i]), float(features.size[j])
    # C_t = (|r_i| C_i + |r_j| C_j) / (|r_i| + |r_j|)
    features.colour[t] = (size_i * features.colour[i] + size_j * features.colour[j]) / (size_i + size_j)
    features.texture[t] = (size_i * features.texture[i] + size_j * features.texture[j]) / (size_i + size_j)
    features.size[t] = features.size[i] + features.size[j]
    features.box[t, :2] = np.minimum(features.box[i, :2], features.box[j, :2])
    features.box[t, 2:] = np.maximum(features.box[i, 2:], features.box[j, 2:])


def hierarchical_grouping(features: RegionFeatures, num_regions: int, neighbours: set[tuple[int, int]],
                          similarities: Sequence[str]) -> list[tuple[int, int]]:
    """Algorithm 1 over regions 0..R-1; region R + m is the m-th merge. Returns the merged pairs, in order.

    ``features`` must have room for 2R - 1 rows; rows R.. are filled here. Ties in similarity
    go to the pair with the smaller indices (the heap's order). Regions of a segmentation that
    is not connected (no neighbours left) stay unmerged.
    """
    adjacent: dict[int, set[int]] = {r: set() for r in range(num_regions)}
    heap = []
    for i, j in neighbours:
        adjacent[i].add(j)
        adjacent[j].add(i)
        heap.append((-similarity(features, i, j, similarities), i, j))
    heapq.heapify(heap)
    alive = np.zeros(features.size.shape[0], dtype=bool)
    alive[:num_regions] = True
    merges: list[tuple[int, int]] = []
    t = num_regions
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):  # a similarity involving a merged region: removed lazily
            continue
        merge(features, i, j, t)
        alive[i] = alive[j] = False
        alive[t] = True
        around = (adjacent.pop(i) | adjacent.pop(j)) - {i, j}
        adjacent[t] = around
        for k in around:
            adjacent[k] -= {i, j}
            adjacent[k].add(t)
            heapq.heappush(heap, (-similarity(features, k, t, similarities), k, t))
        merges.append((i, j))
        t += 1
    return merges


# --------------------------------------------------------------------------- the search


def _as_rgb_array(image) -> np.ndarray:
    """A float RGB array [H, W, 3] in [0, 1] from a tensor [3, H, W] (float in [0, 1] or uint8) or an array [H, W, 3]."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"selective_search expects an RGB image tensor [3, H, W], got shape {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"selective_search expects an RGB image array [H, W, 3], got shape {image.shape}")
        array = image
    else:
        raise TypeError(f"selective_search expects an RGB image tensor [3, H, W] or array [H, W, 3], "
                        f"got {type(image).__name__}")
    if min(array.shape[:2]) < 2:
        raise ValueError(f"selective_search needs an image of at least 2 x 2 pixels, got {array.shape[:2]}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError(f"selective_search expects float pixel values in [0, 1] (or uint8), got values in "
                         f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]")
    return array


def _resize(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image, 1.0
    from skimage.transform import resize

    scale = max_side / max(height, width)
    shape = (max(2, round(height * scale)), max(2, round(width * scale)))
    return resize(image, shape, order=1, anti_aliasing=True, preserve_range=True), scale


def _segmentation(image: np.ndarray, colour_space: str, k: float, sigma: float) -> tuple:
    """The initial regions of one (colour space, k) and their features, shared by the strategies that use them."""
    converted = convert_colour_space(image, colour_space)
    labels = initial_regions(converted, k, sigma)
    boxes, sizes = region_boxes(labels)
    return (labels, boxes, sizes, colour_histograms(converted, labels),
            texture_histograms(texture_responses(converted), labels), region_adjacency(labels))


def _hierarchy_boxes(segmentation: tuple, similarities: Sequence[str]) -> np.ndarray:
    """All boxes of one hierarchy, ordered top first (position 1 = the last merge): [2R - 1, 4]."""
    labels, boxes, sizes, colour, texture, neighbours = segmentation
    num_regions = boxes.shape[0]
    extra = num_regions - 1  # room for the merged regions

    def padded(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([rows, np.zeros((extra,) + rows.shape[1:], dtype=rows.dtype)])

    features = RegionFeatures(colour=padded(colour), texture=padded(texture), size=padded(sizes), box=padded(boxes),
                              image_size=labels.size)
    merges = hierarchical_grouping(features, num_regions, neighbours, similarities)
    return features.box[: num_regions + len(merges)][::-1]


def selective_search(image, *, mode: str = "fast", strategies: Sequence[Strategy] | None = None, sigma: float = 0.8,
                     max_side: int | None = 500, min_box_size: float = 0.0, seed: int = 0) -> Tensor:
    """Selective-search proposals for one RGB image: Float[N, 4] xyxy in the image's pixels, best-ranked first.

    Args:
        image: Float[3, H, W] in [0, 1] (or uint8), or an array [H, W, 3].
        mode: "single", "fast" (the paper's fast mode, R-CNN's) or "quality"; ignored when
            ``strategies`` is given.
        strategies: an explicit list of :class:`Strategy` (colour space, k, similarities).
        sigma: Felzenszwalb's Gaussian smoothing.
        max_side: resize so the longer side is at most this before the search (None: full size).
        min_box_size: drop boxes narrower or lower than this, in input pixels.
        seed: the random ranking's seed (RND × position).
    """
    rgb = _as_rgb_array(image)
    strategies = strategies_for_mode(mode) if strategies is None else list(strategies)
    if not strategies or not all(isinstance(s, Strategy) for s in strategies):
        raise ValueError(f"strategies must be a non-empty list of Strategy, got {strategies!r}")
    height, width = rgb.shape[:2]
    small, scale = _resize(rgb, max_side)
    rng = np.random.default_rng(seed)
    all_boxes, all_values = [], []
    segmentations: dict[tuple[str, float], tuple] = {}  # one segmentation per (colour space, k)
    for strategy in strategies:
        key = (strategy.colour_space, float(strategy.k))
        if key not in segmentations:
            segmentations[key] = _segmentation(small, strategy.colour_space, strategy.k, sigma)
        boxes = _hierarchy_boxes(segmentations[key], strategy.similarities)
        positions = np.arange(1, len(boxes) + 1)  # 1 = the top of the hierarchy
        all_boxes.append(boxes)
        all_values.append(rng.random(len(boxes)) * positions)  # v_i = RND × i
    boxes = np.concatenate(all_boxes)[np.argsort(np.concatenate(all_values), kind="stable")]
    _, first = np.unique(boxes, axis=0, return_index=True)  # duplicates: keep the best-ranked copy
    boxes = boxes[np.sort(first)].astype(np.float64)
    if scale != 1.0:
        boxes = boxes / scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    boxes = torch.from_numpy(boxes).to(torch.float32)
    if min_box_size > 0:
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
        boxes = boxes[keep]
    return boxes


class SelectiveSearch:
    """A configured selective search, callable on an image: ``SelectiveSearch(mode="fast")(image) -> [N, 4]``.

    ``max_proposals`` keeps the best-ranked N boxes (R-CNN's ~2,000). Proposals depend on the image
    alone, so they are memoised by the image's content (a SHA-1 of its pixels and of this
    configuration), in memory and, with ``cache_dir``, as one ``.npy`` file per image: R-CNN and
    Fast R-CNN precompute them once the same way. An image whose horizontal mirror is cached gets
    the mirrored boxes (Fast R-CNN's flipped training images do the same), so flip augmentation
    needs no new search. ``searches`` / ``search_seconds`` count the searches actually run.
    """

    def __init__(self, *, mode: str = "fast", strategies: Sequence[Strategy] | None = None, sigma: float = 0.8,
                 max_side: int | None = 500, min_box_size: float = 0.0, max_proposals: int | None = 2000,
                 seed: int = 0, cache_dir: str | None = None):
        if strategies is None:
            strategies_for_mode(mode)  # checks the name now, not at the first image
        if max_proposals is not None and (not isinstance(max_proposals, int) or max_proposals < 1):
            raise ValueError(f"max_proposals must be a positive int or None, got {max_proposals!r}")
        if max_side is not None and (not isinstance(max_side, int) or max_side < 2):
            raise ValueError(f"max_side must be an int >= 2 or None, got {max_side!r}")
        self.mode, self.strategies, self.sigma, self.max_side = mode, strategies, float(sigma), max_side
        self.min_box_size, self.max_proposals, self.seed = float(min_box_size), max_proposals, int(seed)
        self.cache_dir = cache_dir
        self._memo: dict[str, Tensor] = {}
        self.searches, self.search_seconds = 0, 0.0

    def _key(self, pixels: np.ndarray) -> str:
        import hashlib

        digest = hashlib.sha1(repr(self).encode())
        digest.update(repr((pixels.shape, str(pixels.dtype))).encode())
        digest.update(np.ascontiguousarray(pixels).tobytes())
        return digest.hexdigest()

    def _lookup(self, key: str) -> Tensor | None:
        if key in self._memo:
            return self._memo[key]
        if self.cache_dir is not None:
            from pathlib import Path

            path = Path(self.cache_dir) / f"{key}.npy"
            if path.is_file():
                self._memo[key] = torch.from_numpy(np.load(path))
                return self._memo[key]
        return None

    def _store(self, key: str, boxes: Tensor) -> None:
        self._memo[key] = boxes
        if self.cache_dir is not None:
            import os
            from pathlib import Path

            folder = Path(self.cache_dir)
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".{key}.{os.getpid()}.npy"
            np.save(temporary, boxes.numpy())
            os.replace(temporary, folder / f"{key}.npy")  # atomic: a reader never sees half a file

    def __call__(self, image) -> Tensor:
        pixels = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        key = self._key(pixels)
        cached = self._lookup(key)
        if cached is not None:
            return cached.clone()
        width = pixels.shape[-1] if isinstance(image, Tensor) else pixels.shape[1]
        mirror = self._lookup(self._key(pixels[..., ::-1] if isinstance(image, Tensor) else pixels[:, ::-1]))
        if mirror is not None:  # x1' = W - x2, x2' = W - x1
            return torch.stack([width - mirror[:, 2], mirror[:, 1], width - mirror[:, 0], mirror[:, 3]], dim=1)
        import time

        start = time.perf_counter()
        boxes = selective_search(image, mode=self.mode, strategies=self.strategies, sigma=self.sigma,
                                 max_side=self.max_side, min_box_size=self.min_box_size, seed=self.seed)
        boxes = boxes[: self.max_proposals] if self.max_proposals is not None else boxes
        self.search_seconds += time.perf_counter() - start
        self.searches += 1
        self._store(key, boxes)
        return boxes.clone()

    def __repr__(self) -> str:
        return (f"SelectiveSearch(mode={self.mode!r}, strategies={self.strategies!r}, sigma={self.sigma}, "
                f"max_side={self.max_side}, min_box_size={self.min_box_size}, max_proposals={self.max_proposals}, "
                f"seed={self.seed})")
