//! Vision integration tests on the CPU: every canonical format from tiny generated files, the WRN,
//! synthetic OOD statistics, and short training runs on generated data and on the CIFAR-10 JPEG
//! folder in `../shared/data` (skipped with a printed reason when absent).

use crate::common;

use oe::train::{CheckpointState, Method, Pairing, Silent};
use oe::vision::augment::{make_batch, Augment, Normalize, Preset};
use oe::vision::data::{
    self, cifar, folder, mat, npy, tinyimagenet, tinyimages, ImageSet, ImageSource,
};
use oe::vision::models::{WideResNet, WrnConfig};
use oe::vision::synthetic::{self, Synthetic};
use oe::vision::train::{train_phase, PhaseData, Sgd, VisionTrainConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind};

// ------------------------------------------------------------------ generators

/// Pixel value of image `i`, channel `c`, row-major position `p` in the generated sets.
fn px(i: usize, c: usize, p: usize) -> u8 {
    ((i * 7 + c * 50 + p * 3) % 256) as u8
}

/// CIFAR record layout: 1024 R, 1024 G, 1024 B.
fn planar(i: usize) -> Vec<u8> {
    (0..3)
        .flat_map(|c| (0..1024).map(move |p| px(i, c, p)))
        .collect()
}

fn check_hwc(set: &ImageSet, i: usize, gen_index: usize) {
    let img = set.image(i);
    for p in [0, 1, 31, 32, 517, 1023] {
        for c in 0..3 {
            assert_eq!(
                img[p * 3 + c],
                px(gen_index, c, p),
                "image {i} pixel {p} channel {c}"
            );
        }
    }
}

/// A Python 2 cPickle (protocol 2) CIFAR batch, the byte layout of the real files: py2 `str` keys and
/// data (SHORT_BINSTRING / BINSTRING), `numpy.core.multiarray._reconstruct` + BUILD.
fn pickle_py2(label_key: &str, labels: &[u8], data: &[u8], n: usize) -> Vec<u8> {
    let mut b = vec![0x80, 2, b'}', b'q', 1, b'('];
    let s = |b: &mut Vec<u8>, t: &str| {
        b.push(b'U');
        b.push(t.len() as u8);
        b.extend_from_slice(t.as_bytes());
    };
    s(&mut b, "batch_label");
    s(&mut b, "testing batch 1 of 1");
    s(&mut b, label_key);
    b.extend_from_slice(b"]q\x02(");
    for &l in labels {
        b.extend_from_slice(&[b'K', l]);
    }
    b.push(b'e');
    s(&mut b, "data");
    b.extend_from_slice(
        b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87R",
    );
    b.extend_from_slice(b"q\x05(K\x01M");
    b.extend_from_slice(&(n as u16).to_le_bytes());
    b.extend_from_slice(b"M\x00\x0c\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"tbu.");
    b
}

/// A Python 3 protocol-4 style batch: unicode keys, STACK_GLOBAL, MEMOIZE, BINBYTES data.
fn pickle_py3(label_key: &str, labels: &[u8], data: &[u8], n: usize) -> Vec<u8> {
    let mut b = vec![0x80, 4, b'}', 0x94, b'('];
    let u = |b: &mut Vec<u8>, t: &str| {
        b.push(0x8c);
        b.push(t.len() as u8);
        b.extend_from_slice(t.as_bytes());
        b.push(0x94);
    };
    u(&mut b, label_key);
    b.extend_from_slice(b"]\x94(");
    for &l in labels {
        b.extend_from_slice(&[b'K', l]);
    }
    b.push(b'e');
    u(&mut b, "data");
    u(&mut b, "numpy._core.multiarray");
    u(&mut b, "_reconstruct");
    b.push(0x93);
    u(&mut b, "numpy");
    u(&mut b, "ndarray");
    b.push(0x93);
    b.extend_from_slice(b"K\x00\x85C\x01b\x87R(K\x01J");
    b.extend_from_slice(&(n as u32).to_le_bytes());
    b.extend_from_slice(b"M\x00\x0c\x86");
    u(&mut b, "numpy");
    u(&mut b, "dtype");
    b.push(0x93);
    b.extend_from_slice(
        b"\x8c\x02u1\x89\x88\x87R(K\x03\x8c\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89B",
    );
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"tbu.");
    b
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::File::create(p).unwrap().write_all(bytes).unwrap();
}

/// Writes a CIFAR-10 python tree: 5 train batches of `per` images, a test batch of 3, the meta file.
fn write_cifar10_python(root: &Path, per: usize, py3: bool) {
    let d = root.join("cifar-10-batches-py");
    let mut k = 0;
    for b in 1..=6 {
        let n = if b == 6 { 3 } else { per };
        let data: Vec<u8> = (k..k + n).flat_map(planar).collect();
        let labels: Vec<u8> = (k..k + n).map(|i| (i % 10) as u8).collect();
        let bytes = if py3 {
            pickle_py3("labels", &labels, &data, n)
        } else {
            pickle_py2("labels", &labels, &data, n)
        };
        let name = if b == 6 {
            "test_batch".to_string()
        } else {
            format!("data_batch_{b}")
        };
        write(&d.join(name), &bytes);
        k += n;
    }
    // batches.meta: {'label_names': ['c0', ..., 'c9']}
    let mut m = vec![0x80, 2, b'}', b'(', b'U', 11];
    m.extend_from_slice(b"label_names(");
    for c in 0..10 {
        m.extend_from_slice(&[b'U', 2, b'c', b'0' + c]);
    }
    m.extend_from_slice(b"lu.");
    write(&d.join("batches.meta"), &m);
}

/// Tests that train or initialise models hold this: libtorch's global generator (initialisation,
/// dropout) is shared by the test threads of this process.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ------------------------------------------------------------------ formats

#[test]
fn cifar10_python_batches_load_py2_and_py3_pickles() {
    for py3 in [false, true] {
        let dir = tmp();
        write_cifar10_python(dir.path(), 4, py3);
        // Small generated sets: the manifest's counts do not apply to the readers themselves.
        let train = cifar::load(dir.path(), cifar::Cifar::C10, true).unwrap();
        let test = cifar::load(dir.path(), cifar::Cifar::C10, false).unwrap();
        assert_eq!((train.len(), test.len()), (20, 3));
        assert_eq!(train.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        assert_eq!(train.classes[3], "c3");
        for i in [0, 5, 19] {
            check_hwc(&train, i, i);
        }
        check_hwc(&test, 2, 22);
    }
}

#[test]
fn cifar_binary_batches_load() {
    let dir = tmp();
    let d10 = dir.path().join("cifar-10-batches-bin");
    let mut k = 0;
    for f in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        let mut bytes = Vec::new();
        for i in k..k + 2 {
            bytes.push((i % 10) as u8);
            bytes.extend(planar(i));
        }
        k += 2;
        write(&d10.join(format!("{f}.bin")), &bytes);
    }
    write(
        &d10.join("batches.meta.txt"),
        (0..10)
            .map(|i| format!("n{i}\n"))
            .collect::<String>()
            .as_bytes(),
    );
    let t = cifar::load(dir.path(), cifar::Cifar::C10, true).unwrap();
    assert_eq!((t.len(), t.labels[3], t.classes[9].as_str()), (10, 3, "n9"));
    check_hwc(&t, 7, 7);
    let d100 = dir.path().join("cifar-100-binary");
    for (f, n) in [("train", 3usize), ("test", 2)] {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend_from_slice(&[(i % 20) as u8, (i * 30 % 100) as u8]);
            bytes.extend(planar(i));
        }
        write(&d100.join(format!("{f}.bin")), &bytes);
    }
    let t = cifar::load(dir.path(), cifar::Cifar::C100, true).unwrap();
    assert_eq!(t.labels, vec![0, 30, 60]);
    assert_eq!(t.classes.len(), 100);
    check_hwc(&t, 2, 2);
    // A truncated record is an error naming the file.
    write(&d100.join("test.bin"), &[1, 2, 3]);
    let e = cifar::load(dir.path(), cifar::Cifar::C100, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.bin"), "{e}");
}

