"""image_codec: Image/CompressedImage <-> numpy on real sensor_msgs messages."""

from __future__ import annotations

import array
import sys

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.time import Time as RclpyTime
from sensor_msgs.msg import CompressedImage, Image

from grrl_common.image_codec import (
    ENCODINGS,
    ImageCodecError,
    compressed_to_numpy,
    flip_horizontal,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
)

HOST_BIG = sys.byteorder == "big"
ALL = list(ENCODINGS)


def random_image(encoding: str, height: int = 7, width: int = 5, seed: int = 0) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


def padded_message(expected: np.ndarray, encoding: str, pad: int) -> Image:
    """Build by hand a message whose rows carry `pad` junk bytes after the pixels."""
    height, width = expected.shape[:2]
    row = expected[0].nbytes
    rng = np.random.default_rng(1)
    rows = [expected[r].tobytes() + rng.bytes(pad) for r in range(height)]
    msg = Image(height=height, width=width, encoding=encoding, step=row + pad)
    msg.is_bigendian = HOST_BIG
    msg.data = b"".join(rows)
    return msg


def data_view(msg: Image | CompressedImage) -> np.ndarray:
    return np.frombuffer(msg.data, dtype=np.uint8)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize("encoding", ALL)
def test_round_trip_every_encoding(encoding):
    expected = random_image(encoding)
    msg = numpy_to_image(expected, encoding, stamp=Time(sec=3, nanosec=4), frame_id="cam")
    dtype, channels = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding) == (7, 5, encoding)
    assert msg.step == 5 * channels * dtype.itemsize
    assert len(msg.data) == msg.step * msg.height
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"  # rclpy's own type
    assert msg.is_bigendian == HOST_BIG
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (3, 4, "cam")
    out = image_to_numpy(msg)
    assert out.dtype == dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding", ALL)
def test_empty_image_round_trips(encoding):
    empty = random_image(encoding, height=0, width=4)
    msg = numpy_to_image(empty, encoding)
    assert len(msg.data) == 0 and msg.height == 0
    assert image_to_numpy(msg).shape == empty.shape


@pytest.mark.parametrize("encoding", ALL)
def test_padded_rows_decode_as_strided_view(encoding):
    expected = random_image(encoding, height=6, width=9, seed=2)
    msg = padded_message(expected, encoding, pad=6)
    assert msg.step > msg.width * expected[0, 0].nbytes
    out = image_to_numpy(msg)
    np.testing.assert_array_equal(out, expected)
    assert out.strides[0] == msg.step
    assert np.shares_memory(out, data_view(msg))  # no copy despite the padding


def test_unpadded_rgb8_is_a_view_on_message_data():
    msg = numpy_to_image(random_image("rgb8"), "rgb8")
    out = image_to_numpy(msg)
    assert np.shares_memory(out, data_view(msg))
    # Writing through the view changes the message: fails for any copy.
    before = msg.data[0]
    out[0, 0, 0] = 255 - before
    assert msg.data[0] == 255 - before


def test_trailing_bytes_beyond_step_times_height_are_ignored():
    expected = random_image("mono8")
    msg = numpy_to_image(expected, "mono8")
    msg.data.extend(b"\x00" * 10)
    np.testing.assert_array_equal(image_to_numpy(msg), expected)


def test_bytes_data_is_accepted():
    expected = random_image("bgr8")
    msg = numpy_to_image(expected, "bgr8")
    msg._data = bytes(msg.data)  # a bytes-backed message, bypassing the array.array setter
    out = image_to_numpy(msg)
    np.testing.assert_array_equal(out, expected)
    assert not out.flags.writeable


