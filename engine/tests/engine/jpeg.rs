//! JPEG through libjpeg-turbo (`embatch_engine::jpeg`): parity with PIL's `draft()` (the same
//! library) at its scales, the colour spaces and codings real files use (YCCK, CMYK, restart
//! markers, arithmetic coding, progressive), the scan limit, and buffers reused across images.
//! The unusual files are written with TurboJPEG's own compressor.

use crate::common;

use std::ffi::OsStr;

use common::cosine;
use embatch_engine::jpeg::{decode_scaled, Scale};
use embatch_engine::{Engine, ImageError, Limits};
use turbojpeg::raw;

fn engine() -> &'static Engine {
    static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    E.get_or_init(|| Engine::load(&common::resnet18()).expect("load the test model"))
}

/// A smooth photo-like `w` x `h` picture, RGB.
fn picture(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            px.push((127.0 + 100.0 * (fx * 7.0).sin()) as u8);
            px.push((127.0 + 100.0 * (fy * 5.0 + 1.0).cos()) as u8);
            px.push((127.0 + 100.0 * ((fx + fy) * 9.0).sin()) as u8);
        }
    }
    px
}

/// TurboJPEG parameters for [`compress`].
#[derive(Default)]
struct Coding {
    cmyk_colorspace: Option<raw::TJCS>,
    restart_blocks: i32,
    arithmetic: bool,
    progressive: bool,
}

/// `pixels` (RGB, or CMYK when `coding.cmyk_colorspace` is set) as a JPEG, quality 92, 4:4:4.
fn compress(pixels: &[u8], w: u32, h: u32, coding: &Coding) -> Vec<u8> {
    // SAFETY: a test-only use of TurboJPEG's C API with buffers sized for w x h pixels; every
    // call's result is checked, and the output buffer is freed with tj3Free.
    unsafe {
        let handle = raw::tj3Init(raw::TJINIT_TJINIT_COMPRESS as i32);
        assert!(!handle.is_null());
        let set = |p: raw::TJPARAM, v: i32| assert_eq!(raw::tj3Set(handle, p as i32, v), 0);
        set(raw::TJPARAM_TJPARAM_QUALITY, 92);
        set(raw::TJPARAM_TJPARAM_SUBSAMP, raw::TJSAMP_TJSAMP_444);
        set(raw::TJPARAM_TJPARAM_RESTARTBLOCKS, coding.restart_blocks);
        set(raw::TJPARAM_TJPARAM_ARITHMETIC, coding.arithmetic as i32);
        set(raw::TJPARAM_TJPARAM_PROGRESSIVE, coding.progressive as i32);
        let format = match coding.cmyk_colorspace {
            Some(cs) => {
                set(raw::TJPARAM_TJPARAM_COLORSPACE, cs as i32);
                raw::TJPF_TJPF_CMYK
            }
            None => raw::TJPF_TJPF_RGB,
        };
        let channels = if coding.cmyk_colorspace.is_some() {
            4
        } else {
            3
        };
        let mut out: *mut u8 = std::ptr::null_mut();
        let mut size: raw::size_t = 0;
        let r = raw::tj3Compress8(
            handle,
            pixels.as_ptr(),
            w as i32,
            (w * channels) as i32,
            h as i32,
            format,
            &mut out,
            &mut size,
        );
        assert_eq!(r, 0, "tj3Compress8 failed");
        let jpeg = std::slice::from_raw_parts(out, size as usize).to_vec();
        raw::tj3Free(out.cast());
        raw::tj3Destroy(handle);
        jpeg
    }
}