/// One MAT v5 data element (tag + data + padding); small-element form for ≤ 4 bytes.
fn mat_elem(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    if data.len() <= 4 && !data.is_empty() {
        b.extend_from_slice(&(((data.len() as u32) << 16) | ty).to_le_bytes());
        let mut d = data.to_vec();
        d.resize(4, 0);
        b.extend(d);
    } else {
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        while !b.len().is_multiple_of(8) {
            b.push(0);
        }
    }
    b
}

fn mat_matrix(name: &str, class: u8, dims: &[i32], ty: u32, data: &[u8]) -> Vec<u8> {
    let mut body = mat_elem(6, &[class, 0, 0, 0, 0, 0, 0, 0]);
    body.extend(mat_elem(
        5,
        &dims
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect::<Vec<_>>(),
    ));
    body.extend(mat_elem(1, name.as_bytes()));
    body.extend(mat_elem(ty, data));
    let mut b = 14u32.to_le_bytes().to_vec();
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend(body);
    b
}

/// An SVHN-like `.mat`: X uint8 [32, 32, 3, n] column-major; y as uint8 or double [n, 1].
fn svhn_mat(n: usize, labels: &[u8], compressed: bool, y_double: bool) -> Vec<u8> {
    let mut hdr = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: test".to_vec();
    hdr.resize(116, b' ');
    hdr.extend_from_slice(&[0; 8]);
    hdr.extend_from_slice(&[0x00, 0x01]);
    hdr.extend_from_slice(b"IM");
    let mut x = vec![0u8; 3072 * n];
    for i in 0..n {
        for c in 0..3 {
            for p in 0..1024 {
                let (r, col) = (p / 32, p % 32);
                x[r + 32 * col + 1024 * c + 3072 * i] = px(i, c, p);
            }
        }
    }
    let xm = mat_matrix("X", 9, &[32, 32, 3, n as i32], 2, &x);
    let ym = if y_double {
        let d: Vec<u8> = labels
            .iter()
            .flat_map(|&l| (l as f64).to_le_bytes())
            .collect();
        mat_matrix("y", 6, &[n as i32, 1], 9, &d)
    } else {
        mat_matrix("y", 9, &[n as i32, 1], 2, labels)
    };
    let mut out = hdr;
    for m in [xm, ym] {
        if compressed {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&m).unwrap();
            let z = e.finish().unwrap();
            out.extend_from_slice(&15u32.to_le_bytes());
            out.extend_from_slice(&(z.len() as u32).to_le_bytes());
            out.extend(z);
        } else {
            out.extend(m);
        }
    }
    out
}

#[test]
fn svhn_mat_loads_plain_and_compressed() {
    let dir = tmp();
    let labels = [10u8, 1, 2, 9, 10];
    for (compressed, y_double) in [(false, false), (true, false), (true, true)] {
        let p = dir.path().join(format!("s{compressed}{y_double}.mat"));
        write(&p, &svhn_mat(5, &labels, compressed, y_double));
        let s = mat::load_svhn(&p, "svhn").unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s.labels, vec![0, 1, 2, 9, 0], "digit 0 is stored as 10");
        for i in 0..5 {
            check_hwc(&s, i, i);
        }
    }
    // The whole dataset layout under a root (train + extra, test).
    let d = dir.path().join("root/svhn");
    write(
        &d.join("train_32x32.mat"),
        &svhn_mat(3, &[1, 2, 3], true, false),
    );
    write(
        &d.join("extra_32x32.mat"),
        &svhn_mat(2, &[4, 5], true, false),
    );
    write(
        &d.join("test_32x32.mat"),
        &svhn_mat(2, &[6, 10], false, false),
    );
    let root = dir.path().join("root");
    // Counts differ from the manifest's: SVHN's train count is a warning, the test count is strict.
    let e = data::load_in_distribution("svhn", &root, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("svhn test") && e.contains("26032"), "{e}");
    let train = mat::load_svhn(&d.join("train_32x32.mat"), "t").unwrap();
    assert_eq!(train.labels, vec![1, 2, 3]);
    // A corrupt stream is an error, not a panic.
    let mut bad = svhn_mat(2, &[1, 2], true, false);
    let n = bad.len();
    bad[n - 20..].iter_mut().for_each(|b| *b = 0);
    write(&d.join("bad.mat"), &bad);
    assert!(mat::load_svhn(&d.join("bad.mat"), "bad").is_err());
}