def test_16uc1_big_endian_message_decodes_to_the_right_values():
    values = np.array([[0x0102, 1000, 65535], [0, 1, 0xABCD]], dtype=np.uint16)
    msg = Image(height=2, width=3, encoding="16UC1", step=6, is_bigendian=True)
    msg.data = values.astype(">u2").tobytes()
    assert msg.data[0:2].tobytes() == b"\x01\x02"
    out = image_to_numpy(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    assert int(out[0, 0]) == 258

    msg.is_bigendian = False
    msg.data = values.astype("<u2").tobytes()
    np.testing.assert_array_equal(image_to_numpy(msg), values)


def test_16uc1_big_endian_padded_rows():
    values = random_image("16UC1", height=4, width=3, seed=5)
    msg = padded_message(values.astype(">u2"), "16UC1", pad=2)
    msg.is_bigendian = True
    np.testing.assert_array_equal(image_to_numpy(msg), values)


def test_numpy_to_image_records_a_foreign_byte_order():
    values = random_image("16UC1")
    foreign = values.astype(">u2" if not HOST_BIG else "<u2")
    msg = numpy_to_image(foreign, "16UC1")
    assert msg.is_bigendian == (not HOST_BIG)
    np.testing.assert_array_equal(image_to_numpy(msg), values)


def test_rclpy_time_stamp_is_accepted():
    msg = numpy_to_image(random_image("mono8"), "mono8", stamp=RclpyTime(nanoseconds=5_000_000_007))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 7)


@pytest.mark.parametrize("pad", [0, 4])
def test_serialized_through_dds_format(pad):
    expected = random_image("rgb8", height=5, width=8, seed=3)
    msg = padded_message(expected, "rgb8", pad) if pad else numpy_to_image(expected, "rgb8")
    msg.header.frame_id = "head_camera"
    wire = serialize_message(msg)
    assert isinstance(wire, bytes) and len(wire) > len(msg.data)
    received = deserialize_message(wire, Image)
    assert received.header.frame_id == "head_camera"
    assert received.step == msg.step
    out = image_to_numpy(received)
    np.testing.assert_array_equal(out, expected)
    assert np.shares_memory(out, data_view(received))


# --- bad inputs ---------------------------------------------------------------------------


def test_unknown_encoding():
    msg = numpy_to_image(random_image("rgb8"), "rgb8")
    msg.encoding = "yuv422"
    with pytest.raises(ImageCodecError) as excinfo:
        image_to_numpy(msg)
    assert "yuv422" in one_line_error(excinfo)
    with pytest.raises(ImageCodecError) as excinfo:
        numpy_to_image(random_image("rgb8"), "32FC1")
    assert "32FC1" in one_line_error(excinfo)


def test_short_data():
    msg = numpy_to_image(random_image("rgb8"), "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(ImageCodecError) as excinfo:
        image_to_numpy(msg)
    assert "fewer than step*height" in one_line_error(excinfo)


def test_step_too_small():
    msg = numpy_to_image(random_image("16UC1"), "16UC1")
    msg.step = msg.width  # bytes, but 16UC1 needs 2 per pixel
    with pytest.raises(ImageCodecError) as excinfo:
        image_to_numpy(msg)
    assert "step" in one_line_error(excinfo)


@pytest.mark.parametrize(
    ("array", "encoding", "needle"),
    [
        (np.zeros((4, 5, 3), np.float32), "rgb8", "dtype"),
        (np.zeros((4, 5), np.uint8), "16UC1", "dtype"),
        (np.zeros((4, 5), np.int16), "16UC1", "dtype"),
        (np.zeros((4, 5), np.uint8), "rgb8", "shaped"),
        (np.zeros((4, 5, 3), np.uint8), "rgba8", "shaped"),
        (np.zeros((4, 5, 1), np.uint8), "mono8", "shaped"),
        (np.zeros((4, 5, 3), np.uint8)[:, ::2], "rgb8", "C-contiguous"),
        ([[0, 1], [2, 3]], "mono8", "numpy array"),
    ],
)
def test_numpy_to_image_rejects_bad_arrays(array, encoding, needle):
    with pytest.raises(ImageCodecError) as excinfo:
        numpy_to_image(array, encoding)
    assert needle in one_line_error(excinfo)


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 40, b"\x89PNG\r\n"]
)
def test_corrupt_compressed_bytes(data):
    msg = CompressedImage(format="jpeg")
    msg.data = data
    with pytest.raises(ImageCodecError) as excinfo:
        compressed_to_numpy(msg)
    one_line_error(excinfo)


