//! A minimal Python pickle reader (protocols 0-5, the opcodes that dicts of lists, strings and numpy
//! arrays use), enough for the CIFAR python batches. It builds a value tree and never executes code:
//! globals and `REDUCE`/`BUILD` stay symbolic, and [`Py::ndarray`] recognises the numpy array form.
//!
//! Limitation: memoised containers are snapshots, so a container mutated after being memoised and
//! later fetched from the memo shows its earlier contents (CIFAR batches never do this).

use crate::error::{OeError, Result};
use std::rc::Rc;

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// `bytes`, or a Python 2 `str` (as the CIFAR files hold).
    Bytes(Rc<[u8]>),
    Str(Rc<str>),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    Global(String, String),
    /// `callable(*args)`.
    Reduce(Box<Py>, Box<Py>),
    /// `obj.__setstate__(state)`.
    Build(Box<Py>, Box<Py>),
}

/// A numpy array found in a pickle.
#[derive(Clone, Debug)]
pub struct NdArray {
    pub shape: Vec<usize>,
    /// numpy type string without byte order, e.g. `u1`, `i8`, `f4`.
    pub dtype: String,
    pub fortran_order: bool,
    pub data: Rc<[u8]>,
}

impl Py {
    /// Dictionary lookup by a `str` or `bytes` key.
    pub fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(items) => items.iter().find_map(|(k, v)| match k {
                Py::Str(s) if &**s == key => Some(v),
                Py::Bytes(b) if &**b == key.as_bytes() => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Py::Int(i) => Some(*i),
            Py::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// A `str`, or `bytes` decoded as latin-1.
    pub fn as_string(&self) -> Option<String> {
        match self {
            Py::Str(s) => Some(s.to_string()),
            Py::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
            _ => None,
        }
    }

    /// Items of a list or tuple.
    pub fn items(&self) -> Option<&[Py]> {
        match self {
            Py::List(v) | Py::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// Raw bytes of a `bytes`/py2 `str`, or of `_codecs.encode(s, 'latin1')` (how Python 3 pickles
    /// bytes at protocol 2).
    fn raw_bytes(&self) -> Option<Rc<[u8]>> {
        match self {
            Py::Bytes(b) => Some(b.clone()),
            Py::Reduce(f, args) => match (&**f, args.items()) {
                (Py::Global(m, n), Some([Py::Str(s), enc])) if m == "_codecs" && n == "encode" => {
                    let enc = enc.as_string().unwrap_or_default().to_ascii_lowercase();
                    if enc == "latin1" || enc == "latin-1" {
                        Some(
                            s.chars()
                                .map(|c| c as u32 as u8)
                                .collect::<Vec<u8>>()
                                .into(),
                        )
                    } else {
                        None
                    }
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Recognises `numpy.core.multiarray._reconstruct(...)` followed by `BUILD((ver, shape, dtype,
    /// fortran, data))`.
    pub fn ndarray(&self) -> Option<NdArray> {
        let Py::Build(obj, state) = self else {
            return None;
        };
        let Py::Reduce(f, _) = &**obj else {
            return None;
        };
        let Py::Global(m, n) = &**f else { return None };
        if !(m.ends_with("multiarray") && n == "_reconstruct") {
            return None;
        }
        let st = state.items()?;
        if st.len() < 5 {
            return None;
        }
        let shape = st[1]
            .items()?
            .iter()
            .map(|d| d.as_int().map(|x| x as usize))
            .collect::<Option<Vec<_>>>()?;
        // dtype: BUILD(REDUCE(numpy.dtype, ('u1', 0, 1)), (3, '|', ...)).
        let dtype = match &st[2] {
            Py::Build(d, _) | Py::Reduce(d, _) if matches!(&**d, Py::Reduce(..)) => match &**d {
                Py::Reduce(_, a) => a.items()?.first()?.as_string()?,
                _ => return None,
            },
            Py::Reduce(_, a) => a.items()?.first()?.as_string()?,
            _ => return None,
        };
        let fortran_order = matches!(st[3], Py::Bool(true) | Py::Int(1));
        let data = st[4].raw_bytes()?;
        Some(NdArray {
            shape,
            dtype,
            fortran_order,
            data,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    origin: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> OeError {
        OeError::Data(format!("{}: pickle byte {}: {msg}", self.origin, self.pos))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.pos + n > self.b.len() {
            return Err(self.err("truncated file"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.b[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.err("non-UTF-8 text"))
    }
}

fn long_le(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        return None;
    }
    let neg = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

/// Parses a pickle stream into its value. `origin` names the file in errors.
pub fn parse(bytes: &[u8], origin: &str) -> Result<Py> {
    let mut r = Reader {
        b: bytes,
        pos: 0,
        origin,
    };
    let mut stack: Vec<Py> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Py> = Default::default();
    macro_rules! pop {
        () => {
            stack.pop().ok_or_else(|| r.err("stack underflow"))?
        };
    }
    macro_rules! pop_mark {
        () => {{
            let m = marks.pop().ok_or_else(|| r.err("no MARK"))?;
            if m > stack.len() {
                return Err(r.err("bad MARK"));
            }
            stack.split_off(m)
        }};
    }
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            } // PROTO
            0x95 => {
                r.u64()?;
            } // FRAME
            b'.' => return stack.pop().ok_or_else(|| r.err("empty stack at STOP")),
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(Py::Dict(vec![])),
            b']' => stack.push(Py::List(vec![])),
            b')' => stack.push(Py::Tuple(vec![])),
            0x8f => stack.push(Py::List(vec![])), // EMPTY_SET
            b'N' => stack.push(Py::None),
            0x88 => stack.push(Py::Bool(true)),
            0x89 => stack.push(Py::Bool(false)),
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(Py::Int(v as i64))
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(Py::Int(v as i64))
            }
            b'M' => {
                let v = r.u16()?;
                stack.push(Py::Int(v as i64))
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    r.u8()? as usize
                } else {
                    r.u32()? as usize
                };
                let v = long_le(r.take(n)?).ok_or_else(|| r.err("integer too large"))?;
                stack.push(Py::Int(v))
            }
            b'I' | b'L' => {
                let l = r.line()?.trim_end_matches('L');
                let v = match l {
                    "00" => Py::Bool(false),
                    "01" => Py::Bool(true),
                    _ => Py::Int(l.parse().map_err(|_| r.err(format!("bad int `{l}`")))?),
                };
                stack.push(v)
            }
            b'F' => {
                let l = r.line()?;
                stack.push(Py::Float(l.parse().map_err(|_| r.err("bad float"))?))
            }
            b'G' => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().unwrap());
                stack.push(Py::Float(v))
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.u32()? as usize,
                    0x8c => r.u8()? as usize,
                    _ => r.u64()? as usize,
                };
                let s = std::str::from_utf8(r.take(n)?).map_err(|_| r.err("bad UTF-8"))?;
                stack.push(Py::Str(s.into()))
            }
            b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'T' | b'B' => r.u32()? as usize,
                    b'U' | b'C' => r.u8()? as usize,
                    _ => r.u64()? as usize,
                };
                stack.push(Py::Bytes(r.take(n)?.into()))
            }
            b'a' => {
                let v = pop!();
                match stack.last_mut() {
                    Some(Py::List(l)) => l.push(v),
                    _ => return Err(r.err("APPEND to a non-list")),
                }
            }
            b'e' | 0x90 => {
                let items = pop_mark!();
                match stack.last_mut() {
                    Some(Py::List(l)) => l.extend(items),
                    _ => return Err(r.err("APPENDS to a non-list")),
                }
            }
            b's' => {
                let v = pop!();
                let k = pop!();
                match stack.last_mut() {
                    Some(Py::Dict(d)) => d.push((k, v)),
                    _ => return Err(r.err("SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let items = pop_mark!();
                if items.len() % 2 != 0 {
                    return Err(r.err("odd SETITEMS"));
                }
                let mut it = items.into_iter();
                match stack.last_mut() {
                    Some(Py::Dict(d)) => {
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(r.err("SETITEMS on a non-dict")),
                }
            }
            b't' => {
                let items = pop_mark!();
                stack.push(Py::Tuple(items))
            }
            b'l' => {
                let items = pop_mark!();
                stack.push(Py::List(items))
            }
            b'd' => {
                let items = pop_mark!();
                let mut d = Vec::new();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(Py::Dict(d))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(r.err("stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Py::Tuple(items))
            }
            b'c' => {
                let m = r.line()?.to_string();
                let n = r.line()?.to_string();
                stack.push(Py::Global(m, n))
            }
            0x93 => {
                let n = pop!()
                    .as_string()
                    .ok_or_else(|| r.err("STACK_GLOBAL name"))?;
                let m = pop!()
                    .as_string()
                    .ok_or_else(|| r.err("STACK_GLOBAL module"))?;
                stack.push(Py::Global(m, n))
            }
            b'R' | 0x81 => {
                let args = pop!();
                let f = pop!();
                stack.push(Py::Reduce(Box::new(f), Box::new(args)))
            }
            b'b' => {
                let state = pop!();
                let obj = pop!();
                stack.push(Py::Build(Box::new(obj), Box::new(state)))
            }
            b'q' | b'r' | b'p' | 0x94 => {
                let key = match op {
                    b'q' => r.u8()? as u64,
                    b'r' => r.u32()? as u64,
                    b'p' => r.line()?.parse().map_err(|_| r.err("bad PUT"))?,
                    _ => memo.len() as u64,
                };
                let top = stack
                    .last()
                    .ok_or_else(|| r.err("PUT on empty stack"))?
                    .clone();
                memo.insert(key, top);
            }
            b'h' | b'j' | b'g' => {
                let key = match op {
                    b'h' => r.u8()? as u64,
                    b'j' => r.u32()? as u64,
                    _ => r.line()?.parse().map_err(|_| r.err("bad GET"))?,
                };
                let v = memo
                    .get(&key)
                    .ok_or_else(|| r.err(format!("memo {key} missing")))?;
                stack.push(v.clone())
            }
            b'0' => {
                pop!();
            }
            b'2' => {
                let v = stack
                    .last()
                    .ok_or_else(|| r.err("DUP on empty stack"))?
                    .clone();
                stack.push(v)
            }
            b'1' => {
                let _ = pop_mark!();
            }
            other => return Err(r.err(format!("unsupported pickle opcode 0x{other:02x}"))),
        }
    }
}
