//! A minimal MATLAB `.mat` (level 5) reader for numeric matrices, as the SVHN files use
//! (`X`: uint8 `[32, 32, 3, n]`, `y`: `[n, 1]`), stored plainly or in zlib-compressed
//! (`miCOMPRESSED`) elements. Little-endian files only; cells, structs, sparse and complex arrays
//! are skipped.

use super::{column_major_to_hwc, ImageSet};
use crate::error::{OeError, Result};
use std::io::Read;
use std::path::Path;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// One numeric variable. `data` holds the raw little-endian values of type `mi_type`, in MATLAB
/// (column-major) order.
#[derive(Clone, Debug)]
pub struct MatArray {
    pub name: String,
    pub dims: Vec<usize>,
    /// MATLAB class (`mxUINT8_CLASS` = 9, `mxDOUBLE_CLASS` = 6, ...).
    pub class: u8,
    pub mi_type: u32,
    pub data: Vec<u8>,
}

fn elem_size(t: u32) -> Option<usize> {
    Some(match t {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return None,
    })
}

impl MatArray {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as f64 (any numeric storage type).
    pub fn to_f64(&self) -> Vec<f64> {
        let sz = elem_size(self.mi_type).unwrap_or(1);
        self.data
            .chunks_exact(sz)
            .map(|c| match self.mi_type {
                MI_INT8 => c[0] as i8 as f64,
                MI_UINT8 => c[0] as f64,
                MI_INT16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                MI_UINT16 => u16::from_le_bytes([c[0], c[1]]) as f64,
                MI_INT32 => i32::from_le_bytes(c.try_into().unwrap()) as f64,
                MI_UINT32 => u32::from_le_bytes(c.try_into().unwrap()) as f64,
                MI_SINGLE => f32::from_le_bytes(c.try_into().unwrap()) as f64,
                MI_DOUBLE => f64::from_le_bytes(c.try_into().unwrap()),
                MI_INT64 => i64::from_le_bytes(c.try_into().unwrap()) as f64,
                _ => u64::from_le_bytes(c.try_into().unwrap()) as f64,
            })
            .collect()
    }
}

struct Tag {
    ty: u32,
    n: usize,
    /// Offset of the data.
    start: usize,
    /// Offset after the (padded) element.
    next: usize,
}

fn tag(b: &[u8], pos: usize, origin: &str) -> Result<Tag> {
    if pos + 8 > b.len() {
        return Err(OeError::Data(format!(
            "{origin}: truncated element tag at byte {pos}"
        )));
    }
    let w0 = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap());
    let t = if w0 >> 16 != 0 {
        // Small data element: type and size share the first word; data in the second.
        Tag {
            ty: w0 & 0xffff,
            n: (w0 >> 16) as usize,
            start: pos + 4,
            next: pos + 8,
        }
    } else {
        let n = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let pad = if w0 == MI_COMPRESSED {
            0
        } else {
            (8 - n % 8) % 8
        };
        Tag {
            ty: w0,
            n,
            start: pos + 8,
            next: pos + 8 + n + pad,
        }
    };
    if t.start + t.n > b.len() {
        return Err(OeError::Data(format!(
            "{origin}: element at byte {pos} claims {} bytes, past the end ({} bytes)",
            t.n,
            b.len()
        )));
    }
    Ok(t)
}

/// Parses the content of a miMATRIX element (`b` = the whole element including its tag). Takes
/// ownership so the (possibly huge) data is moved, not copied. `None` for non-numeric arrays.
fn parse_matrix(mut b: Vec<u8>, origin: &str) -> Result<Option<MatArray>> {
    let top = tag(&b, 0, origin)?;
    if top.ty != MI_MATRIX {
        return Ok(None);
    }
    let end = top.start + top.n;
    let flags = tag(&b, top.start, origin)?;
    if flags.n < 8 {
        return Err(OeError::Data(format!("{origin}: bad array flags")));
    }
    let w = u32::from_le_bytes(b[flags.start..flags.start + 4].try_into().unwrap());
    let class = (w & 0xff) as u8;
    let complex = w & 0x800 != 0;
    // Numeric classes: 6 (double) ..= 15 (uint64); 1-5 are cell, struct, object, char, sparse.
    if !(6..=15).contains(&class) || complex {
        return Ok(None);
    }
    let dt = tag(&b, flags.next, origin)?;
    let dims: Vec<usize> = b[dt.start..dt.start + dt.n]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()).max(0) as usize)
        .collect();
    let nt = tag(&b, dt.next, origin)?;
    let name = String::from_utf8_lossy(&b[nt.start..nt.start + nt.n]).to_string();
    let re = tag(&b, nt.next, origin)?;
    if re.next > end + 8 {
        return Err(OeError::Data(format!(
            "{origin}: `{name}`: data past the array end"
        )));
    }
    let sz = elem_size(re.ty).ok_or_else(|| {
        OeError::Data(format!(
            "{origin}: `{name}`: unsupported data type {}",
            re.ty
        ))
    })?;
    let count: usize = dims.iter().product();
    if re.n != count * sz {
        return Err(OeError::Data(format!(
            "{origin}: `{name}`: {} data bytes for dims {dims:?} of {sz}-byte values",
            re.n
        )));
    }
    b.truncate(re.start + re.n);
    b.drain(..re.start);
    Ok(Some(MatArray {
        name,
        dims,
        class,
        mi_type: re.ty,
        data: b,
    }))
}

