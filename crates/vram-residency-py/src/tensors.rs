//! Taking a tensor from Python without copying it: a `torch.Tensor` (its own accessors, which
//! also cover `bfloat16`), anything with `__cuda_array_interface__` (CuPy, Numba), a GPU array
//! that speaks only DLPack (JAX; viewed through PyTorch or CuPy), and, for the mock backend,
//! anything with the buffer protocol (NumPy arrays standing in for tensors).
//! Each is refused with a clear message unless it is contiguous; an empty one is taken (its
//! `len` is 0) and left out by the caller, as the model digest leaves it out.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMemoryView};
use vram_residency::{ForeignRange, HostTensor, VramError};

use crate::errors::bad_input;

/// Where a tensor's bytes lie.
pub(crate) enum Memory {
    /// Device memory of a GPU: `address` on device `device` (never shown to anyone).
    Device { device: u32, address: u64 },
    /// Host memory, read where it lies by the mock backend.
    Host(Arc<dyn HostTensor>),
}

/// A tensor taken from Python: what the model digest covers, where its bytes lie, and its
/// owner (kept referenced while anything sealed from it lives).
pub(crate) struct Taken {
    pub(crate) dtype: String,
    pub(crate) shape: Vec<u64>,
    pub(crate) len: usize,
    pub(crate) memory: Memory,
    pub(crate) owner: Py<PyAny>,
    /// The stream the producer's work on the tensor was queued on, as an object with
    /// `synchronize()` and `cuda_stream` or `ptr` (PyTorch's current stream of the device; the stream an
    /// array's `__cuda_array_interface__` names, wrapped by CuPy or PyTorch).
    pub(crate) producer_stream: Option<Py<PyAny>>,
}

impl Taken {
    /// The range to seal in place, on the CUDA backend.
    pub(crate) fn device_range(&self) -> Option<ForeignRange> {
        match self.memory {
            Memory::Device { device, address } => {
                Some(ForeignRange::held_by_binding(device, address, self.len))
            }
            Memory::Host(_) => None,
        }
    }
}

