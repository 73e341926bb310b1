#!/usr/bin/env python3
"""Write deterministic synthetic test images in every supported format and colour type.

Usage: make_images.py OUT_DIR [--bench]

Prints a JSON object {file name: description} of what it wrote. The pictures are smooth
gradients, shapes and mild noise (photo-like enough that resampling and JPEG coding matter,
different enough from each other that embeddings tell them apart).
--bench writes only the benchmark set: 8 small (500x375), 4 large (4000x3000) and 4 very large
(6000x4000, two baseline, two progressive) JPEGs.
"""

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def picture(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(x / w * rng.uniform(2, 9) + rng.uniform(0, 6)),
            127 + 100 * np.cos(y / h * rng.uniform(2, 9) + rng.uniform(0, 6)),
            127 + 100 * np.sin((x + y) / (w + h) * rng.uniform(2, 12)),
        ],
        axis=-1,
    )
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.25) * min(w, h)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=color)
        else:
            d.rectangle([x0 - r, y0 - r * 0.6, x0 + r, y0 + r * 0.6], fill=color)
    im = im.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(w, h) / 400)))
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray((np.asarray(im, np.float32) + noise).clip(0, 255).astype(np.uint8), "RGB")


def detailed(w, h, seed):
    """Sharp, high-frequency content: where reduced-scale JPEG decoding would show."""
    rng = np.random.default_rng(seed)
    im = picture(w, h, seed)
    d = ImageDraw.Draw(im)
    for _ in range(300):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.normal(0, 60), y0 + rng.normal(0, 60)
        d.line([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=1)
    noise = rng.normal(0, 20, (h, w, 3))
    return Image.fromarray((np.asarray(im, np.float32) + noise).clip(0, 255).astype(np.uint8), "RGB")


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# The transpose that ImageOps.exif_transpose applies for each orientation, and its inverse
# (what a camera stores so that the displayed image is upright).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
}


def stored_for(upright, orientation):
    if orientation == 1:
        return upright
    t = TRANSPOSE[orientation]
    return upright.transpose(INVERSE.get(t, t))