fn tensor(bytes: &[u8]) -> Vec<f32> {
    engine()
        .prepare(bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .tensor
}

#[test]
fn decoded_pixels_match_pil_draft_at_its_scales_within_one_level() {
    let dir = tempfile::tempdir().unwrap();
    const SCRIPT: &str = r#"
import sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, sys.argv[1])
import make_images as m
out = Path(sys.argv[2])
m.picture(1600, 1200, 31).save(out / "baseline.jpg", quality=90)
m.detailed(1600, 1200, 32).save(out / "progressive.jpg", quality=90, progressive=True)
for name in ["baseline", "progressive"]:
    for denom in [2, 4, 8]:
        im = Image.open(out / f"{name}.jpg")
        im.draft("RGB", (im.width // denom, im.height // denom))
        im = im.convert("RGB")
        (out / f"{name}_{denom}.rgb").write_bytes(f"{im.width} {im.height}\n".encode() + im.tobytes())
"#;
    let root = embatch_testkit::python::workspace_root();
    embatch_testkit::run_ok(
        std::process::Command::new(embatch_testkit::python::interpreter().unwrap())
            .args([OsStr::new("-c"), OsStr::new(SCRIPT)])
            .arg(root.join("tests/reference"))
            .arg(dir.path()),
        "PIL draft()",
    );
    for name in ["baseline", "progressive"] {
        let jpeg = std::fs::read(dir.path().join(format!("{name}.jpg"))).unwrap();
        for denom in [2u32, 4, 8] {
            let pil = std::fs::read(dir.path().join(format!("{name}_{denom}.rgb"))).unwrap();
            let split = pil.iter().position(|&b| b == b'\n').unwrap();
            let size = std::str::from_utf8(&pil[..split]).unwrap();
            let (pw, ph) = size.split_once(' ').unwrap();
            let (pw, ph): (u32, u32) = (pw.parse().unwrap(), ph.parse().unwrap());
            let scale = Scale { num: 1, denom };
            let (w, h, ours) = decode_scaled(&jpeg, &Limits::default(), scale).unwrap();
            assert_eq!((w, h), (pw, ph), "{name} 1/{denom}");
            let worst = ours
                .iter()
                .zip(&pil[split + 1..])
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(
                worst <= 1,
                "{name} at 1/{denom}: a pixel differs by {worst} from PIL draft()"
            );
        }
    }
}

#[test]
fn ycck_and_cmyk_jpegs_decode_to_the_rgb_picture() {
    let (w, h) = (320, 240);
    let rgb = picture(w, h);
    // Adobe's convention: stored = 255 - ink; (r, g, b) with no black ink is (r, g, b, 255).
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let reference = tensor(&compress(&rgb, w, h, &Coding::default()));
    for (name, cs) in [("YCCK", raw::TJCS_TJCS_YCCK), ("CMYK", raw::TJCS_TJCS_CMYK)] {
        let jpeg = compress(
            &cmyk,
            w,
            h,
            &Coding {
                cmyk_colorspace: Some(cs),
                ..Coding::default()
            },
        );
        let header = turbojpeg::read_header(&jpeg).unwrap();
        assert_eq!(header.colorspace as u32, cs, "{name}: the premise");
        let c = cosine(&tensor(&jpeg), &reference);
        assert!(
            c > 0.9999,
            "{name}: cosine {c} to the RGB JPEG of the same picture"
        );
    }
}

#[test]
fn restart_markers_arithmetic_coding_and_progressive_decode_like_baseline() {
    let (w, h) = (640, 480);
    let rgb = picture(w, h);
    let baseline = tensor(&compress(&rgb, w, h, &Coding::default()));
    let codings = [
        (
            "restart markers every block",
            Coding {
                restart_blocks: 1,
                ..Coding::default()
            },
        ),
        (
            "arithmetic coding",
            Coding {
                arithmetic: true,
                ..Coding::default()
            },
        ),
        (
            "progressive",
            Coding {
                progressive: true,
                ..Coding::default()
            },
        ),
    ];
    for (name, coding) in codings {
        let jpeg = compress(&rgb, w, h, &coding);
        let c = cosine(&tensor(&jpeg), &baseline);
        assert!(c > 0.99999, "{name}: cosine {c}");
        // Cut in half, each still fails as truncated.
        let cut = &jpeg[..jpeg.len() / 2];
        assert_eq!(
            engine()
                .prepare(cut, &Limits::default())
                .unwrap_err()
                .kind(),
            "truncated",
            "{name}"
        );
    }
}

#[test]
fn a_progressive_jpeg_over_the_scan_limit_is_refused() {
    let (w, h) = (320, 240);
    let jpeg = compress(
        &picture(w, h),
        w,
        h,
        &Coding {
            progressive: true,
            ..Coding::default()
        },
    );
    // libjpeg's default progression writes 10 scans for a colour image.
    let within = Limits {
        max_scans: 10,
        ..Limits::default()
    };
    assert!(engine().prepare(&jpeg, &within).is_ok());
    let over = Limits {
        max_scans: 9,
        ..Limits::default()
    };
    match engine().prepare(&jpeg, &over) {
        Err(ImageError::Unsupported(m)) => assert!(m.contains("scans"), "{m}"),
        other => panic!("expected an unsupported image, got {other:?}"),
    }
    // And the next image on this thread is not affected.
    assert!(engine().prepare(&jpeg, &within).is_ok());
}

#[test]
fn reused_buffers_leave_no_trace_of_the_previous_image() {
    let large = compress(&picture(1920, 1440), 1920, 1440, &Coding::default());
    let small = compress(&picture(300, 200), 300, 200, &Coding::default());
    let cmyk: Vec<u8> = picture(300, 200)
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let ycck = compress(
        &cmyk,
        300,
        200,
        &Coding {
            cmyk_colorspace: Some(raw::TJCS_TJCS_YCCK),
            ..Coding::default()
        },
    );
    let fresh: Vec<Vec<f32>> = [&large, &small, &ycck]
        .iter()
        .map(|b| {
            // Each on a thread of its own: nothing to reuse.
            let b = b.to_vec();
            std::thread::spawn(move || tensor(&b)).join().unwrap()
        })
        .collect();
    // One thread, in an order that reuses a larger buffer for smaller images.
    for (bytes, want) in [
        (&large, &fresh[0]),
        (&small, &fresh[1]),
        (&ycck, &fresh[2]),
        (&large, &fresh[0]),
    ] {
        assert_eq!(&tensor(bytes), want);
    }
}
