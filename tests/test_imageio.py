"""Image loading: every input kind users send, generated here, and every way it can be bad."""

from __future__ import annotations

import io
import pickle
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from s2cnet.imageio import DEFAULT_MAX_PIXELS, ImageLoadError, LoadedImage, load_image, open_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT: nothing is allocated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def close(pixel, expected, tol=8) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def reason_of(src, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(src, **kw)
    assert isinstance(info.value, ValueError)
    return info.value.reason


# -- modes ------------------------------------------------------------------------------------------
def test_rgb_jpeg_roundtrip_from_path_bytes_file_and_array(tmp_path):
    im = noise(48, 32)
    data = encode(im, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    expected = np.asarray(im)
    with path.open("rb") as f:
        from_file = load_image(f)
    for got in (load_image(path), load_image(str(path)), load_image(data), load_image(bytearray(data)),
                load_image(memoryview(data)), from_file, load_image(expected)):
        assert got.mode == "RGB" and got.size == (48, 32)
        assert np.array_equal(np.asarray(got), expected)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red ink mix
    im = load_image(data)
    assert im.mode == "RGB" and close(im.getpixel((20, 15)), (255, 0, 0))


def test_cmyk_with_broken_icc_profile_falls_back():
    data = encode(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG", quality=95, icc_profile=b"not a profile" * 20)
    im = load_image(data)
    assert close(im.getpixel((5, 5)), (0, 255, 255)) and "icc_profile" not in im.info


def test_16_bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], np.uint16).repeat(3, axis=0)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    im = load_image(data)
    assert im.mode == "RGB"
    assert [im.getpixel((x, 1)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_rgba_png_composited_on_white():
    a = np.zeros((4, 6, 4), np.uint8)
    a[:, :2] = (255, 0, 0, 0)  # fully transparent red: must show white, not black or red
    a[:, 2:4] = (0, 0, 255, 255)  # opaque blue
    a[:, 4:] = (0, 0, 0, 128)  # half transparent black over white: mid grey
    im = load_image(encode(Image.fromarray(a, "RGBA"), "PNG"))
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((2, 0)) == (0, 0, 255)
    assert close(im.getpixel((5, 0)), (127, 127, 127), tol=2)


def test_la_png_composited_on_white():
    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((3, 3), (0, 255))
    la.putpixel((2, 2), (0, 128))
    im = load_image(encode(la, "PNG"))
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((3, 3)) == (0, 0, 0)
    assert close(im.getpixel((2, 2)), (127, 127, 127), tol=2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composited_on_white(fmt):
    p = Image.new("P", (10, 10), 0)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0: black (transparent), 1: blue
    p.paste(1, (5, 0, 10, 10))
    im = load_image(encode(p, fmt, transparency=0))
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((9, 9)) == (0, 0, 255)


def test_grey_and_bilevel_modes():
    for mode, value, expected in [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255))]:
        im = load_image(encode(Image.new(mode, (5, 5), value), "PNG"))
        assert im.mode == "RGB" and im.getpixel((2, 2)) == expected


@pytest.mark.parametrize("fmt,kw", [("GIF", {"duration": 40, "loop": 0}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animation_gives_first_frame(fmt, kw):
    frames = [Image.new("RGB", (16, 12), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert close(load_image(data).getpixel((3, 3)), (255, 0, 0), tol=2)


def test_pil_image_left_on_a_later_frame_is_rewound():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    src = Image.open(io.BytesIO(encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    src.seek(1)
    assert close(load_image(src).getpixel((1, 1)), (255, 0, 0), tol=2)


# -- orientation ------------------------------------------------------------------------------------
def rotated_jpeg(width: int, height: int, orientation: int) -> bytes:
    """Stored left half red, right half blue, a green block at the stored top-left corner."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2 :] = (0, 0, 255)
    a[: height // 5, : height // 5] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(a), "JPEG", exif=exif, quality=95)


def test_exif_orientation_6_is_rotated_upright():
    im = load_image(rotated_jpeg(40, 20, 6))  # 6: rotate 90 degrees clockwise to view
    assert im.size == (20, 40)
    assert close(im.getpixel((10, 8)), (255, 0, 0), 12)  # stored left half -> upright top half
    assert close(im.getpixel((10, 32)), (0, 0, 255), 12)  # stored right half -> upright bottom half
    assert close(im.getpixel((18, 1)), (0, 255, 0), 12)  # stored top-left -> upright top-right
    again = load_image(im)  # orientation is consumed: loading twice never rotates twice
    assert again.size == (20, 40) and np.array_equal(np.asarray(again), np.asarray(im))


def test_exif_orientation_3_keeps_size():
    im = load_image(rotated_jpeg(40, 20, 3))  # 3: rotate 180
    assert im.size == (40, 20) and close(im.getpixel((38, 18)), (0, 255, 0), 12)


# -- reduced-size decoding --------------------------------------------------------------------------
def test_large_jpeg_is_drafted_and_reports_the_upright_full_size():
    data = encode(noise(2000, 1500), "JPEG", quality=80, exif=_exif(6))
    loaded = open_image(data, target_short_side=256)
    assert isinstance(loaded, LoadedImage)
    assert loaded.original_size == (1500, 2000)  # upright full size, not the stored or decoded size
    assert 256 <= min(loaded.image.size) < 512
    assert loaded.image.size == (375, 500)  # JPEG draft at 1/4
    assert loaded.scale == (4.0, 4.0)
    assert loaded.to_original((0, 0, 375, 500)) == (0, 0, 1500, 2000)
    assert loaded.to_original((10.2, 20, 100, 1000)) == (41, 80, 400, 2000)  # rounded, clipped
    full = open_image(data)
    assert full.image.size == full.original_size == (1500, 2000)


def test_non_jpeg_is_reduced_by_an_integer_factor():
    loaded = open_image(encode(noise(1200, 900), "PNG"), target_short_side=256)
    assert loaded.image.size == (400, 300) and loaded.original_size == (1200, 900)
    small = open_image(encode(noise(300, 200), "PNG"), target_short_side=256)
    assert small.image.size == (300, 200)  # never enlarged


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_rgb_colour_profile_is_kept_and_grey_dropped():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert load_image(encode(noise(8, 8), "JPEG", icc_profile=srgb)).info.get("icc_profile") == srgb
    assert "exif" not in load_image(rotated_jpeg(40, 20, 6)).info


# -- limits -----------------------------------------------------------------------------------------
def test_huge_dimension_header_refused_before_decoding():
    data = png_header(100_000, 100_000)  # 10 gigapixels claimed in 70 bytes
    t0 = time.perf_counter()
    reason = reason_of(data)
    assert time.perf_counter() - t0 < 1.0
    assert "10000.0 megapixels" in reason
    assert "megapixels" in reason_of(data, max_pixels=None)  # Pillow's own guard still holds


def test_pixel_limit_is_ours_and_configurable():
    assert DEFAULT_MAX_PIXELS == 64_000_000
    reason = reason_of(png_header(9000, 8000))  # 72 MP: under Pillow's guard, over ours
    assert "9000x8000" in reason and "72.0 megapixels" in reason and "64.0" in reason
    data = encode(noise(100, 100), "PNG")
    assert "over the limit" in reason_of(data, max_pixels=5000)
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    assert load_image(data, max_pixels=None).size == (100, 100)
    lazy = Image.open(io.BytesIO(data))  # not decoded yet: guarded too
    with pytest.raises(ImageLoadError):
        load_image(lazy, max_pixels=5000)


# -- bad input --------------------------------------------------------------------------------------
def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty" in reason_of(path) and "0 bytes" in reason_of(path)
    assert "empty" in reason_of(b"")
    assert "empty" in reason_of(io.BytesIO(b""))


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list:\n- eggs\n- milk\n")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "looks like text" in info.value.reason
    assert str(path) in str(info.value) and info.value.source == str(path)


def test_truncated_jpeg():
    data = encode(noise(128, 96), "JPEG", quality=90)
    assert "truncated" in reason_of(data[: len(data) // 2])
    assert "JPEG" in reason_of(data[:10]) and "cut short" in reason_of(data[:10])


def test_truncated_png():
    data = encode(noise(64, 64), "PNG")
    assert "truncated" in reason_of(data[: len(data) // 2])


def test_corrupt_png_data():
    data = bytearray(encode(noise(64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 200] = bytes(200)  # zeroed deflate stream
    reason = reason_of(bytes(data))
    assert "PNG" in reason and ("corrupt" in reason or "truncated" in reason)


@pytest.mark.parametrize("data,words", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(40), "HEIC"),
    (b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + bytes(40), "video"),
    (b"PK\x03\x04" + bytes(40), "ZIP"),
    (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    (bytes(range(256)), "not a recognised image format"),
])
def test_unsupported_types_say_what_they_are(data, words):
    assert words in reason_of(data)


def test_missing_file_and_directory(tmp_path):
    assert reason_of(tmp_path / "nope.jpg") == "no such file"
    assert "directory" in reason_of(tmp_path)


def test_wrong_python_type_and_bad_arrays():
    assert "dict" in reason_of({"not": "an image"})
    assert "uint8" in reason_of(np.zeros((4, 4, 3), np.float32))
    assert "uint8" in reason_of(np.zeros((4, 4, 2), np.uint8))


def test_error_is_a_value_error_and_pickles():
    err = ImageLoadError("truncated JPEG image", "a.jpg")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ValueError) and back.reason == err.reason and back.source == "a.jpg"
    assert str(back) == "a.jpg: truncated JPEG image"