fn jpeg(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn close(a: &[u8], b: [u8; 3], tol: i32) -> bool {
    a.chunks(3)
        .all(|p| (0..3).all(|c| (p[c] as i32 - b[c] as i32).abs() <= tol))
}

#[test]
fn tiny_imagenet_folder_loads() {
    let dir = tmp();
    let t = dir.path().join("tiny-imagenet-200");
    let wnids = ["n02", "n01", "n03"];
    write(&t.join("wnids.txt"), wnids.join("\n").as_bytes());
    let colour = |k: usize| [(k * 80) as u8, 100, (250 - k * 80) as u8];
    for w in wnids {
        let k = ["n01", "n02", "n03"].iter().position(|x| *x == w).unwrap();
        for j in 0..2 {
            write(
                &t.join(format!("train/{w}/images/{w}_{j}.JPEG")),
                &jpeg(64, 64, colour(k)),
            );
        }
        write(&t.join(format!("train/{w}/{w}_boxes.txt")), b"ignored");
    }
    let mut ann = String::new();
    for (i, w) in ["n03", "n01"].iter().enumerate() {
        let k = ["n01", "n02", "n03"].iter().position(|x| x == w).unwrap();
        write(
            &t.join(format!("val/images/val_{i}.JPEG")),
            &jpeg(64, 64, colour(k)),
        );
        ann += &format!("val_{i}.JPEG\t{w}\t0\t0\t10\t10\n");
    }
    // A grey image: converted to RGB.
    let grey = image::GrayImage::from_pixel(64, 64, image::Luma([77]));
    let mut g = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(grey)
        .write_to(&mut g, image::ImageFormat::Jpeg)
        .unwrap();
    write(&t.join("val/images/val_2.JPEG"), &g.into_inner());
    ann += "val_2.JPEG\tn02\t0\t0\t1\t1\n";
    write(&t.join("val/val_annotations.txt"), ann.as_bytes());

    let train = tinyimagenet::load(dir.path(), true).unwrap();
    let val = tinyimagenet::load(dir.path(), false).unwrap();
    assert_eq!((train.height, train.len(), val.len()), (64, 6, 3));
    assert_eq!(
        train.classes,
        vec!["n01", "n02", "n03"],
        "sorted wnids (ImageFolder order)"
    );
    assert_eq!(train.labels, vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(val.labels, vec![2, 0, 1]);
    for i in 0..6 {
        assert!(
            close(train.image(i), colour(train.labels[i] as usize), 3),
            "train image {i}"
        );
    }
    assert!(close(val.image(2), [77, 77, 77], 2));
    // Bad annotations name the file and line.
    write(&t.join("val/val_annotations.txt"), b"val_0.JPEG\tn99\n");
    let e = tinyimagenet::load(dir.path(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("val_annotations.txt:1") && e.contains("n99"),
        "{e}"
    );
}

#[test]
fn image_folders_fit_resize_and_centre_crop() {
    let dir = tmp();
    // 40x80 (portrait): Resize(32) → 32x64, CenterCrop(32) keeps rows 16..48: the middle band.
    let mut img = image::RgbImage::from_pixel(40, 80, image::Rgb([255, 0, 0]));
    for y in 30..50 {
        for x in 0..40 {
            img.put_pixel(x, y, image::Rgb([0, 0, 255]));
        }
    }
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    write(&dir.path().join("a/b/x.png"), &png.into_inner());
    write(&dir.path().join("a/y.jpg"), &jpeg(10, 10, [0, 200, 0]));
    write(&dir.path().join("a/notes.txt"), b"not an image");
    let f = folder::FolderImages::unlabelled(&dir.path().join("a"), 32).unwrap();
    assert_eq!(f.len(), 2);
    let mut out = vec![0u8; 32 * 32 * 3];
    f.read(0, &mut out).unwrap(); // b/x.png sorts first
    let centre = &out[(16 * 32 + 16) * 3..(16 * 32 + 16) * 3 + 3];
    assert!(centre[2] > 200 && centre[0] < 50, "{centre:?}");
    let top = &out[0..3];
    assert!(top[0] > 200, "{top:?}");
    f.read(1, &mut out).unwrap();
    assert!(close(&out, [0, 200, 0], 4));
}

#[test]
fn tiny_images_bin_and_npy_read_lazily() {
    let dir = tmp();
    let mut bin = Vec::new();
    for i in 0..5 {
        for j in 0..3072 {
            // byte j → row j % 32, column (j / 32) % 32, channel j / 1024
            let (r, c, ch) = (j % 32, (j / 32) % 32, j / 1024);
            bin.push(px(i, ch, r * 32 + c));
        }
    }
    write(&dir.path().join("tiny_images.bin"), &bin);
    write(&dir.path().join("80mn_cifar_idxs.txt"), b"2\n5\n");
    let t = tinyimages::TinyImages::open(
        &dir.path().join("tiny_images.bin"),
        Some(&dir.path().join("80mn_cifar_idxs.txt")),
    )
    .unwrap();
    assert_eq!((t.len(), t.excluded_count()), (5, 2));
    assert!(
        t.excluded(1) && t.excluded(4) && !t.excluded(0),
        "one-based exclusion list"
    );
    let mut out = vec![0u8; 3072];
    for i in 0..5 {
        t.read(i, &mut out).unwrap();
        let s = ImageSet {
            name: "x".into(),
            height: 32,
            width: 32,
            pixels: out.clone(),
            labels: vec![],
            classes: vec![],
        };
        check_hwc(&s, 0, i);
    }
    // .npy v1, uint8 [3, 32, 32, 3]
    let mut header =
        "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 32, 32, 3), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npyb = b"\x93NUMPY\x01\x00".to_vec();
    npyb.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npyb.extend_from_slice(header.as_bytes());
    for i in 0..3 {
        for p in 0..1024 {
            for c in 0..3 {
                npyb.push(px(i, c, p));
            }
        }
    }
    write(&dir.path().join("r.npy"), &npyb);
    let n = npy::NpyImages::open(&dir.path().join("r.npy")).unwrap();
    assert_eq!((n.len(), n.size()), (3, (32, 32)));
    n.read(2, &mut out).unwrap();
    let s = ImageSet {
        name: "x".into(),
        height: 32,
        width: 32,
        pixels: out.clone(),
        labels: vec![],
        classes: vec![],
    };
    check_hwc(&s, 0, 2);
    // Through the OE loader by path.
    let src = data::load_oe_source(
        dir.path().join("tiny_images.bin").to_str().unwrap(),
        dir.path(),
        32,
    )
    .unwrap();
    assert!(src.excluded(1));
    write(&dir.path().join("short.npy"), &npyb[..npyb.len() - 10]);
    assert!(npy::NpyImages::open(&dir.path().join("short.npy"))
        .err()
        .unwrap()
        .to_string()
        .contains("truncated"));
}

// ------------------------------------------------------------------ preprocessing, synthetic sets

#[test]
fn augmentation_normalises_crops_and_flips() {
    let set = ImageSet {
        name: "g".into(),
        height: 32,
        width: 32,
        pixels: (0..3072).map(|k| ((k / 3) % 32) as u8 * 8).collect(), // value = 8 × column
        labels: vec![0],
        classes: vec!["a".into()],
    };
    let x = make_batch(&set, &[0], &Augment::test(Normalize::UNIT), 0).unwrap();
    assert_eq!(x.size(), vec![1, 3, 32, 32]);
    assert!((x.double_value(&[0, 1, 5, 3]) - 24.0 / 255.0).abs() < 1e-6);
    let n = Normalize::CIFAR;
    let x = make_batch(&set, &[0], &Augment::test(n), 0).unwrap();
    let want = (8.0 * 3.0 / 255.0 - n.mean[2] as f64) / n.std[2] as f64;
    assert!((x.double_value(&[0, 2, 0, 3]) - want).abs() < 1e-5);
    // Crops with zero padding: over many seeds, some windows shift and show the padding value.
    let aug = Preset::Cifar.train_aug();
    let pad_value = -(n.mean[0] / n.std[0]) as f64;
    let mut saw_pad = false;
    let mut saw_flip = false;
    for seed in 0..20 {
        let x = make_batch(&set, &[0], &aug, seed).unwrap();
        let row: Vec<f64> = (0..32).map(|c| x.double_value(&[0, 0, 16, c])).collect();
        saw_pad |= row.iter().any(|v| (v - pad_value).abs() < 1e-5);
        saw_flip |= row[31] < row[0] - 1.0;
    }
    assert!(saw_pad && saw_flip);
    // Deterministic per seed.
    let a = make_batch(&set, &[0, 0], &aug, 7).unwrap();
    let b = make_batch(&set, &[0, 0], &aug, 7).unwrap();
    assert!(a.equal(&b));
}

fn stats(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (
        m,
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

#[test]
fn synthetic_sets_have_the_stated_statistics() {
    let vals = |k, unit| {
        Vec::<f32>::try_from(&synthetic::generate(k, 200, 32, unit, 3).view([-1])).unwrap()
    };
    // Gaussian N(0, 0.5²) clipped to [-1, 1]: mean 0, std 0.4797, P(|x| = 1) = 2(1 − Φ(2)) = 0.0455.
    let g = vals(Synthetic::Gaussian, false);
    let (m, s) = stats(&g);
    assert!(m.abs() < 0.01 && (s - 0.4797).abs() < 0.01, "{m} {s}");
    let clipped = g.iter().filter(|x| x.abs() == 1.0).count() as f64 / g.len() as f64;
    assert!((clipped - 0.0455).abs() < 0.004, "{clipped}");
    // SVHN: N(0.5, 0.5²) clipped to [0, 1].
    let g = vals(Synthetic::Gaussian, true);
    let (m, _) = stats(&g);
    assert!((m - 0.5).abs() < 0.01 && g.iter().all(|&x| (0.0..=1.0).contains(&x)));
    // Rademacher ±1 / Bernoulli {0, 1}, p = ½.
    let r = vals(Synthetic::Rademacher, false);
    assert!(r.iter().all(|&x| x == 1.0 || x == -1.0) && stats(&r).0.abs() < 0.01);
    let b = vals(Synthetic::Rademacher, true);
    assert!(b.iter().all(|&x| x == 1.0 || x == 0.0) && (stats(&b).0 - 0.5).abs() < 0.01);
    // Blobs: kernel as scipy (radius int(4σ + 0.5)), values −1 or ≥ 0.5 after thresholding at 0.75.
    let k = synthetic::gaussian_kernel(1.5);
    assert_eq!(k.len(), 13);
    assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // 1 / (1 + 2·Σ_{x=1..6} exp(−x²/4.5)) = 0.2659642571610709 (scipy _gaussian_kernel1d(1.5, 0, 6)[6])
    assert!((k[6] - 0.265_964_257_161_07).abs() < 1e-12, "{}", k[6]);
    assert_eq!(synthetic::gaussian_kernel(2.0).len(), 17);
    let bl = vals(Synthetic::Blobs, false);
    assert!(bl.iter().all(|&x| x == -1.0 || (0.5..=1.0).contains(&x)));
    let on = bl.iter().filter(|&&x| x > -1.0).count() as f64 / bl.len() as f64;
    assert!(on > 0.05 && on < 0.6, "fraction of blob pixels {on}");
    // Spatially smooth: horizontal neighbours agree far more often than independent pixels would.
    let t = synthetic::generate(Synthetic::Blobs, 50, 32, false, 4);
    let a = t.narrow(3, 0, 31).gt(-0.5);
    let bb = t.narrow(3, 1, 31).gt(-0.5);
    let agree = a
        .eq_tensor(&bb)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(
        agree > 1.0 - 2.0 * on * (1.0 - on) + 0.1,
        "agreement {agree}"
    );
    let blu = vals(Synthetic::Blobs, true);
    assert!(blu.iter().all(|&x| x == 0.0 || (0.75..=1.0).contains(&x)));
    // 3-D blur of a single 1 at the centre of channel 1: the channel axis is blurred too.
    let mut imp = vec![0.0; 32 * 32 * 3];
    imp[(16 * 32 + 16) * 3 + 1] = 1.0;
    let out = synthetic::gaussian_blur_3d(&imp, 32, 1.5);
    let (c0, c1, c2) = (
        out[(16 * 32 + 16) * 3],
        out[(16 * 32 + 16) * 3 + 1],
        out[(16 * 32 + 16) * 3 + 2],
    );
    assert!(
        c0 > 0.0 && (c0 - c2).abs() < 1e-15 && c1 > c0,
        "{c0} {c1} {c2}"
    );
}

// ------------------------------------------------------------------ model and training

#[test]
fn wrn_has_the_reference_shape_and_init() {
    let _torch = torch_lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = WideResNet::new(&vs.root(), &WrnConfig::wrn_40_2(10)).unwrap();
    let n: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(n, 2_243_546, "WRN-40-2 parameter count of the reference");
    let vars = vs.variables();
    assert!(
        vars.contains_key("block1.layer.0.conv1.weight")
            && vars.contains_key("block2.layer.0.convShortcut.weight")
    );
    assert!(
        vars.contains_key("block1.layer.0.convShortcut.weight"),
        "16 → 32 channels: shortcut in block1 layer 0"
    );
    assert!(!vars.contains_key("block1.layer.1.convShortcut.weight"));
    assert_eq!(vars["bn1.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    assert_eq!(
        vars["fc.bias"].abs().sum(Kind::Float).double_value(&[]),
        0.0
    );
    let w = &vars["block3.layer.2.conv2.weight"]; // 128 out channels, 3x3: std sqrt(2/1152)
    let std = w.std(true).double_value(&[]);
    assert!((std - (2.0f64 / 1152.0).sqrt()).abs() < 0.002, "{std}");
    let fc = &vars["fc.weight"];
    assert!(fc.abs().max().double_value(&[]) <= 1.0 / 128f64.sqrt() + 1e-6);
    let x = tch::Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(m.logits(&x, false).size(), vec![2, 10]);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = WideResNet::new(&vs.root(), &WrnConfig::wrn_16_4(10)).unwrap();
    let n: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(n, 2_748_890);
    let x = tch::Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    assert_eq!(m.logits(&x, false).size(), vec![1, 10]);
    assert!(WrnConfig {
        depth: 12,
        ..WrnConfig::wrn_40_2(10)
    }
    .validate()
    .is_err());
}

#[test]
fn cosine_schedule_is_per_step_and_stepped_first() {
    let c = VisionTrainConfig {
        lr: 0.1,
        ..Default::default()
    };
    assert!((c.cosine(0, 100) - 0.1).abs() < 1e-12);
    assert!((c.cosine(100, 100) - 1e-6).abs() < 1e-12);
    assert!((c.cosine(50, 100) - (1e-6 + (0.1 - 1e-6) * 0.5)).abs() < 1e-12);
    assert_eq!(c.lr_for_step(0, 100), c.cosine(1, 100));
    let d = oe::vision::pipeline::paper_defaults(Preset::Svhn, Method::OeFinetune);
    assert_eq!((d.epochs, d.lr, d.oe_batch_size), (5, 1e-4, 256));
    let d = oe::vision::pipeline::paper_defaults(Preset::TinyImagenet, Method::OeFinetune);
    assert_eq!(
        (d.epochs, d.lr, d.oe_batch_size, d.batch_size),
        (10, 0.001, 180, 128)
    );
    let d = oe::vision::pipeline::paper_defaults(Preset::Cifar, Method::Baseline);
    assert_eq!(
        (d.epochs, d.lr, d.momentum, d.nesterov, d.weight_decay),
        (100, 0.1, 0.9, true, 5e-4)
    );
}

#[test]
fn sgd_matches_pytorch_nesterov_by_hand() {
    // One parameter p = 1, loss = 3p → g = 3; wd 0.1, m 0.9, lr 0.5.
    // step 1: d = 3 + 0.1 = 3.1; buf = 3.1; d = 3.1 + 0.9·3.1 = 5.89; p = 1 − 2.945 = −1.945
    // step 2: d = 3 − 0.1945 = 2.8055; buf = 0.9·3.1 + 2.8055 = 5.5955; d = 2.8055 + 5.03595 = 7.84145
    //         p = −1.945 − 3.920725 = −5.865725
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().ones("p", &[1]);
    let mut sgd = Sgd::new(&vs, 0.9, true, 0.1);
    for want in [-1.945, -5.865725] {
        sgd.zero_grad();
        (&p * 3.0).sum(Kind::Float).backward();
        sgd.step(0.5);
        assert!(
            (p.double_value(&[0]) - want).abs() < 1e-5,
            "{}",
            p.double_value(&[0])
        );
    }
}

fn random_set(n: usize, classes: usize, seed: u8) -> ImageSet {
    ImageSet {
        name: "gen".into(),
        height: 32,
        width: 32,
        pixels: (0..n * 3072)
            .map(|k| ((k as u64 * 2654435761 + seed as u64) >> 7) as u8)
            .collect(),
        labels: (0..n).map(|i| (i % classes) as i64).collect(),
        classes: (0..classes).map(|c| c.to_string()).collect(),
    }
}

#[test]
fn small_wrn_trains_with_and_without_oe_on_generated_data() {
    let _torch = torch_lock();
    tch::manual_seed(0);
    let train = random_set(48, 4, 1);
    let oe_set = ImageSet {
        labels: vec![],
        ..random_set(64, 4, 9)
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = WrnConfig {
        depth: 10,
        widen_factor: 1,
        dropout: 0.3,
        num_classes: 4,
    };
    let model = WideResNet::new(&vs.root(), &cfg).unwrap();
    let mut sgd = Sgd::new(&vs, 0.9, true, 5e-4);
    let tc = VisionTrainConfig {
        epochs: 2,
        lr: 0.05,
        batch_size: 16,
        oe_batch_size: 32,
        ..Default::default()
    };
    let before = vs.variables()["conv1.weight"].copy();
    let mut saves = 0;
    let data = PhaseData {
        train: &train,
        train_aug: Preset::Cifar.train_aug(),
        oe: None,
    };
    let st = train_phase(
        "baseline",
        Method::Baseline,
        &model,
        &mut sgd,
        &data,
        &tc,
        CheckpointState::default(),
        &mut Silent,
        &mut |_, _| {
            saves += 1;
            Ok(())
        },
    )
    .unwrap();
    assert_eq!((st.epochs_done, saves, st.history[0].steps), (2, 2, 3));
    assert!(st.history.iter().all(|h| h.loss.is_finite()));
    assert!(!before.equal(&vs.variables()["conv1.weight"]));
    // OE: 64 outliers / 32 per batch = 2 batches, so zip() truncates the 3-step epoch to 2.
    let data = PhaseData {
        train: &train,
        train_aug: Preset::Cifar.train_aug(),
        oe: Some((&oe_set, Preset::Cifar.oe_aug())),
    };
    let oe_cfg = VisionTrainConfig {
        epochs: 1,
        lr: 0.001,
        ..tc.clone()
    };
    let st = train_phase(
        "oe",
        Method::OeFinetune,
        &model,
        &mut sgd,
        &data,
        &oe_cfg,
        CheckpointState::default(),
        &mut Silent,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(st.history[0].steps, 2);
    let cyc = VisionTrainConfig {
        pairing: Pairing::Cycle,
        ..oe_cfg
    };
    let st = train_phase(
        "oe2",
        Method::OeFinetune,
        &model,
        &mut sgd,
        &data,
        &cyc,
        CheckpointState::default(),
        &mut Silent,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(st.history[0].steps, 3);
    // OE without outliers is a configuration error.
    let data = PhaseData {
        train: &train,
        train_aug: Preset::Cifar.train_aug(),
        oe: None,
    };
    assert!(train_phase(
        "x",
        Method::OeScratch,
        &model,
        &mut sgd,
        &data,
        &tc,
        CheckpointState::default(),
        &mut Silent,
        &mut |_, _| Ok(())
    )
    .is_err());
}

fn cifar_jpeg() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/cifar10-jpeg/cifar10-test-jpeg.tar.gz"
    ));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent", p.display());
        None
    }
}

#[test]
fn pipeline_trains_and_evaluates_on_the_cifar10_jpeg_folder() {
    let _torch = torch_lock();
    let Some(tgz) = cifar_jpeg() else { return };
    let dir = tmp();
    // A folder of outliers made of generated images (any folder works as an OE source).
    let oe_dir = dir.path().join("oe-images");
    for i in 0..40u8 {
        write(&oe_dir.join(format!("{i}.png")), &{
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([x as u8 * 8, y as u8 * 8, i * 6])
            });
            let mut c = std::io::Cursor::new(Vec::new());
            img.write_to(&mut c, image::ImageFormat::Png).unwrap();
            c.into_inner()
        });
    }
    let mut eval = oe::vision::protocol::default_eval_config();
    eval.repeats = 2;
    let small = VisionTrainConfig {
        epochs: 1,
        lr: 0.01,
        batch_size: 32,
        oe_batch_size: 32,
        max_steps_per_epoch: Some(3),
        ..Default::default()
    };
    let req = oe::vision::pipeline::VisionTrainRequest {
        in_label: None,
        in_dataset: tgz.to_string_lossy().to_string(),
        oe_source: Some(oe_dir.to_string_lossy().to_string()),
        oe_method: Method::OeFinetune,
        data_root: dir.path().to_path_buf(),
        out_dir: dir.path().join("run"),
        in_options: Default::default(),
        model: Some(WrnConfig {
            depth: 10,
            widen_factor: 1,
            dropout: 0.3,
            num_classes: 0,
        }),
        baseline: small.clone(),
        oe: VisionTrainConfig {
            oe_order: oe::vision::train::OeOrder::Shuffle,
            ..small
        },
        eval,
        ood_sets: Some(vec![
            "gaussian".into(),
            "blobs".into(),
            oe_dir.to_string_lossy().to_string(),
        ]),
        hold_out: true,
        calibrate: true,
        max_train: Some(320),
        max_test: Some(150),
        resume: false,
        device: Device::Cpu,
    };
    let out = oe::vision::pipeline::run_train(&req, &mut Silent).unwrap();
    assert_eq!(out.dirs.len(), 2);
    let (_, r) = &out.reports[1];
    assert_eq!(r.detection.n_in, 150);
    assert_eq!(r.detection.sets.len(), 3);
    assert_eq!(
        r.detection.sets[0].n_ood, 30,
        "1:5 (150 / 5; fewer than one test batch of 200)"
    );
    let c = r.calibration.as_ref().unwrap();
    assert!(c.tuned && c.n_validation == 32 && c.rms.is_finite());
    for s in &r.detection.sets {
        assert!((0.0..=1.0).contains(&s.auroc.mean) && s.draws.len() == 2);
    }
    assert!(out.table.contains("gaussian") && out.table.contains("mean"));
    let run = dir.path().join("run");
    for f in [
        "baseline/model.safetensors",
        "baseline/run.json",
        "baseline/train_log.json",
        "oe/model.safetensors",
        "oe/eval-msp-paper/results.csv",
        "oe/eval-msp-paper/scores.parquet",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    assert!(
        !run.join("oe/checkpoint.json").exists(),
        "checkpoints are removed when a phase ends"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("oe/run.json")).unwrap()).unwrap();
    assert_eq!(cfg["classes"].as_array().unwrap().len(), 10);
    assert_eq!(cfg["init_from"], "../baseline");
    // Rerunning without --resume refuses; with --resume both phases are already trained.
    assert!(oe::vision::pipeline::run_train(&req, &mut Silent).is_err());
    let again = oe::vision::pipeline::run_train(
        &oe::vision::pipeline::VisionTrainRequest {
            resume: true,
            ..req.clone()
        },
        &mut Silent,
    )
    .unwrap();
    assert_eq!(again.reports.len(), 2);
    // The loaded model scores as it did.
    let m = oe::vision::model_dir::VisionModel::load(&run.join("oe"), Device::Cpu).unwrap();
    assert_eq!(m.config.model.depth, 10);
    assert_eq!(m.config.method_label(), oe::train::MethodLabel::Oe);

    // `oe-vision eval` (the library's run_eval) writes the same results again, with the method
    // read from run.json.
    let ev = oe::vision::pipeline::run_eval(
        &oe::vision::pipeline::VisionEvalRequest {
            model_dir: run.join("oe"),
            method: None,
            data_root: Some(dir.path().to_path_buf()),
            eval: req.eval.clone(),
            ood_sets: req.ood_sets.clone(),
            max_test: Some(150),
            calibrate: true,
            device: Device::Cpu,
        },
        &mut Silent,
    )
    .unwrap();
    assert_eq!(ev.results_dir, run.join("oe/eval-msp-paper"));
    assert_eq!(ev.report.detection.sets.len(), 3);
    assert!(
        ev.table
            .starts_with(&format!("{}: FPR95", tgz.canonicalize().unwrap().display())),
        "{}",
        ev.table
    );

    // `oe-text report` reads this real vision run like a text run: one results schema.
    let files = oe::report::aggregate::find_results(std::slice::from_ref(&run)).unwrap();
    assert_eq!(files.len(), 2, "baseline and oe evaluations");
    let agg = oe::report::aggregate::aggregate(
        &files,
        &[
            oe::report::aggregate::GroupKey::Method,
            oe::report::aggregate::GroupKey::Model,
        ],
    )
    .unwrap();
    let df = &agg.frame;
    assert_eq!(agg.fpr.name, "fpr95_closest_out");
    // 2 methods × (3 OOD sets + mean).
    assert_eq!(df.height(), 8);
    let col = |c: &str| -> Vec<String> {
        let s = df
            .column(c)
            .unwrap()
            .cast(&polars::prelude::DataType::String)
            .unwrap();
        s.str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect()
    };
    let mut methods = col("method");
    methods.dedup();
    assert_eq!(methods, ["baseline", "oe"]);
    assert!(col("model").iter().all(|m| m == "wrn-10-1"));
    for c in [
        "paper_fpr95_pct",
        "delta_fpr95_pp",
        "fpr95_closest_out_mean",
    ] {
        assert!(df.column(c).is_ok(), "no column {c}");
    }
    // The per-run results carry calibration (null for text).
    let results = std::fs::read_to_string(run.join("oe/eval-msp-paper/results.csv")).unwrap();
    let header: Vec<&str> = results.lines().next().unwrap().split(',').collect();
    for c in [
        "protocol",
        "calib_rms",
        "calib_mad",
        "calib_soft_f1",
        "paper_fpr95_pct",
    ] {
        assert!(header.contains(&c), "{c} not in {header:?}");
    }
    // And through the binary, as a user runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oe-text"))
        .args(["report", "--bootstrap", "20", "--by", "method"])
        .arg(&run)
        .output()
        .unwrap();
    common::check(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("FPR95 %") && table.contains("gaussian"),
        "{table}"
    );
}

/// Panics in the first step of epoch 2 (after epoch 1's checkpoint was written): an interruption.
struct Interrupt;
impl oe::train::Observer for Interrupt {
    fn step(&mut self, _phase: &str, epoch: usize, _step: usize, _loss: f64, _acc: f64) {
        if epoch == 1 {
            panic!("simulated interruption");
        }
    }
}

#[test]
fn resume_continues_exactly_from_the_last_epoch() {
    let _torch = torch_lock();
    let Some(tgz) = cifar_jpeg() else { return };
    let small = VisionTrainConfig {
        epochs: 2,
        lr: 0.01,
        batch_size: 32,
        max_steps_per_epoch: Some(2),
        ..Default::default()
    };
    let mut eval = oe::vision::protocol::default_eval_config();
    eval.repeats = 1;
    let dir = tmp();
    let req = oe::vision::pipeline::VisionTrainRequest {
        in_label: None,
        in_dataset: tgz.to_string_lossy().to_string(),
        oe_source: None,
        oe_method: Method::OeFinetune,
        data_root: dir.path().to_path_buf(),
        out_dir: dir.path().join("a"),
        in_options: Default::default(),
        model: Some(WrnConfig {
            depth: 10,
            widen_factor: 1,
            dropout: 0.3,
            num_classes: 0,
        }),
        baseline: small.clone(),
        oe: small,
        eval,
        ood_sets: Some(vec!["rademacher".into()]),
        hold_out: false,
        calibrate: false,
        max_train: Some(128),
        max_test: Some(50),
        resume: false,
        device: Device::Cpu,
    };
    oe::vision::pipeline::run_train(&req, &mut Silent).unwrap();
    let b = oe::vision::pipeline::VisionTrainRequest {
        out_dir: dir.path().join("b"),
        ..req.clone()
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        oe::vision::pipeline::run_train(&b, &mut Interrupt)
    }));
    assert!(r.is_err());
    let ck: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("b/baseline/checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ck["epochs_done"], 1);
    assert!(dir.path().join("b/baseline/momentum.safetensors").is_file());
    let e = oe::vision::pipeline::run_train(&b, &mut Silent)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    oe::vision::pipeline::run_train(
        &oe::vision::pipeline::VisionTrainRequest { resume: true, ..b },
        &mut Silent,
    )
    .unwrap();
    let load = |p: &str| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(dir.path().join(p))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (wa, wb) = (
        load("a/baseline/model.safetensors"),
        load("b/baseline/model.safetensors"),
    );
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(wb.iter()) {
        assert_eq!(na, nb);
        let d = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-5, "{na}: resumed run differs by {d}");
    }
}

// ------------------------------------------------------------------ class splits, fetch, small sets

/// A labelled image folder `root/<class>/<i>.png` with `per` images per class, each a flat colour
/// that tells the class apart (so a tiny WRN can learn it).
fn class_folder(root: &Path, classes: &[&str], per: usize) {
    for (c, name) in classes.iter().enumerate() {
        for i in 0..per {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([
                    (c * 60 % 256) as u8,
                    ((x + y) as usize * 3 + i) as u8,
                    (255 - c * 40 % 256) as u8,
                ])
            });
            let mut b = std::io::Cursor::new(Vec::new());
            img.write_to(&mut b, image::ImageFormat::Png).unwrap();
            write(&root.join(name).join(format!("{i}.png")), &b.into_inner());
        }
    }
}