def test_truncated_jpeg_is_rejected():
    good = numpy_to_compressed(random_image("rgb8", 32, 32), "rgb8", "jpeg")
    msg = CompressedImage(format=good.format)
    msg.data = good.data[: len(good.data) // 4]
    with pytest.raises(ImageCodecError) as excinfo:
        compressed_to_numpy(msg)
    one_line_error(excinfo)


def test_compression_misuse():
    with pytest.raises(ImageCodecError) as excinfo:
        numpy_to_compressed(random_image("rgba8"), "rgba8", "jpeg")
    assert "png" in one_line_error(excinfo)
    with pytest.raises(ImageCodecError) as excinfo:
        numpy_to_compressed(random_image("16UC1"), "16UC1", "jpeg")
    one_line_error(excinfo)
    with pytest.raises(ImageCodecError) as excinfo:
        numpy_to_compressed(random_image("rgb8"), "rgb8", "webp")
    assert "webp" in one_line_error(excinfo)
    png16 = numpy_to_compressed(random_image("16UC1"), "16UC1", "png")
    with pytest.raises(ImageCodecError) as excinfo:
        compressed_to_numpy(png16, want="rgb8")  # would need rescaling
    one_line_error(excinfo)
    png8 = numpy_to_compressed(random_image("mono8"), "mono8", "png")
    with pytest.raises(ImageCodecError):
        compressed_to_numpy(png8, want="16UC1")


# --- compressed ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ALL)
def test_png_round_trip_is_exact(encoding):
    expected = random_image(encoding, height=12, width=10, seed=4)
    msg = numpy_to_compressed(expected, encoding, "png", frame_id="f", stamp=Time(sec=1))
    assert msg.format.startswith(f"{encoding}; png compressed ")
    assert msg.header.frame_id == "f" and msg.header.stamp.sec == 1
    assert bytes(msg.data[:4]) == b"\x89PNG"
    out = compressed_to_numpy(msg, want=encoding)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def gradient(height: int = 120, width: int = 160) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
        axis=-1,
    ).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_jpeg_round_trip_is_close(encoding):
    expected = gradient()
    msg = numpy_to_compressed(expected, encoding, "jpeg", quality=90)
    assert msg.format == f"{encoding}; jpeg compressed bgr8"
    assert bytes(msg.data[:2]) == b"\xff\xd8"
    out = compressed_to_numpy(msg, want=encoding)
    assert out.shape == expected.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 3


def test_jpeg_keeps_colour_order():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255  # pure red in rgb8
    msg = numpy_to_compressed(red, "rgb8", "jpeg")
    rgb = compressed_to_numpy(msg, want="rgb8")
    assert rgb[..., 0].mean() > 240 and rgb[..., 2].mean() < 15
    bgr = compressed_to_numpy(msg, want="bgr8")
    np.testing.assert_array_equal(bgr, rgb[..., ::-1])


def test_mono8_jpeg_and_decoding_to_other_layouts():
    gray = gradient()[..., 0].copy()
    msg = numpy_to_compressed(gray, "mono8", "jpeg")
    out = compressed_to_numpy(msg, want="mono8")
    assert out.shape == gray.shape
    assert np.abs(out.astype(int) - gray.astype(int)).mean() < 3
    png = numpy_to_compressed(gray, "mono8", "png")
    rgb = compressed_to_numpy(png, want="rgb8")
    assert rgb.shape == (*gray.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)
    rgba = numpy_to_compressed(random_image("rgba8"), "rgba8", "png")
    assert compressed_to_numpy(rgba, want="rgb8").shape == (7, 5, 3)


def test_compressed_survives_serialization():
    expected = random_image("rgb8", 20, 30)
    msg = numpy_to_compressed(expected, "rgb8", "png")
    received = deserialize_message(serialize_message(msg), CompressedImage)
    assert received.format == msg.format
    np.testing.assert_array_equal(compressed_to_numpy(received), expected)


# --- flip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "16UC1"])
def test_flip_horizontal_is_a_view(encoding):
    image = random_image(encoding)
    flipped = flip_horizontal(image)
    np.testing.assert_array_equal(flipped, np.fliplr(image))
    assert np.shares_memory(flipped, image)
    np.testing.assert_array_equal(flip_horizontal(flipped), image)
    with pytest.raises(ImageCodecError):
        numpy_to_image(flipped, encoding)  # a view must be made contiguous first
    msg = numpy_to_image(np.ascontiguousarray(flipped), encoding)
    np.testing.assert_array_equal(image_to_numpy(msg)[:, ::-1], image)
    with pytest.raises(ImageCodecError):
        flip_horizontal(np.zeros(3, np.uint8))
