"""Tiny numpy drawing helpers for the envs' rgb_array frames (no pygame, no cv2)."""

from __future__ import annotations

import numpy as np

Colour = tuple[int, int, int]

# 3x5 bitmap digits, rows top to bottom, "1" = lit.
_DIGITS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
}
_GLYPHS = {d: np.array([[c == "1" for c in row] for row in rows]) for d, rows in _DIGITS.items()}


def blank_frame(height: int, width: int, colour: Colour) -> np.ndarray:
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = colour
    return frame


def fill_rect(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: Colour) -> None:
    """Fill pixels [x0, x1) x [y0, y1), clipped to the frame."""
    h, w = frame.shape[:2]
    x0, x1 = max(0, x0), min(w, x1)
    y0, y1 = max(0, y0), min(h, y1)
    if x0 < x1 and y0 < y1:
        frame[y0:y1, x0:x1] = colour


def draw_number(frame: np.ndarray, value: int, x: int, y: int, colour: Colour, scale: int = 2) -> None:
    """Draw a non-negative integer with its top-left corner at (x, y), each font pixel scale x scale."""
    for i, ch in enumerate(str(max(0, int(value)))):
        glyph = np.kron(_GLYPHS[ch], np.ones((scale, scale), dtype=bool))
        gx = x + i * 4 * scale
        h, w = glyph.shape
        region = frame[y:y + h, gx:gx + w]
        region[glyph[:region.shape[0], :region.shape[1]]] = colour