/// Takes `obj` as a tensor named `name`.
pub(crate) fn take(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Taken> {
    Batch::default().take(name, obj)
}

/// Tensors taken together (a model's): PyTorch's current stream of a device is asked once,
/// not once per tensor (each ask builds a stream object; a model has hundreds of tensors), so
/// every tensor of the batch names the same stream object; each dtype's name in model files
/// is looked up once too.
#[derive(Default)]
pub(crate) struct Batch {
    current_streams: Vec<(u32, Py<PyAny>)>,
    dtypes: Vec<(Py<PyAny>, &'static str)>,
}

impl Batch {
    /// Takes `obj` as a tensor named `name` (see [`take`]).
    pub(crate) fn take(&mut self, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Taken> {
        if is_torch_tensor(obj)? {
            return self.take_torch(name, obj);
        }
        take_other(name, obj)
    }

    /// Takes a PyTorch tensor (`is_torch_tensor`), which must be on a CUDA GPU.
    pub(crate) fn take_torch(&mut self, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Taken> {
        if !obj.getattr("is_cuda")?.extract::<bool>()? {
            let kind: String = obj.getattr("device")?.getattr("type")?.extract()?;
            return Err(bad_input(
                "tensor",
                format!(
                    "{name:?} is on the {kind} device: only tensors on a CUDA GPU are sealed in place (move it with .cuda(), or give a NumPy array to the mock backend)"
                ),
            ));
        }
        if !obj.call_method0("is_contiguous")?.extract::<bool>()? {
            return Err(not_contiguous(name));
        }
        // `get_device()` is the CUDA device's index (an int, no `torch.device` object built).
        let device = u32::try_from(obj.call_method0("get_device")?.extract::<i64>()?)
            .map_err(|_| bad_input("tensor", format!("{name:?} names no CUDA device")))?;
        let len: usize = obj.getattr("nbytes")?.extract()?;
        let address: u64 = obj.call_method0("data_ptr")?.extract()?;
        let dtype = self.torch_dtype(name, obj)?;
        let shape: Vec<u64> = obj.getattr("shape")?.extract()?;
        let stream = self.current_stream(obj.py(), device)?;
        Ok(Taken {
            dtype: dtype.to_owned(),
            shape,
            len,
            memory: Memory::Device { device, address },
            owner: obj.clone().unbind(),
            producer_stream: Some(stream),
        })
    }

    /// A PyTorch tensor's element type as model files name it, looked up once per dtype.
    fn torch_dtype(&mut self, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let dtype = obj.getattr("dtype")?;
        if let Some((_, known)) = self.dtypes.iter().find(|(d, _)| d.is(&dtype)) {
            return Ok(known);
        }
        let known = dtype_name(name, &dtype)?;
        self.dtypes.push((dtype.unbind(), known));
        Ok(known)
    }

    /// PyTorch's current stream of `device`, asked the first time.
    fn current_stream(&mut self, py: Python<'_>, device: u32) -> PyResult<Py<PyAny>> {
        if let Some((_, s)) = self.current_streams.iter().find(|(d, _)| *d == device) {
            return Ok(s.clone_ref(py));
        }
        let stream = py
            .import("torch")?
            .getattr("cuda")?
            .call_method1("current_stream", (device,))?
            .unbind();
        self.current_streams.push((device, stream.clone_ref(py)));
        Ok(stream)
    }
}

/// Takes anything but a PyTorch tensor.
fn take_other(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Taken> {
    if let Ok(interface) = obj.getattr("__cuda_array_interface__") {
        // A lying interface (a negative size, a shape that is not numbers) is the caller's bad
        // input, not a crash or a builtin error from deep inside.
        return take_cuda_array(name, obj, &interface).map_err(|e| {
            if e.is_instance_of::<crate::errors::BadInput>(obj.py()) {
                e
            } else {
                bad_input(
                    "tensor",
                    format!("{name:?}: its __cuda_array_interface__ does not hold: {e}"),
                )
            }
        });
    }
    if dlpack_on_gpu(obj)? {
        return take_dlpack(name, obj);
    }
    take_host_buffer(name, obj)
}

/// DLPack device types of GPU memory: CUDA (2) and CUDA managed (13; the policy refuses it).
const DLPACK_CUDA_DEVICES: [u32; 2] = [2, 13];

/// Whether `obj` speaks DLPack and says its memory is on a CUDA GPU (a JAX array, say).
pub(crate) fn dlpack_on_gpu(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !obj.hasattr("__dlpack__")? || !obj.hasattr("__dlpack_device__")? {
        return Ok(false);
    }
    let (device_type, _): (u32, i64) = obj.call_method0("__dlpack_device__")?.extract()?;
    Ok(DLPACK_CUDA_DEVICES.contains(&device_type))
}

/// A GPU array that speaks only DLPack, viewed without a copy through PyTorch's (or CuPy's)
/// `from_dlpack`, which reads the capsule and has the producer order its work before PyTorch's
/// current stream. The capsule is a C struct: reading it here would take `unsafe`.
fn take_dlpack(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Taken> {
    let py = obj.py();
    // The view keeps the producer's buffer alive through the capsule's deleter; the
    // producer's object is kept with it.
    let owned_with = |mut taken: Taken, view: Bound<'_, PyAny>| -> PyResult<Taken> {
        taken.owner = pyo3::types::PyTuple::new(py, [obj.clone(), view])?
            .into_any()
            .unbind();
        Ok(taken)
    };
    if let Ok(torch) = py.import("torch") {
        let view = torch.call_method1("from_dlpack", (obj,))?;
        return owned_with(Batch::default().take_torch(name, &view)?, view);
    }
    if let Ok(cupy) = py.import("cupy") {
        let view = cupy.call_method1("from_dlpack", (obj,))?;
        let interface = view.getattr("__cuda_array_interface__")?;
        return owned_with(take_cuda_array(name, &view, &interface)?, view);
    }
    Err(bad_input(
        "tensor",
        format!(
            "{name:?} speaks only DLPack, and neither PyTorch nor CuPy is there to read it without a copy; install one of them"
        ),
    ))
}

/// A copy of the bytes of `data` on the host: a PyTorch tensor on any device (its bytes as
/// they are, bf16 included), or any contiguous buffer (`bytes`, a NumPy array). For a check of
/// what a tensor holds; a sealed model's digests are computed where its tensors lie.
pub(crate) fn bytes_on_host(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let data = if is_torch_tensor(data)? {
        if !data.call_method0("is_contiguous")?.extract::<bool>()? {
            return Err(not_contiguous("data"));
        }
        let torch = data.py().import("torch")?;
        data.call_method0("detach")?
            .call_method1("reshape", (-1,))?
            .call_method1("view", (torch.getattr("uint8")?,))?
            .call_method0("cpu")?
            .call_method0("numpy")?
    } else {
        data.clone()
    };
    let view = PyMemoryView::from(&data).map_err(|_| {
        bad_input(
            "data",
            format!(
                "a {}: give bytes, a NumPy array or a PyTorch tensor",
                type_name(&data)
            ),
        )
    })?;
    if !view.getattr("c_contiguous")?.extract::<bool>()? {
        return Err(not_contiguous("data"));
    }
    // What `seal` refuses, `digest` refuses too: an object array's bytes are pointers, and a
    // big-endian array's bytes are not what a model file (little-endian) holds.
    let format: String = view.getattr("format")?.extract()?;
    if format.contains('O') || format.starts_with(['>', '!']) {
        return Err(bad_input(
            "data",
            format!(
                "buffer format {format:?}: give numbers in little-endian order (object arrays hold pointers, not values)"
            ),
        ));
    }
    view.call_method0("tobytes")?.extract()
}

/// Whether `obj` is a PyTorch tensor (by its type's module and its accessors).
pub(crate) fn is_torch_tensor(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let module = obj.get_type().module()?;
    Ok(module.to_str()?.starts_with("torch")
        && obj.hasattr("data_ptr")?
        && obj.hasattr("untyped_storage")?)
}

/// A PyTorch tensor's element type as model files name it, and its shape.
pub(crate) fn torch_description(
    name: &str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<(&'static str, Vec<u64>)> {
    let dtype = dtype_name(name, &obj.getattr("dtype")?)?;
    Ok((dtype, obj.getattr("shape")?.extract()?))
}

/// The model files' name of a PyTorch `dtype` object.
fn dtype_name(name: &str, dtype: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    let dtype: String = dtype.str()?.extract()?;
    torch_dtype(&dtype).ok_or_else(|| {
        bad_input(
            "tensor",
            format!("{name:?} has dtype {dtype}, which model files do not name"),
        )
    })
}

fn take_cuda_array(
    name: &str,
    obj: &Bound<'_, PyAny>,
    interface: &Bound<'_, PyAny>,
) -> PyResult<Taken> {
    let interface = interface.cast::<PyDict>()?;
    let item = |key: &str| {
        interface.get_item(key)?.ok_or_else(|| {
            bad_input(
                "tensor",
                format!("{name:?}: __cuda_array_interface__ has no {key:?}"),
            )
        })
    };
    let (address, _read_only): (u64, bool) = item("data")?.extract()?;
    let shape: Vec<u64> = item("shape")?.extract()?;
    let typestr: String = item("typestr")?.extract()?;
    let (dtype, itemsize) = typestr_dtype(&typestr).ok_or_else(|| {
        bad_input(
            "tensor",
            format!("{name:?} has typestr {typestr:?}, which model files do not name"),
        )
    })?;
    let strides: Option<Vec<i64>> = match interface.get_item("strides")? {
        Some(s) if !s.is_none() => Some(s.extract()?),
        _ => None,
    };
    if let Some(strides) = strides
        && !is_c_contiguous(&shape, &strides, itemsize)
    {
        return Err(not_contiguous(name));
    }
    let len = shape
        .iter()
        .try_fold(itemsize, |n, d| n.checked_mul(*d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad_input("tensor", format!("{name:?} is larger than memory")))?;
    let device = match obj.getattr("device") {
        Ok(d) => d
            .getattr("id")
            .or_else(|_| d.getattr("index"))
            .and_then(|i| i.extract::<u32>())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let stream: Option<u64> = match interface.get_item("stream")? {
        Some(s) if !s.is_none() => Some(s.extract()?),
        _ => None,
    };
    Ok(Taken {
        dtype: dtype.to_owned(),
        shape,
        len,
        memory: Memory::Device { device, address },
        owner: obj.clone().unbind(),
        producer_stream: stream
            .map(|handle| external_stream(obj.py(), name, handle, device))
            .transpose()?,
    })
}

/// The stream an array's `__cuda_array_interface__` names (version 3: its producer's work on
/// the array is queued there; 1 and 2 are the legacy and per-thread default streams), as an
/// object to synchronise: wrapped by CuPy, else PyTorch, the libraries that give such handles
/// out. The handle is never used by this crate itself, and only a handle the package can vouch
/// for is wrapped: a number that is no live stream would crash the process when synchronised.
/// Vouched for: the two default streams, and the current stream of CuPy or PyTorch on the
/// array's device (what a producer that follows the interface's rule names: its current
/// stream when the interface was read).
fn external_stream(py: Python<'_>, name: &str, handle: u64, device: u32) -> PyResult<Py<PyAny>> {
    let cupy = py.import("cupy").ok();
    let torch = py.import("torch").ok().filter(|t| {
        t.getattr("cuda")
            .and_then(|c| c.call_method0("is_available"))
            .and_then(|a| a.extract::<bool>())
            .unwrap_or(false)
    });
    if cupy.is_none() && torch.is_none() {
        return Err(bad_input(
            "tensor",
            format!(
                "{name:?}: its __cuda_array_interface__ names stream {handle}, and neither CuPy nor PyTorch is there to wait for it; synchronise it and give the array without a stream"
            ),
        ));
    }
    let current = |m: &Bound<'_, PyAny>, torch: bool| -> Option<u64> {
        let cuda = m.getattr("cuda").ok()?;
        let stream = if torch {
            cuda.call_method1("current_stream", (device,)).ok()?
        } else {
            cuda.call_method0("get_current_stream").ok()?
        };
        stream
            .getattr(if torch { "cuda_stream" } else { "ptr" })
            .ok()?
            .extract()
            .ok()
    };
    // 0 is disallowed by the interface (it could mean either default stream), and PyTorch and
    // CuPy both report their default (null) stream as 0: a producer that names 0 vouches for
    // nothing, whichever library's current stream reads 0.
    let known = matches!(handle, 1 | 2)
        || (handle != 0
            && (cupy.as_ref().and_then(|c| current(c, false)) == Some(handle)
                || torch.as_ref().and_then(|t| current(t, true)) == Some(handle)));
    if !known {
        return Err(bad_input(
            "tensor",
            format!(
                "{name:?}: its __cuda_array_interface__ names stream {handle}, which is neither a default stream nor the current stream of CuPy or PyTorch on GPU {device}, so nothing vouches that it is a live stream: make it the current stream while sealing, or synchronise it and give the array without a stream"
            ),
        ));
    }
    if let Some(cupy) = cupy {
        let cuda = cupy.getattr("cuda")?;
        let stream = match handle {
            1 => cuda.getattr("Stream")?.getattr("null")?,
            2 => cuda.getattr("Stream")?.getattr("ptds")?,
            h => cuda.call_method1("ExternalStream", (h,))?,
        };
        return Ok(stream.unbind());
    }
    let cuda = torch
        .ok_or(VramError::Unreachable("CuPy or PyTorch is there"))
        .map_err(|e| crate::errors::to_py(&e))?
        .getattr("cuda")?;
    let stream = match handle {
        1 => cuda.call_method0("default_stream")?,
        h => cuda.call_method1("ExternalStream", (h,))?,
    };
    Ok(stream.unbind())
}

fn take_host_buffer(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Taken> {
    let view = PyMemoryView::from(obj).map_err(|_| {
        bad_input(
            "tensor",
            format!("{name:?} is a {}: give a torch.Tensor, an object with __cuda_array_interface__, or (mock backend) a buffer such as a NumPy array", type_name(obj)),
        )
    })?;
    if !view.getattr("c_contiguous")?.extract::<bool>()? {
        return Err(not_contiguous(name));
    }
    let format: String = view.getattr("format")?.extract()?;
    let itemsize: u64 = view.getattr("itemsize")?.extract()?;
    let dtype = buffer_dtype(&format, itemsize).ok_or_else(|| {
        bad_input(
            "tensor",
            format!("{name:?} has buffer format {format:?}, which model files do not name"),
        )
    })?;
    let shape: Vec<u64> = view.getattr("shape")?.extract()?;
    let len: usize = view.getattr("nbytes")?.extract()?;
    Ok(Taken {
        dtype,
        shape,
        len,
        memory: Memory::Host(Arc::new(HostBuffer {
            owner: obj.clone().unbind(),
            anchor: Anchor::of(obj)?,
            len,
        })),
        owner: obj.clone().unbind(),
        producer_stream: None,
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn not_contiguous(name: &str) -> PyErr {
    bad_input(
        "tensor",
        format!(
            "{name:?} is not contiguous: its bytes are not one range to seal (seal tensor.contiguous(), and compute with that tensor)"
        ),
    )
}

/// A NumPy array (or any buffer) read where it lies. A byte view taken once would dangle:
/// NumPy's `resize(refcheck=False)` reallocates an array whatever views of it are exported,
/// and leaves every view of it pointing at freed memory. So the array whose memory the tensor
/// lies in (the tensor itself, or the array at the root of its `base` chain) is remembered
/// with its address and length, and each read, with the GIL held (nothing can resize it
/// meanwhile), first checks that they are unchanged, then takes a fresh view of the tensor.
/// A resized array is reported, never read.
struct HostBuffer {
    owner: Py<PyAny>,
    anchor: Option<Anchor>,
    len: usize,
}

/// The NumPy array that owns a tensor's memory, where its memory was when the tensor was taken.
struct Anchor {
    root: Py<PyAny>,
    address: u64,
    nbytes: u64,
}

impl Anchor {
    /// For a NumPy array: the last array of its `base` chain (an array's base that is no
    /// array, `bytes` or an `mmap`, holds its buffer exported, so it cannot move).
    fn of(obj: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
        if !obj.hasattr("__array_interface__")? {
            return Ok(None);
        }
        let mut root = obj.clone();
        loop {
            let base = root.getattr("base")?;
            if base.is_none() || !base.hasattr("__array_interface__")? {
                break;
            }
            root = base;
        }
        let (address, nbytes) = Self::place(&root)?;
        Ok(Some(Self {
            root: root.unbind(),
            address,
            nbytes,
        }))
    }

    fn place(root: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
        let (address, _): (u64, bool) = root
            .getattr("__array_interface__")?
            .get_item("data")?
            .extract()?;
        Ok((address, root.getattr("nbytes")?.extract()?))
    }

    /// Whether the owner still has its memory where it was.
    fn unmoved(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(Self::place(self.root.bind(py))? == (self.address, self.nbytes))
    }
}

impl HostTensor for HostBuffer {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, read: &mut dyn FnMut(&[u8])) -> Result<(), VramError> {
        Python::attach(|py| {
            if let Some(anchor) = &self.anchor
                && !anchor.unmoved(py)?
            {
                return Ok(false);
            }
            let view = PyMemoryView::from(self.owner.bind(py))?;
            let bytes = view.call_method1("cast", ("B",))?.call_method0("tobytes")?;
            let bytes = bytes.cast::<PyBytes>()?.as_bytes();
            if bytes.len() != self.len {
                return Ok(false);
            }
            read(bytes);
            Ok::<_, PyErr>(true)
        })
        .map_err(|e| VramError::SourceReadFailed {
            offset: 0,
            reason: format!("the host tensor could not be read: {e}"),
        })
        .and_then(|read| {
            if read {
                Ok(())
            } else {
                Err(VramError::SourceReadFailed {
                    offset: 0,
                    reason: "the host tensor's array was resized after it was sealed: its sealed bytes are gone".to_owned(),
                })
            }
        })
    }
}

/// A PyTorch dtype (`str(tensor.dtype)`) as model files name it (the `safetensors` names).
fn torch_dtype(dtype: &str) -> Option<&'static str> {
    Some(match dtype.strip_prefix("torch.")? {
        "float64" => "F64",
        "float32" => "F32",
        "float16" => "F16",
        "bfloat16" => "BF16",
        "int64" => "I64",
        "int32" => "I32",
        "int16" => "I16",
        "int8" => "I8",
        "uint64" => "U64",
        "uint32" => "U32",
        "uint16" => "U16",
        "uint8" => "U8",
        "bool" => "BOOL",
        "float8_e4m3fn" => "F8_E4M3",
        "float8_e5m2" => "F8_E5M2",
        _ => return None,
    })
}

/// An array-interface typestr (`<f4`, `|u1`, `<f2`) as model files name it, and its size.
fn typestr_dtype(typestr: &str) -> Option<(String, u64)> {
    let mut chars = typestr.chars();
    let order = chars.next()?;
    if order == '>' {
        return None; // big-endian: model files are little-endian
    }
    let kind = chars.next()?;
    let size: u64 = chars.as_str().parse().ok()?;
    Some((kind_dtype(kind, size)?, size))
}

/// A buffer-protocol format (`f`, `<e`, `B`, `q`, `?`) of `itemsize` bytes as model files
/// name it.
fn buffer_dtype(format: &str, itemsize: u64) -> Option<String> {
    let code = format.trim_start_matches(['@', '=', '<']);
    let kind = match code {
        "e" | "f" | "d" => 'f',
        "b" | "h" | "i" | "l" | "q" | "n" => 'i',
        "B" | "H" | "I" | "L" | "Q" | "N" => 'u',
        "?" => 'b',
        _ => return None,
    };
    kind_dtype(kind, itemsize)
}

fn kind_dtype(kind: char, size: u64) -> Option<String> {
    let bits = size.checked_mul(8)?;
    Some(match kind {
        'f' if matches!(bits, 16 | 32 | 64) => format!("F{bits}"),
        'i' if matches!(bits, 8 | 16 | 32 | 64) => format!("I{bits}"),
        'u' if matches!(bits, 8 | 16 | 32 | 64) => format!("U{bits}"),
        'b' if bits == 8 => "BOOL".to_owned(),
        _ => return None,
    })
}

/// Whether `strides` (bytes) lay `shape` out in C order with no gaps.
fn is_c_contiguous(shape: &[u64], strides: &[i64], itemsize: u64) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    let mut expected = itemsize;
    for (dim, stride) in shape.iter().zip(strides).rev() {
        if *dim > 1 && u64::try_from(*stride).ok() != Some(expected) {
            return false;
        }
        expected = expected.saturating_mul(*dim);
    }
    true
}
