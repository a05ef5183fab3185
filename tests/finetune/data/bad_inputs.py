"""A data set of good images mixed with every bad input the README names, and what each should become.

`VALID` and `damaged_images` are the seeds and mutations of the fuzz tests.

`write_bad_input_folder(root)` writes root/cat/ and root/dog/ with good images, and among them
odd but valid images (converted), broken files (skipped with a reason), hidden files (ignored),
links that loop and an unreadable file. `EXPECTED` says what happens to each, by file name.
"""

import builtins
import contextlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import class_image
from tests.finetune.data.images import BLUE, RED, halves, png_with_claimed_size

# A word the reason of each skipped file must contain.
SKIPPED = {
    "truncated.jpg": "truncated",
    "zero.jpg": "empty",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "bomb.jpg": "decompression bomb",
    "bomb.tiff": "decompression bomb",
    "loop_a.jpg": "link that loops",
    "loop_b.jpg": "link that loops",
    "folder_loop": "link to a folder",
    "unreadable.png": "no permission to read",
}
# Valid images in awkward modes and formats: converted to 8-bit RGB and trained on.
CONVERTED = (
    "cmyk.jpg", "sixteen.png", "rgba.png", "palette.png", "exif_rotated.jpg", "animated.gif", "picture.bmp",
    "picture.webp", "picture.tiff", "one_pixel.png", "été_猫.png",
)
# Neither trained on nor reported: the system's files, not the user's images.
IGNORED = (".hidden.png", ".DS_Store", "Thumbs.db", ".thumbnails")
GOOD_PER_CLASS = 6


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def jpeg_with_claimed_size(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header (SOF0) claims width x height pixels."""
    content = bytearray(_jpeg_bytes(Image.new("RGB", (16, 16), RED)))
    start = content.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    content[start + 5 : start + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(content))
    return path


def tiff_with_claimed_size(path: Path, width: int, height: int) -> Path:
    """A small uncompressed TIFF whose ImageWidth and ImageLength tags claim width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "TIFF")
    content = bytearray(buffer.getvalue())
    (directory,) = struct.unpack("<I", content[4:8])
    (count,) = struct.unpack("<H", content[directory : directory + 2])
    for entry in range(directory + 2, directory + 2 + 12 * count, 12):
        tag, kind = struct.unpack("<HH", content[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: rewritten as LONG values
            content[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    path.write_bytes(bytes(content))
    return path


def write_odd_and_bad_files(folder: Path) -> None:
    """Every entry of SKIPPED (bar the unreadable file), CONVERTED and IGNORED, into `folder`."""
    picture = Image.fromarray(halves(RED, BLUE))
    complete = _jpeg_bytes(Image.fromarray(class_image(0, 99)))
    (folder / "truncated.jpg").write_bytes(complete[: len(complete) // 2])  # a download cut off half-way
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("a text file with an image's name\n" * 4)
    png_with_claimed_size(folder / "bomb.png", 20000, 20000)
    jpeg_with_claimed_size(folder / "bomb.jpg", 60000, 60000)
    tiff_with_claimed_size(folder / "bomb.tiff", 100000, 100000)
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    os.symlink(".", folder / "folder_loop")  # a link to its own folder: walking into it never ends

    Image.new("CMYK", (40, 20), (255, 0, 0, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((20, 40), 40000, np.uint16)).save(folder / "sixteen.png")
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[:, 20:] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    palette = Image.new("P", (40, 20))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (20, 0, 40, 20))
    palette.save(folder / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (folder / "exif_rotated.jpg").write_bytes(_jpeg_bytes(picture, exif=exif))
    first, second = Image.fromarray(halves(RED, RED)), Image.fromarray(halves(BLUE, BLUE))
    first.save(folder / "animated.gif", save_all=True, append_images=[second], duration=100, loop=0)
    picture.save(folder / "picture.bmp")
    picture.save(folder / "picture.webp")
    picture.save(folder / "picture.tiff")
    Image.new("RGB", (1, 1), RED).save(folder / "one_pixel.png")
    picture.save(folder / "été_猫.png")

    picture.save(folder / ".hidden.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / ".thumbnails").mkdir()
    picture.save(folder / ".thumbnails" / "small.png")


def write_bad_input_folder(root: Path, *, empty_class: bool = False) -> Path:
    """root/cat/ and root/dog/: GOOD_PER_CLASS good images each, cat/ also every odd and bad file.

    The unreadable file is written but left readable: `unreadable(path)` makes it unreadable.
    With `empty_class`, root/empty/ holds only hidden files.
    """
    root = Path(root)
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for index in range(GOOD_PER_CLASS):
            Image.fromarray(class_image(label, label * 100 + index)).save(root / name / f"{index}.png")
    write_odd_and_bad_files(root / "cat")
    Image.fromarray(class_image(0, 77)).save(root / "cat" / "unreadable.png")
    if empty_class:
        (root / "empty").mkdir()
        (root / "empty" / ".DS_Store").write_bytes(b"x")
    return root


@contextlib.contextmanager
def unreadable(path: Path):
    """`path` made unreadable (chmod 000) while the context lasts.

    As root, chmod 000 still reads, so then opening the file raises the PermissionError a user
    without the permission gets: the code's handling of it is tested, not the kernel's.
    """
    path = Path(path)
    path.chmod(0)
    try:
        with pytest.MonkeyPatch.context() as patch:
            if os.access(path, os.R_OK):  # root
                original = builtins.open

                def guarded_open(file, *arguments, **options):
                    if isinstance(file, (str, os.PathLike)) and Path(file).absolute() == path.absolute():
                        raise PermissionError(13, "Permission denied", str(file))
                    return original(file, *arguments, **options)

                patch.setattr(builtins, "open", guarded_open)
                patch.setattr(io, "open", guarded_open)
            yield path
    finally:
        path.chmod(0o644)


# -- Fuzzing: valid images of each format, and a strategy that damages them. -----------------


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _valid_seeds() -> dict[str, bytes]:
    picture, other = Image.fromarray(class_image(1, 3, size=24)), Image.fromarray(class_image(0, 4, size=24))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {fmt: encoded(picture, fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF")}
    seeds["GIF"] = encoded(picture, "GIF", save_all=True, append_images=[other])
    seeds["JPEG with EXIF"] = encoded(picture, "JPEG", exif=exif)
    seeds["palette PNG"] = encoded(picture.convert("P"), "PNG", transparency=0)
    seeds["16-bit PNG"] = encoded(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG")
    seeds["CMYK JPEG"] = encoded(picture.convert("CMYK"), "JPEG")
    return seeds


# Valid images, of every format and awkward mode, that the fuzz tests damage.
VALID = _valid_seeds()


@st.composite
def damaged_images(draw) -> bytes:
    """A valid image with bytes overwritten, inserted or deleted, or cut short."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "overwrite":
            data[position : position + len(chunk)] = chunk
        elif action == "insert":
            data[position:position] = chunk
        elif action == "delete":
            del data[position : position + len(chunk)]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)
