"""Generated images for the tests of finetune.data: odd modes and formats, bad files, header-only bombs."""

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(left, right, width=40, height=20) -> np.ndarray:
    """An RGB image whose left half is `left` and right half is `right`."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = left
    array[:, width // 2 :] = right
    return array


def noisy(size=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png_with_claimed_size(path, width, height):
    """A small PNG whose header claims width x height: a decompression bomb as far as the header goes."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "PNG")
    content = bytearray(buffer.getvalue())
    # IHDR data starts after the 8-byte signature, 4-byte length and 4-byte type.
    content[16:24] = struct.pack(">II", width, height)
    content[29:33] = struct.pack(">I", zlib.crc32(bytes(content[12:29])))
    path.write_bytes(bytes(content))
    return path


def write_odd_images(folder):
    """Valid images in every awkward mode and format, with the RGB pixel each should give at (0, 0) and (0, -1)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    Image.fromarray(np.full((6, 8), 77, np.uint8), "L").save(folder / "gray.png")
    expected["gray.png"] = ((77, 77, 77), (77, 77, 77))

    palette = Image.new("P", (8, 6))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (4, 0, 8, 6))
    palette.save(folder / "palette.png", transparency=0)  # index 0 (black) is transparent
    expected["palette.png"] = (WHITE, RED)

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[:, 4:] = (0, 0, 255, 255)  # left half transparent black, right half opaque blue
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    expected["rgba.png"] = (WHITE, BLUE)

    gray_alpha = np.zeros((6, 8, 2), np.uint8)
    gray_alpha[:, 4:, 1] = 255  # black, transparent on the left, opaque on the right
    Image.fromarray(gray_alpha, "LA").save(folder / "la.png")
    expected["la.png"] = (WHITE, (0, 0, 0))

    Image.new("CMYK", (8, 6), (255, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)  # cyan
    expected["cmyk.jpg"] = ((0, 255, 255), (0, 255, 255))

    sixteen = np.zeros((6, 8), np.uint16)
    sixteen[:, :4], sixteen[:, 4:] = 32896, 65535  # 128 * 257: scaled, not clipped to 255
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    expected["sixteen.png"] = ((128, 128, 128), WHITE)

    one_bit = Image.new("1", (8, 6), 0)
    one_bit.paste(1, (4, 0, 8, 6))
    one_bit.save(folder / "onebit.png")
    expected["onebit.png"] = ((0, 0, 0), WHITE)

    red, blue = Image.fromarray(halves(RED, RED, 8, 6)), Image.fromarray(halves(BLUE, BLUE, 8, 6))
    red.save(folder / "two_frames.gif", save_all=True, append_images=[blue], duration=100)
    expected["two_frames.gif"] = (RED, RED)

    picture = Image.fromarray(halves(RED, BLUE, 8, 6))
    picture.save(folder / "lossless.webp", lossless=True)
    picture.save(folder / "picture.tiff")
    picture.save(folder / "picture.bmp")
    picture.save(folder / "png_named.jpg", format="PNG")  # detected by content
    picture.save(folder / "no_extension", format="PNG")
    for name in ("lossless.webp", "picture.tiff", "picture.bmp", "png_named.jpg", "no_extension"):
        expected[name] = (RED, BLUE)
    return expected


def write_bad_files(folder):
    """Files that must be skipped, each with a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(noisy()).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "text.jpg").write_text("this is a text file with an image's name\n" * 4)
    png_with_claimed_size(folder / "bomb.png", 20000, 20000)
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image", "bomb.png": "megapixels"}