#[test]
fn folder_specs_select_classes_and_split_by_seed() {
    use oe::vision::data::folder::FolderSpec;
    let dir = tmp();
    let root = dir.path().join("imgs");
    class_folder(&root, &["cat", "dog", "frog", "ship"], 5);
    let r = root.to_string_lossy().to_string();
    // `#` splits only when the path as written does not exist.
    let s = FolderSpec::parse(&format!("{r}#ship+cat")).unwrap();
    assert_eq!(s.path, root);
    assert_eq!(s.classes, Some(vec!["ship".to_string(), "cat".to_string()]));
    assert_eq!(FolderSpec::parse(&r).unwrap().classes, None);
    for bad in ["#cat++dog", "#cat+cat", "#"] {
        assert!(FolderSpec::parse(&format!("{r}{bad}")).is_err(), "{bad}");
    }
    // Kept classes are relabelled in sorted order, like an ImageFolder holding only them.
    let f = s.labelled(32).unwrap();
    assert_eq!(f.classes, vec!["cat", "ship"]);
    assert_eq!(f.items.len(), 10);
    for ((p, _), &l) in f.items.iter().zip(&f.labels) {
        assert_eq!(p.starts_with("cat/"), l == 0, "{p} -> {l}");
    }
    assert!(f.name.ends_with("#ship+cat"), "{}", f.name);
    let e = FolderSpec::parse(&format!("{r}#cat+horse"))
        .unwrap()
        .labelled(32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no class folder `horse`") && e.contains("cat, dog, frog, ship"),
        "{e}"
    );
    // The in-distribution split: a seeded fifth is the test split, reproducible, disjoint.
    let opts = |seed| data::InOptions {
        split_seed: seed,
        ..Default::default()
    };
    let spec = format!("{r}#cat+dog+frog");
    let a = data::load_in_distribution(&spec, dir.path(), &opts(0)).unwrap();
    let b = data::load_in_distribution(&spec, dir.path(), &opts(0)).unwrap();
    let c = data::load_in_distribution(&spec, dir.path(), &opts(7)).unwrap();
    assert_eq!((a.train.len(), a.test.len()), (12, 3));
    assert_eq!(a.train.classes, vec!["cat", "dog", "frog"]);
    assert_eq!(a.test.pixels, b.test.pixels);
    assert_ne!(a.test.pixels, c.test.pixels, "another seed, another split");
    let (tr, te) = data::folder_split(15, 0);
    assert!(te.iter().all(|i| !tr.contains(i)) && tr.len() + te.len() == 15);
    // Outlier and OOD sources take the same syntax, unlabelled.
    let oe = data::load_oe_source(&format!("{r}#ship"), dir.path(), 32).unwrap();
    assert_eq!(oe.len(), 5);
    let ood = data::load_ood_source(&format!("{r}#dog+ship"), dir.path(), 32)
        .unwrap()
        .unwrap();
    assert_eq!(ood.len(), 10);
    assert_eq!(ood.label(0), None);
    // Recorded specs are absolute, with their selection.
    let rel = std::env::current_dir().unwrap();
    let abs = data::absolute_spec(&format!("{r}#cat+dog"));
    assert!(
        Path::new(abs.split('#').next().unwrap()).is_absolute(),
        "{abs} (cwd {rel:?})"
    );
    assert!(abs.ends_with("#cat+dog"));
    assert_eq!(data::absolute_spec("cifar10"), "cifar10");
    assert_eq!(
        data::split_label("near=/x/y#a+b"),
        (Some("near"), "/x/y#a+b")
    );
    assert_eq!(data::split_label("/x/a=b"), (None, "/x/a=b"));
}

