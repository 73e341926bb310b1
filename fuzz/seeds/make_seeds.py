#!/usr/bin/env python3
"""Writes the small seed images of the decode_preprocess fuzz target into fuzz/seeds/images/.

The files are committed; this script only documents (and can redo) how they were made:
    .venv/bin/python fuzz/seeds/make_seeds.py
Each is a few hundred bytes: tiny images of every decoded format and the colour types and
features the decoder handles (grayscale, palette, alpha, 16-bit, CMYK, progressive, EXIF
orientation), so the fuzzer starts from valid headers. Needs Pillow with WebP support.
"""

import io
import pathlib

from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / "images"


def picture(w, h, mode="RGB"):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 37) % 256, (y * 53) % 256, ((x ^ y) * 29) % 256) for y in range(h) for x in range(w)])
    return img.convert(mode) if mode != "RGB" else img


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def save(name, img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    (OUT / name).write_bytes(buf.getvalue())


def main():
    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    # JPEG
    save("baseline.jpg", picture(16, 8), "JPEG", quality=50)
    save("progressive.jpg", picture(16, 16), "JPEG", quality=50, progressive=True)
    save("gray.jpg", picture(8, 8, "L"), "JPEG", quality=50)
    save("cmyk.jpg", picture(8, 8, "CMYK"), "JPEG", quality=50)
    save("subsampled420.jpg", picture(16, 16), "JPEG", quality=30, subsampling=2)
    save("exif_rotate90.jpg", picture(12, 8), "JPEG", quality=30, exif=exif_orientation(6))
    # Large enough that it is decoded at reduced DCT scale (shorter side >= 2 x 512), yet small
    # on disk: one flat gray.
    save("large_flat.jpg", Image.new("L", (1024, 1032), 120), "JPEG", quality=10, optimize=True)
    # PNG
    save("rgb.png", picture(8, 8), "PNG")
    save("rgba.png", picture(8, 8, "RGBA"), "PNG")
    save("palette.png", picture(8, 8).quantize(16), "PNG")
    save("gray16.png", picture(8, 8, "I;16"), "PNG")
    save("gray_alpha.png", picture(8, 8, "LA"), "PNG")
    save("interlaced.png", picture(8, 8), "PNG", interlace=1)
    save("exif_rotate270.png", picture(6, 4), "PNG", exif=exif_orientation(8))
    # WebP
    save("lossy.webp", picture(16, 16), "WEBP", quality=50)
    save("lossless.webp", picture(8, 8), "WEBP", lossless=True)
    save("alpha.webp", picture(8, 8, "RGBA"), "WEBP", quality=50)
    # GIF (first frame of an animation too)
    save("still.gif", picture(8, 8).quantize(16), "GIF")
    frames = [picture(8, 8).quantize(8), picture(8, 8).rotate(90).quantize(8)]
    save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    # BMP
    save("rgb24.bmp", picture(4, 4), "BMP")
    save("palette8.bmp", picture(4, 4).quantize(16), "BMP")
    # TIFF
    save("rgb.tiff", picture(4, 4), "TIFF")
    save("lzw.tiff", picture(8, 8), "TIFF", compression="tiff_lzw")
    save("gray.tiff", picture(4, 4, "L"), "TIFF")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(list(OUT.iterdir()))} seeds, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