def png16_rgb(path, rgb8):
    """16-bit RGB PNG (PIL cannot write one): values v * 257 plus low-byte detail."""
    a = np.asarray(rgb8, np.uint16) * 257
    a = a + (np.arange(a.shape[1], dtype=np.uint16)[None, :, None] % 200)
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def with_alpha(rgb, seed):
    w, h = rgb.size
    y, x = np.mgrid[0:h, 0:w]
    alpha = (255 * (x / w)).astype(np.uint8)  # transparent on the left, opaque on the right
    alpha[: h // 4] = 0
    im = rgb.convert("RGBA")
    im.putalpha(Image.fromarray(alpha, "L"))
    return im


def write_all(out):
    made = {}

    def save(name, im, desc, **kw):
        im.save(out / name, **kw)
        made[name] = desc

    small = picture(500, 375, 1)
    save("jpeg_rgb_small.jpg", small, "JPEG RGB 500x375", quality=90)
    save("jpeg_rgb_portrait.jpg", picture(375, 500, 2), "JPEG RGB 375x500", quality=90)
    # Decoded at 1/2, 1/4 and 1/8 DCT scale (shorter side kept >= 2 x 256).
    save("jpeg_large_half.jpg", picture(1600, 1200, 3), "JPEG 1600x1200 (1/2-scale decode)", quality=92)
    save("jpeg_large_quarter.jpg", picture(4000, 3000, 4), "JPEG 4000x3000 (1/4-scale decode)", quality=92)
    save("jpeg_large_eighth.jpg", picture(5000, 4200, 5), "JPEG 5000x4200 (1/8-scale decode)", quality=92)
    # 1023 / 2 = 511.5: libjpeg's 1/2-scale side rounds up to 512, so this one is decoded at 1/2.
    save("jpeg_half_at_the_edge.jpg", picture(1364, 1023, 29), "JPEG 1364x1023 (1/2 scale, 511.5 rounded up)",
         quality=90)
    save("jpeg_progressive.jpg", picture(1200, 900, 6), "progressive JPEG 1200x900", quality=90,
         progressive=True)
    save("jpeg_gray.jpg", picture(480, 360, 7).convert("L"), "grayscale JPEG", quality=90)
    save("jpeg_cmyk.jpg", picture(480, 360, 8).convert("CMYK"), "CMYK JPEG (Adobe)", quality=92)
    save("jpeg_detail_800.jpg", detailed(800, 533, 27), "JPEG 800x533 with fine detail", quality=90)
    save("jpeg_tiny.jpg", picture(40, 30, 9), "JPEG 40x30 (upscaled)", quality=95)

    upright = picture(400, 300, 10)
    for o in range(1, 9):
        save(f"jpeg_exif_{o}.jpg", stored_for(upright, o), f"JPEG EXIF orientation {o}", quality=95,
             exif=exif_bytes(o))
    # Negative control: the pixels of orientation 6 without the EXIF tag.
    save("jpeg_exif_6_stripped.jpg", stored_for(upright, 6), "orientation 6 pixels, no EXIF", quality=95)

    rgb = picture(320, 240, 11)
    save("png_rgb.png", rgb, "PNG RGB 8-bit")
    save("png_rgba.png", with_alpha(rgb, 12), "PNG RGBA (alpha gradient)")
    save("png_gray.png", picture(320, 240, 13).convert("L"), "PNG grayscale")
    save("png_gray_alpha.png", with_alpha(picture(320, 240, 14), 14).convert("LA"), "PNG grayscale+alpha")
    pal = picture(320, 240, 15).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("png_palette.png", pal, "PNG palette")
    pal_t = picture(320, 240, 16).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("png_palette_trns.png", pal_t, "PNG palette with a transparent index", transparency=0)
    g16 = (np.asarray(picture(320, 240, 17).convert("L"), np.uint16) * 257).astype(np.uint16)
    save("png_gray16.png", Image.fromarray(g16), "PNG grayscale 16-bit")
    png16_rgb(out / "png_rgb16.png", picture(320, 240, 18))
    made["png_rgb16.png"] = "PNG RGB 16-bit"
    save("png_exif_6.png", stored_for(picture(320, 240, 19), 6), "PNG with EXIF orientation 6",
         exif=exif_bytes(6))

    save("webp_lossy.webp", picture(400, 300, 20), "WebP lossy", quality=90)
    save("webp_lossless_alpha.webp", with_alpha(picture(400, 300, 21), 21), "WebP lossless RGBA",
         lossless=True)
    save("webp_exif_3.webp", stored_for(picture(400, 300, 22), 3), "WebP with EXIF orientation 3",
         quality=90, exif=exif_bytes(3))

    f0 = picture(300, 200, 23).convert("P", palette=Image.Palette.ADAPTIVE, colors=128)
    f1 = Image.new("RGB", (300, 200), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    f0.save(out / "gif_animated.gif", save_all=True, append_images=[f1], duration=100, loop=0)
    made["gif_animated.gif"] = "animated GIF (first frame used)"

    save("bmp_rgb.bmp", picture(300, 200, 24), "BMP RGB")
    save("tiff_rgb.tiff", picture(300, 200, 25), "TIFF RGB")
    save("tiff_rgba.tiff", with_alpha(picture(300, 200, 26), 26), "TIFF RGBA", compression="tiff_lzw")
    return made


def write_bench(out):
    made = {}
    for k in range(8):
        picture(500, 375, 100 + k).save(out / f"small_{k}.jpg", quality=90)
        made[f"small_{k}.jpg"] = "JPEG 500x375"
    for k in range(4):
        picture(4000, 3000, 200 + k).save(out / f"large_{k}.jpg", quality=90)
        made[f"large_{k}.jpg"] = "JPEG 4000x3000"
    # Very large, as 24-Mpixel cameras write them: baseline and progressive.
    for k in range(2):
        picture(6000, 4000, 300 + k).save(out / f"huge_{k}.jpg", quality=90)
        made[f"huge_{k}.jpg"] = "JPEG 6000x4000"
        picture(6000, 4000, 400 + k).save(out / f"huge_progressive_{k}.jpg", quality=90, progressive=True)
        made[f"huge_progressive_{k}.jpg"] = "progressive JPEG 6000x4000"
    return made


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    made = write_bench(out) if "--bench" in sys.argv[2:] else write_all(out)
    print(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