#[test]
fn cifar10_jpeg_class_split_counts() {
    let Some(tgz) = cifar_jpeg() else { return };
    let t = tgz.to_string_lossy();
    let d = data::load_in_distribution(
        &format!("{t}#airplane+automobile+bird+cat+ship+truck"),
        Path::new("."),
        &Default::default(),
    )
    .unwrap();
    // 1,000 images per class; a fifth of the 6,000 is the test split.
    assert_eq!((d.train.len(), d.test.len()), (4800, 1200));
    assert_eq!(
        d.train.classes,
        vec!["airplane", "automobile", "bird", "cat", "ship", "truck"]
    );
    let mut per = [0usize; 6];
    d.test.labels.iter().for_each(|&l| per[l as usize] += 1);
    assert!(per.iter().all(|&n| (150..=250).contains(&n)), "{per:?}");
    let oe = data::load_oe_source(&format!("{t}#deer+horse"), Path::new("."), 32).unwrap();
    assert_eq!(oe.len(), 2000);
}

/// A CIFAR-100 python archive (`cifar-100-python/{train,test,meta}`, the canonical layout) with
/// `n_train` / `n_test` generated images, fine labels `i % 100`.
fn cifar100_archive(path: &Path, n_train: usize, n_test: usize) {
    let f = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut ar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        ar.append_data(&mut h, name, bytes).unwrap();
    };
    let mut k = 0;
    for (split, n) in [("train", n_train), ("test", n_test)] {
        let data: Vec<u8> = (k..k + n).flat_map(planar).collect();
        let labels: Vec<u8> = (k..k + n).map(|i| (i % 100) as u8).collect();
        add(
            &format!("cifar-100-python/{split}"),
            &pickle_py3("fine_labels", &labels, &data, n),
        );
        k += n;
    }
    // meta: {'fine_label_names': ['f00', ..., 'f99']} (protocol 2)
    let mut m = vec![0x80, 2, b'}', b'(', b'U', 16];
    m.extend_from_slice(b"fine_label_names(");
    for c in 0..100u8 {
        m.extend_from_slice(&[b'U', 3, b'f', b'0' + c / 10, b'0' + c % 10]);
    }
    m.extend_from_slice(b"lu.");
    add("cifar-100-python/meta", &m);
    ar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn cifar100_fetch_downloads_verifies_and_unpacks_from_a_loopback_server() {
    use oe::datasets::fetch;
    let srv = tmp();
    cifar100_archive(&srv.path().join("cifar-100-python.tar.gz"), 30, 12);
    let base = common::serve(srv.path().to_path_buf());
    let md5 = fetch::md5_file(&srv.path().join("cifar-100-python.tar.gz")).unwrap();
    // The real manifest, pointed at the loopback copy and its checksum (the generated archive is
    // not the published one).
    let real = data::manifests::get("cifar100").unwrap();
    let with = |mode: &str| {
        let mut m = real.clone();
        let a = m.archives.iter_mut().find(|a| a.id == "python").unwrap();
        a.url = format!("{base}/{mode}/cifar-100-python.tar.gz");
        a.md5 = Some(md5.clone());
        m
    };
    let opts = fetch::FetchOptions {
        progress: None,
        ..Default::default()
    };
    let root = tmp();
    // A corrupted or truncated transfer is refused and leaves nothing.
    for mode in ["corrupt", "truncate"] {
        let e = fetch::fetch_dataset(
            &with(mode),
            root.path(),
            &opts,
            &data::manifests::check_loader_counts,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("md5") || e.contains("truncated"), "{mode}: {e}");
        assert!(!root.path().join("cifar-100-python").exists(), "{mode}");
        common::no_leftovers(root.path());
    }
    let r = fetch::fetch_dataset(
        &with("good"),
        root.path(),
        &opts,
        &data::manifests::check_loader_counts,
    )
    .unwrap();
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(
        r.iter().all(|x| matches!(x, fetch::Fetched::Downloaded(_))),
        "{r:?}"
    );
    common::no_leftovers(root.path());
    let train = cifar::load(root.path(), cifar::Cifar::C100, true).unwrap();
    let test = cifar::load(root.path(), cifar::Cifar::C100, false).unwrap();
    assert_eq!((train.len(), test.len()), (30, 12));
    assert_eq!(train.classes[7], "f07");
    assert_eq!(test.labels[0], 30);
    check_hwc(&test, 1, 31);
    // Again: nothing to do.
    let r = fetch::fetch_dataset(
        &with("good"),
        root.path(),
        &opts,
        &data::manifests::check_loader_counts,
    )
    .unwrap();
    assert!(
        r.iter()
            .all(|x| matches!(x, fetch::Fetched::AlreadyPresent(_))),
        "{r:?}"
    );
}