/// Reads every numeric array of a level-5 `.mat` file.
pub fn read_mat(path: &Path) -> Result<Vec<MatArray>> {
    let origin = path.display().to_string();
    let b = std::fs::read(path).map_err(|e| OeError::io(path, e))?;
    parse_mat(&b, &origin)
}

/// [`read_mat`] on bytes.
pub fn parse_mat(b: &[u8], origin: &str) -> Result<Vec<MatArray>> {
    if b.len() < 128 {
        return Err(OeError::Data(format!(
            "{origin}: too short for a MAT-file header"
        )));
    }
    if &b[126..128] != b"IM" {
        let hint = if &b[126..128] == b"MI" {
            "big-endian MAT-files are not supported"
        } else if String::from_utf8_lossy(&b[..116]).contains("MATLAB 7.3") {
            "a MATLAB 7.3 (HDF5) file; save it with -v7 or -v6"
        } else {
            "not a level-5 MAT-file"
        };
        return Err(OeError::Data(format!("{origin}: {hint}")));
    }
    let mut out = Vec::new();
    let mut pos = 128;
    while pos + 8 <= b.len() {
        let t = tag(b, pos, origin)?;
        let elem = match t.ty {
            MI_COMPRESSED => {
                let mut dec = Vec::new();
                flate2::read::ZlibDecoder::new(&b[t.start..t.start + t.n])
                    .read_to_end(&mut dec)
                    .map_err(|e| {
                        OeError::Data(format!("{origin}: bad zlib stream at byte {pos}: {e}"))
                    })?;
                Some(dec)
            }
            MI_MATRIX => Some(b[pos..t.start + t.n].to_vec()),
            _ => None,
        };
        if let Some(e) = elem {
            if let Some(a) = parse_matrix(e, origin)? {
                out.push(a);
            }
        }
        pos = t.next;
    }
    Ok(out)
}

/// Loads an SVHN format-2 file (`{train,test,extra}_32x32.mat`): `X` uint8 `[32, 32, 3, n]`, `y`
/// `[n, 1]` with digit 0 labelled 10 (mapped to 0, as torchvision).
pub fn load_svhn(path: &Path, name: &str) -> Result<ImageSet> {
    let origin = path.display().to_string();
    let arrays = read_mat(path)?;
    let mut x = None;
    let mut y = None;
    for a in arrays {
        match a.name.as_str() {
            "X" => x = Some(a),
            "y" => y = Some(a),
            _ => {}
        }
    }
    let x = x.ok_or_else(|| OeError::Data(format!("{origin}: no `X` array")))?;
    let y = y.ok_or_else(|| OeError::Data(format!("{origin}: no `y` array")))?;
    if x.mi_type != MI_UINT8 || x.dims.len() != 4 || x.dims[2] != 3 {
        return Err(OeError::Data(format!(
            "{origin}: `X` is {:?} of type {}; expected uint8 [h, w, 3, n]",
            x.dims, x.mi_type
        )));
    }
    let (h, w, n) = (x.dims[0], x.dims[1], x.dims[3]);
    let labels: Vec<i64> = y
        .to_f64()
        .into_iter()
        .map(|v| if v as i64 == 10 { 0 } else { v as i64 })
        .collect();
    if labels.len() != n {
        return Err(OeError::Data(format!(
            "{origin}: {n} images but {} labels",
            labels.len()
        )));
    }
    let mut pixels = vec![0u8; x.data.len()];
    column_major_to_hwc(&x.data, h, w, &mut pixels);
    let set = ImageSet {
        name: name.to_string(),
        height: h,
        width: w,
        pixels,
        labels,
        classes: (0..10).map(|d| d.to_string()).collect(),
    };
    set.check()?;
    Ok(set)
}
