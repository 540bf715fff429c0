"""A user's digit image -> a 28x28 MNIST-style digit, made the way MNIST's were (Pillow + numpy).

LeCun et al.: the digits were size-normalised to fit a 20x20 box, keeping their
aspect ratio (anti-aliased, hence grey levels), then centred in a 28x28 image by
their centre of mass. MNIST ink is light on a dark background, so a dark digit on
light paper is inverted first.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import IMAGE_SIDE


class ImageError(ValueError):
    """An input image that cannot be made into a digit (one-line message naming the file)."""


# The box the digit's longer side is scaled to, and where its centre of mass goes:
# measured on the real MNIST test digits, ink spans exactly 20 pixels on the longer
# side and the centre of mass sits at (14.0, 14.0) +- 0.3 in array indices.
BOX = 20
CENTRE = 14
# Refuse images above this many pixels before decoding them: a digit photo needs
# far fewer, and a small compressed file can decode to gigabytes (a decompression
# bomb). Pillow's own limit (Image.MAX_IMAGE_PIXELS, ~89 Mpx) is much higher.
MAX_PIXELS = 40_000_000
# Modes Pillow turns into 8-bit grey without guessing a value range; 16-bit, float
# and colour-space modes (I;16, I, F, CMYK, YCbCr, LAB, HSV) are refused.
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
# Ink is what differs from the background by more than this fraction of the
# darkest-to-lightest range: paper texture and JPEG ringing stay below it.
INK_THRESHOLD = 0.2
# Ink spanning fewer pixels than this either way is a dot: scaled into the box it would become a solid square.
MIN_SPAN = 3
# An image whose grey levels span less than this (of 0..1) has no digit in it.
MIN_CONTRAST = 0.1
# Solid ink: pixels at half intensity or more. Every MNIST digit has 15 to 312 of
# them (measured over all 70,000), never a filled 20x20 box; more than MAX_SOLID
# means ink fills the box (a filled shape, or noise), not strokes.
SOLID = 128
MAX_SOLID = 340


def load_gray(path: Path) -> np.ndarray:
    """(H, W) float grey levels in [0, 1] of an image file (transparency composited on white)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_header(path, im)
                im.load()
                return _to_gray(ImageOps.exif_transpose(im))  # a phone photo's rotation, applied
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except OSError as e:  # a truncated or otherwise broken file, or one we cannot open
        raise ImageError(f"{path}: cannot read the image ({e.strerror or e})") from None
    except (ValueError, SyntaxError) as e:  # Pillow's refusals of malformed chunks and headers
        raise ImageError(f"{path}: cannot read the image ({e})") from None
    except Exception as e:  # a malformed file trips a decoder in other ways too (a TIFF tag's TypeError)
        raise ImageError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None


def _check_header(path: Path, im: Image.Image) -> None:
    """Size and mode, from the header alone, before any pixel is decoded."""
    w, h = im.size
    if w * h == 0:
        raise ImageError(f"{path}: empty image ({w}x{h} pixels)")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{path}: {w}x{h} pixels is more than the {MAX_PIXELS:,} accepted "
                         f"(possible decompression bomb)")
    if im.mode not in MODES:
        raise ImageError(f"{path}: unsupported image mode {im.mode!r}; save it as 8-bit grey or RGB "
                         f"(one of {', '.join(MODES)})")


def _to_gray(im: Image.Image) -> np.ndarray:
    if im.mode in ("LA", "PA", "RGBA") or (im.mode == "P" and "transparency" in im.info):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return np.asarray(im.convert("L"), dtype=np.float64) / 255


def ink(gray: np.ndarray, name: str) -> np.ndarray:
    """(H, W) ink in [0, 1], high where the digit is, whether it was dark on light or light on dark.

    The background is the median of the image's border; a light background means
    a dark digit, which is inverted.
    """
    lo, hi = gray.min(), gray.max()
    if hi - lo < MIN_CONTRAST:
        raise ImageError(f"{name}: blank image (grey levels span only {hi - lo:.3f}); no digit found")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = np.median(border)
    if background > (lo + hi) / 2:  # light paper: dark ink
        gray, background = 1 - gray, 1 - background
    return np.clip((gray - background) / (gray.max() - background), 0, 1)


def crop_to_ink(ink_: np.ndarray, name: str) -> np.ndarray:
    """The smallest rectangle holding every pixel above INK_THRESHOLD; fainter pixels (paper texture) set to 0."""
    inked = ink_ > INK_THRESHOLD
    rows, cols = np.flatnonzero(inked.any(1)), np.flatnonzero(inked.any(0))
    if not len(rows):
        raise ImageError(f"{name}: blank image; no digit found")
    crop = ink_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if max(crop.shape) < MIN_SPAN:
        raise ImageError(f"{name}: does not look like a digit: its ink spans only {crop.shape[0]}x{crop.shape[1]} "
                         f"pixel(s) (a dot, not strokes)")
    # A stroke is at least as many pixels as the longer side of the box it spans (a
    # one-pixel line across it); fewer are specks scattered over a page, not a digit.
    if inked.sum() < max(crop.shape):
        raise ImageError(f"{name}: does not look like a digit: {inked.sum()} pixel(s) of ink scattered over "
                         f"{crop.shape[0]}x{crop.shape[1]} (specks, not strokes)")
    return np.where(crop > INK_THRESHOLD, crop, 0)


def fit_box(digit: np.ndarray) -> np.ndarray:
    """Scale so the longer side is BOX pixels, keeping the aspect ratio (anti-aliased)."""
    h, w = digit.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    im = Image.fromarray(digit.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(im, dtype=np.float64), 0, 1)


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """(28, 28): the digit placed so its centre of mass lands on pixel (CENTRE, CENTRE)."""
    h, w = digit.shape
    ys, xs = np.mgrid[:h, :w]
    mass = digit.sum()
    cy, cx = (digit * ys).sum() / mass, (digit * xs).sum() / mass
    top = int(np.clip(round(CENTRE - cy), 0, IMAGE_SIDE - h))  # never push ink out of the frame
    left = int(np.clip(round(CENTRE - cx), 0, IMAGE_SIDE - w))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE))
    out[top:top + h, left:left + w] = digit
    return out


def check_strokes(digit: np.ndarray, name: str) -> np.ndarray:
    """The (28, 28) uint8 digit, or ImageError when ink fills its box instead of drawing strokes."""
    solid = int((digit >= SOLID).sum())
    if solid > MAX_SOLID:
        raise ImageError(f"{name}: does not look like a digit: scaled into MNIST's 20x20 box, ink fills it "
                         f"({solid} pixels of solid ink; MNIST's digits have 15 to 312)")
    return digit


def to_mnist(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W) grey levels in [0, 1] -> (28, 28) uint8 MNIST-style digit (light ink on black).

    The result is scaled so its brightest pixel is 255, as in every MNIST digit
    (their maxima are 254-255: they came from black-and-white scans); otherwise a
    digit drawn with a thin pen fades to a faint grey in the 20x20 box.
    """
    digit = centre_by_mass(fit_box(crop_to_ink(ink(gray, name), name)))
    if digit.max() <= 0:
        raise ImageError(f"{name}: blank image; no digit found")
    return check_strokes(np.round(digit / digit.max() * 255).astype(np.uint8), name)


def preprocess(path: Path) -> np.ndarray:
    """An image file -> (28, 28) uint8 MNIST-style digit; ImageError naming the file if it has none."""
    return to_mnist(load_gray(path), str(path))