fn oe_vision(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_oe-vision"));
    c.args(args)
        .env_remove("OE_DATA_MIRROR")
        .env_remove("OE_DATA_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn missing_cifar100_says_what_where_and_how_and_fetch_checks_the_published_md5() {
    let root = tmp();
    let r = root.path().to_string_lossy().to_string();
    let run = root.path().join("run");
    let o = oe_vision(
        &[
            "train",
            "--in",
            "cifar100",
            "--data-dir",
            &r,
            "--out",
            &run.to_string_lossy(),
            "--device",
            "cpu",
        ],
        &[],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for want in [
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5 eb9058c3a382ffc7106e4002c42a8d85",
        "oe-vision data fetch cifar100",
        "--data-dir",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }
    assert!(
        !run.exists(),
        "no run directory for a run that could not start"
    );
    // A mirror with another archive under the canonical name: the published MD5 refuses it.
    let srv = tmp();
    cifar100_archive(&srv.path().join("cifar-100-python.tar.gz"), 4, 2);
    let base = common::serve(srv.path().to_path_buf());
    let o = oe_vision(
        &[
            "data",
            "fetch",
            "cifar100",
            "--data-dir",
            &r,
            "--mirror",
            &format!("{base}/good"),
        ],
        &[],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("differs from the published eb9058c3a382ffc7106e4002c42a8d85"),
        "{e}"
    );
    assert!(!root.path().join("cifar-100-python").exists());
    common::no_leftovers(root.path());
    // verify: a missing dataset fails, a missing root fails.
    let o = oe_vision(&["data", "verify", "cifar100", "--data-dir", &r], &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("MISSING"));
    let o = oe_vision(
        &["data", "verify", "--data-dir", "/nonexistent/oe-root"],
        &[],
    );
    assert!(!o.status.success());
}

#[test]
fn a_small_test_split_skips_calibration_with_a_warning_instead_of_failing() {
    let _torch = torch_lock();
    let dir = tmp();
    let root = dir.path().join("imgs");
    class_folder(&root, &["a", "b"], 30); // 60 images: 48 train / 12 test
    let run = dir.path().join("run");
    let o = oe_vision(
        &[
            "train",
            "--in",
            &format!("two={}", root.display()),
            "--depth",
            "10",
            "--widen",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--ood",
            "gaussian",
            "--repeats",
            "2",
            "--out",
            &run.to_string_lossy(),
            "--device",
            "cpu",
            "--quiet",
        ],
        &[],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("calibration skipped"), "{e}");
    let rep: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.join("baseline/eval-msp-paper/report.json")).unwrap(),
    )
    .unwrap();
    assert!(rep["calibration"].is_null(), "recorded as absent");
    assert!(rep["sets"][0]["auroc"]["mean"].is_number(), "{rep}");
    // The label names the data in results and tables; the spec is recorded absolute.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("baseline/run.json")).unwrap()).unwrap();
    assert_eq!(cfg["in_label"], "two");
    assert!(Path::new(cfg["in_dataset"].as_str().unwrap()).is_absolute());
    assert!(String::from_utf8_lossy(&o.stdout).contains("two"));
    // Epoch summaries carry the time spent waiting for data.
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("baseline/train_log.json")).unwrap())
            .unwrap();
    let w = &log["history"][0]["data_wait_seconds"];
    assert!(w.as_f64().is_some_and(|w| w >= 0.0), "{log}");
}

