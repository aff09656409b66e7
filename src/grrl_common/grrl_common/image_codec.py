"""Conversions between ROS 2 image messages and numpy arrays (the grrl stand-in for cv_bridge).

ROS 2's cv_bridge is not available in this workspace and the PyPI ``cv-bridge`` is a ROS 1 port
that breaks on numpy 2, so every node that touches images goes through this module.

Supported raw encodings: ``rgb8``, ``bgr8``, ``rgba8`` (H×W×C uint8), ``mono8`` (H×W uint8) and
``16UC1`` (H×W uint16, e.g. depth in millimetres). Compressed images go through OpenCV.
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

__all__ = [
    "ENCODINGS",
    "ImageCodecError",
    "compressed_to_numpy",
    "flip_horizontal",
    "image_to_numpy",
    "numpy_to_compressed",
    "numpy_to_image",
]


class ImageCodecError(ValueError):
    """An image message or array that cannot be converted; the message is one readable line."""

    def __init__(self, message: str) -> None:
        # Callers log these; a multi-line message (e.g. from cv2.error) would break log lines.
        super().__init__(" ".join(str(message).split()))


# encoding -> (numpy dtype, channels); channels == 1 means an H×W array without a channel axis.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
}

_HOST_BIG_ENDIAN = sys.byteorder == "big"


def _spec(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        known = ", ".join(ENCODINGS)
        raise ImageCodecError(
            f"unsupported image encoding {encoding!r} (supported: {known})"
        ) from None


def _shape(height: int, width: int, channels: int) -> tuple[int, ...]:
    return (height, width) if channels == 1 else (height, width, channels)


def _set_header(msg: Image | CompressedImage, stamp: Any, frame_id: str) -> None:
    if stamp is not None:
        # Accept an rclpy.time.Time as well as a builtin_interfaces Time message.
        msg.header.stamp = stamp.to_msg() if hasattr(stamp, "to_msg") else stamp
        if not isinstance(msg.header.stamp, Time):
            raise ImageCodecError(f"stamp must be a Time message or rclpy Time, not {stamp!r}")
    msg.header.frame_id = frame_id


def _fill_data(msg: Image | CompressedImage, array: np.ndarray) -> None:
    """Copy a C-contiguous array's bytes into ``msg.data`` with one memcpy (~17 us for VGA rgb8).

    rclpy keeps uint8[] fields as ``array.array('B')``. Assigning to the field goes through the
    generated setter, which copies once more into a freshly allocated array (measured 30-700 us
    for VGA, depending on allocator state) or, with ROS_PYTHON_CHECK_FIELDS set and bytes
    assigned, validates every element in Python (~40 ms). Extending the new message's own empty
    array in place is a single copy either way.
    ``frombytes`` wants a flat byte buffer, hence the cast of the array's memoryview.
    """
    data = msg.data
    del data[:]  # a new message's array is empty; this keeps the helper correct regardless
    if array.size:  # memoryview.cast refuses shapes with a zero in them
        data.frombytes(memoryview(array).cast("B"))


def image_to_numpy(msg: Image) -> np.ndarray:
    """Return a numpy view over ``msg.data`` (no copy), shaped H×W×C or H×W.

    The view shares memory with the message: writing to it writes into the message, and while
    it lives the message's array.array cannot be resized. Rows padded past ``width`` (``step``
    larger than a packed row) give a strided, non-contiguous view. The one copy made is for a
    16UC1 image whose ``is_bigendian`` differs from the host, which is byte-swapped.
    """
    dtype, channels = _spec(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageCodecError(
            f"{msg.encoding} image step {step} is smaller than width*bytes_per_pixel = "
            f"{width}*{channels * dtype.itemsize} = {row_bytes}"
        )
    try:
        # rclpy stores array.array('B'); any bytes-like object (bytes, memoryview) works too.
        data = memoryview(msg.data)
    except TypeError:
        # A plain sequence of ints cannot be viewed; a copy is the only option.
        data = memoryview(np.asarray(msg.data, dtype=np.uint8))
    if data.nbytes < step * height:
        raise ImageCodecError(
            f"{msg.encoding} image data has {data.nbytes} bytes, fewer than "
            f"step*height = {step}*{height} = {step * height}"
        )
    flat = np.frombuffer(data, dtype=np.uint8, count=step * height)
    # Rows of `step` bytes, cut to the packed row: a view with row stride `step`, byte stride 1.
    rows = flat.reshape(height, step)[:, :row_bytes]
    if dtype.itemsize > 1:
        # Reinterpret each row's bytes as uint16 (legal on a view whose last axis is contiguous).
        wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
        rows = rows.view(wire)
    out = rows.reshape(_shape(height, width, channels))  # splits the last axis: still a view
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != _HOST_BIG_ENDIAN:
        # Foreign byte order: swap into a native-order copy so arithmetic sees the right values.
        out = out.astype(dtype)
    elif dtype.itemsize > 1:
        out = out.view(dtype)  # same bytes, dtype spelled natively ('<u2' == '=u2' on x86)
    return out


def _check_array(array: np.ndarray, encoding: str) -> np.dtype:
    dtype, channels = _spec(encoding)
    if not isinstance(array, np.ndarray):
        raise ImageCodecError(f"expected a numpy array for {encoding}, got {type(array).__name__}")
    # Any byte order of the right kind and size is accepted; is_bigendian records which.
    if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        raise ImageCodecError(f"{encoding} needs dtype {dtype}, got {array.dtype}")
    ok_shape = array.ndim == 2 if channels == 1 else array.ndim == 3 and array.shape[2] == channels
    if not ok_shape:
        want = "H×W" if channels == 1 else f"H×W×{channels}"
        raise ImageCodecError(f"{encoding} needs an array shaped {want}, got {array.shape}")
    return dtype


def numpy_to_image(
    array: np.ndarray, encoding: str, stamp: Any = None, frame_id: str = ""
) -> Image:
    """Build an Image message from a C-contiguous array (one memcpy of the pixels).

    ``stamp`` is a builtin_interfaces Time or an rclpy Time; left unset when None.
    Non-contiguous arrays (e.g. from :func:`flip_horizontal`) are refused rather than copied
    silently: pass ``np.ascontiguousarray(array)``.
    """
    _check_array(array, encoding)
    if not array.flags.c_contiguous:
        raise ImageCodecError(
            f"{encoding} array must be C-contiguous (use np.ascontiguousarray), "
            f"got strides {array.strides}"
        )
    msg = Image()
    _set_header(msg, stamp, frame_id)
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    byteorder = array.dtype.byteorder
    msg.is_bigendian = byteorder == ">" or (byteorder in "=|" and _HOST_BIG_ENDIAN)
    # Packed rows: step is the row size in bytes (contiguity was checked above).
    channels = array.shape[2] if array.ndim == 3 else 1
    msg.step = msg.width * channels * array.itemsize
    _fill_data(msg, array)
    return msg


# What to do with each decoded OpenCV layout for each requested encoding: a cv2 conversion
# code, None to keep it as is. Keys: (decoded channels, wanted encoding).
_DECODE_CONVERSIONS: dict[tuple[int, str], int | None] = {
    (1, "rgb8"): cv2.COLOR_GRAY2RGB,
    (1, "bgr8"): cv2.COLOR_GRAY2BGR,
    (1, "rgba8"): cv2.COLOR_GRAY2RGBA,
    (1, "mono8"): None,
    (1, "16UC1"): None,
    (3, "rgb8"): cv2.COLOR_BGR2RGB,
    (3, "bgr8"): None,
    (3, "rgba8"): cv2.COLOR_BGR2RGBA,
    (3, "mono8"): cv2.COLOR_BGR2GRAY,
    (4, "rgb8"): cv2.COLOR_BGRA2RGB,
    (4, "bgr8"): cv2.COLOR_BGRA2BGR,
    (4, "rgba8"): cv2.COLOR_BGRA2RGBA,
    (4, "mono8"): cv2.COLOR_BGRA2GRAY,
}

# encoding -> (conversion to OpenCV's BGR order or None, layout named in the format string)
_ENCODE_CONVERSIONS: dict[str, tuple[int | None, str]] = {
    "rgb8": (cv2.COLOR_RGB2BGR, "bgr8"),
    "bgr8": (None, "bgr8"),
    "rgba8": (cv2.COLOR_RGBA2BGRA, "bgra8"),
    "mono8": (None, "mono8"),
    "16UC1": (None, "16UC1"),
}


def compressed_to_numpy(msg: CompressedImage, want: str = "rgb8") -> np.ndarray:
    """Decode a CompressedImage (JPEG or PNG, detected from the bytes) into a new array.

    ``want`` is the encoding of the result; colour is converted from OpenCV's BGR as needed.
    Bit depth is never rescaled: a 16-bit PNG decodes only to 16UC1, 8-bit images not to it.
    """
    want_dtype, _ = _spec(want)
    try:
        raw = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    except TypeError:
        raw = np.asarray(msg.data, dtype=np.uint8)
    if raw.size == 0:
        raise ImageCodecError(f"compressed image ({msg.format!r}) has no data")
    try:
        decoded = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageCodecError(f"cannot decode compressed image ({msg.format!r}): {exc}") from exc
    if decoded is None:
        raise ImageCodecError(
            f"cannot decode compressed image ({msg.format!r}, {raw.size} bytes): "
            "not a valid JPEG/PNG"
        )
    if decoded.dtype != want_dtype:
        raise ImageCodecError(
            f"compressed image ({msg.format!r}) decodes to {decoded.dtype}, "
            f"which does not convert to {want} without rescaling"
        )
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    try:
        code = _DECODE_CONVERSIONS[(channels, want)]
    except KeyError:
        raise ImageCodecError(
            f"compressed image ({msg.format!r}) has {channels} channels, cannot make {want}"
        ) from None
    return decoded if code is None else cv2.cvtColor(decoded, code)


def numpy_to_compressed(
    array: np.ndarray,
    encoding: str = "rgb8",
    fmt: str = "jpeg",
    quality: int = 90,
    stamp: Any = None,
    frame_id: str = "",
) -> CompressedImage:
    """Encode an array as a JPEG or PNG CompressedImage.

    ``quality`` (0-100) applies to JPEG only; PNG is lossless. JPEG cannot carry alpha or 16-bit
    samples, so rgba8 and 16UC1 need ``fmt="png"``. ``format`` follows image_transport's
    convention, e.g. ``"rgb8; jpeg compressed bgr8"``: source encoding, codec, stored layout.
    """
    dtype = _check_array(array, encoding)
    if fmt not in ("jpeg", "png"):
        raise ImageCodecError(f"unsupported compression format {fmt!r} (use 'jpeg' or 'png')")
    if fmt == "jpeg" and encoding in ("rgba8", "16UC1"):
        # OpenCV would silently drop alpha or truncate 16-bit samples to 8 bits.
        raise ImageCodecError(f"jpeg cannot store {encoding} losslessly in layout; use png")
    if fmt == "jpeg" and not 0 <= quality <= 100:
        raise ImageCodecError(f"jpeg quality must be in 0..100, got {quality}")
    code, stored = _ENCODE_CONVERSIONS[encoding]
    image = array if code is None else cv2.cvtColor(array, code)
    if image.dtype != dtype:
        image = image.astype(dtype)  # OpenCV wants native byte order
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    try:
        ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", image, params)
    except cv2.error as exc:
        raise ImageCodecError(f"cannot encode {encoding} image as {fmt}: {exc}") from exc
    if not ok:
        raise ImageCodecError(f"cannot encode {encoding} image as {fmt}")
    msg = CompressedImage()
    _set_header(msg, stamp, frame_id)
    msg.format = f"{encoding}; {fmt} compressed {stored}"
    _fill_data(msg, encoded)
    return msg


def flip_horizontal(array: np.ndarray) -> np.ndarray:
    """Mirror an H×W or H×W×C image left-right as a view (no copy; not C-contiguous)."""
    if array.ndim < 2:
        raise ImageCodecError(f"flip_horizontal needs an H×W[×C] array, got shape {array.shape}")
    return array[:, ::-1]