#[test]
fn a_typo_in_an_ood_set_fails_before_training() {
    let dir = tmp();
    let root = dir.path().join("imgs");
    class_folder(&root, &["a", "b"], 5);
    let run = dir.path().join("run");
    let o = oe_vision(
        &[
            "train",
            "--in",
            &root.to_string_lossy(),
            "--ood",
            "gaussian,textrues",
            "--out",
            &run.to_string_lossy(),
            "--device",
            "cpu",
        ],
        &[],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("unknown OOD set `textrues`"), "{e}");
    assert!(!run.exists(), "nothing trained, nothing written");
}

#[test]
fn image_folders_do_not_follow_directory_links() {
    let dir = tmp();
    let root = dir.path().join("imgs");
    class_folder(&root, &["a"], 2);
    std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
    let items = folder::scan(&root).unwrap();
    assert_eq!(
        items.len(),
        2,
        "{:?}",
        items.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
}

#[test]
fn an_interrupted_fetch_leaves_no_staging_and_stale_staging_is_removed() {
    let root = tmp();
    let r = root.path().to_string_lossy().to_string();
    let srv = tmp();
    cifar100_archive(&srv.path().join("cifar-100-python.tar.gz"), 400, 10);
    let base = common::serve(srv.path().to_path_buf());
    // A staging folder whose owner is gone (a fetch killed with SIGKILL): removed by the next fetch.
    let stale = root.path().join(".oe-staging-old");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("owner"), "4194303").unwrap(); // above the kernel's pid_max
    std::fs::write(stale.join("partial"), "x").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_oe-vision"))
        .args(["data", "fetch", "cifar100", "--data-dir", &r, "--mirror"])
        .arg(format!("{base}/slow"))
        .env_remove("OE_DATA_MIRROR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the download to be under way (its staging folder exists), then SIGINT.
    let t0 = std::time::Instant::now();
    let staging = || {
        std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".oe-staging-"))
    };
    while !staging() || stale.exists() {
        assert!(t0.elapsed().as_secs() < 30, "the fetch never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("stopped by a signal"), "{e}");
    assert!(
        t0.elapsed().as_secs() < 18,
        "stopped at the signal, not after the transfer"
    );
    common::no_leftovers(root.path());
    assert!(!root.path().join("cifar-100-python").exists());
}
