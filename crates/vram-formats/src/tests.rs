//! The header parsers against hand-built files, the fixtures made by the reference tools, and
//! the limits the official readers apply.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "tests"
)]
use super::gguf::GgufValueType;
use super::*;

fn gguf_file(tensors: u64, data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // one kv
    b.extend(4u64.to_le_bytes());
    b.extend(b"name");
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    b.extend(b"toy");
    for i in 0..tensors {
        let name = format!("t{i}");
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend((i * 32).to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(vec![1u8; data]);
    b
}

#[test]
fn gguf_header_is_summarised() {
    let f = gguf_file(2, 64);
    assert_eq!(
        recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap(),
        ModelFormat::Gguf {
            version: 3,
            tensors: 2,
            parameter_bytes: 32,
            types: [("F32", 2)].into_iter().collect(),
        }
    );
}

#[test]
fn malformed_headers_are_errors() {
    let f = gguf_file(2, 32);
    assert!(
        recognise(Path::new("m.gguf"), &f[..40], 40)
            .unwrap_err()
            .to_string()
            .contains("GGUF")
    );
    assert!(recognise(Path::new("m.gguf"), b"GGUF\x01\0\0\0", 8).is_err());
    assert!(
        recognise(
            Path::new("x.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\xff{",
            9
        )
        .is_err()
    );
    assert_eq!(
        recognise(Path::new("weights.bin"), b"anything", 8).unwrap(),
        ModelFormat::Raw
    );
}

fn fixture(name: &str) -> Result<ModelFormat, FormatError> {
    // The fixtures live with the command that reads model files most.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vramctl/tests/data/models")
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    recognise(&path, &bytes, bytes.len() as u64)
}

#[test]
fn files_from_the_official_writers_are_read_as_the_official_readers_read_them() {
    // tests/data/models/make_fixtures.py: gguf-py's GGUFWriter and the safetensors library.
    let tiny = fixture("tiny.gguf").unwrap();
    assert_eq!(
        tiny,
        ModelFormat::Gguf {
            version: 3,
            tensors: 3,
            parameter_bytes: 256 + 64 + 68,
            types: [("F16", 1), ("F32", 1), ("Q8_0", 1)].into_iter().collect(),
        }
    );
    for vocab in ["vocab-only.gguf", "vocab-only-unpadded.gguf"] {
        assert!(
            matches!(
                fixture(vocab),
                Ok(ModelFormat::Gguf {
                    tensors: 0,
                    parameter_bytes: 0,
                    ..
                })
            ),
            "{vocab}: {:?}",
            fixture(vocab)
        );
    }
    assert_eq!(
        fixture("tiny.safetensors").unwrap(),
        ModelFormat::Safetensors {
            tensors: 2,
            parameter_bytes: 24 + 6
        }
    );
}

#[test]
fn broken_gguf_files_that_the_official_reader_refuses_are_refused() {
    for (name, needle) in [
        ("truncated.gguf", "partial download"),
        ("header-only.gguf", "partial download"),
        ("bad-type.gguf", "unknown ggml type 99"),
        ("bad-offset.gguf", "starts at data offset 1000000000000"),
    ] {
        let e = fixture(name).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
    assert!(matches!(
        fixture("bad-type.gguf"),
        Err(FormatError::Gguf(HeaderProblem::UnknownTensorType {
            kind: 99,
            ..
        }))
    ));
    let e = fixture("lfs-pointer.gguf").unwrap_err();
    assert_eq!(e, FormatError::LfsPointer);
    assert!(e.to_string().contains("git lfs pull"), "{e}");
}

#[test]
fn duplicate_tensor_names_are_refused_in_both_formats() {
    let mut f = gguf_file(2, 64);
    let second = f.windows(2).rposition(|w| w == b"t1").unwrap();
    f[second + 1] = b'0';
    let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
    assert!(e.to_string().contains("\"t0\" appears twice"), "{e}");
    let json = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut st = (json.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(json);
    st.extend_from_slice(&[0; 4]);
    let e = recognise(Path::new("m.safetensors"), &st, st.len() as u64).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    assert_eq!(
        e,
        FormatError::Safetensors(HeaderProblem::DuplicateTensor("w".into()))
    );
}

#[test]
fn gguf_tensors_are_checked_against_the_type_table() {
    // Row of 4 F32 elements: fine. Q4_K (256-element blocks) with a 4-element row: refused.
    let mut f = gguf_file(1, 64);
    let pos = find_type_field(&f);
    f[pos..pos + 4].copy_from_slice(&12u32.to_le_bytes());
    let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
    assert!(e.to_string().contains("not a multiple of 256"), "{e}");
}

#[test]
fn gguf_tensors_lie_back_to_back_so_none_share_bytes_or_leave_gaps() {
    // Two 16-byte tensors padded to 32: the second starts at 32. At 0 both would be counted
    // in 16 bytes of data (found by the `model_header` fuzz target); at 64 a gap is left.
    let whole = gguf_file(2, 64);
    assert!(recognise(Path::new("m.gguf"), &whole, whole.len() as u64).is_ok());
    for second in [0u64, 16, 64] {
        let mut f = gguf_file(2, 64);
        let name = f.windows(2).position(|w| w == b"t1").unwrap();
        let pos = name + 2 + 4 + 8 + 4;
        f[pos..pos + 8].copy_from_slice(&second.to_le_bytes());
        let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
        assert!(
            matches!(
                &e,
                FormatError::Gguf(HeaderProblem::TensorOffset { tensor, offset, expected: 32 })
                    if tensor == "t1" && *offset == second
            ) || matches!(&e, FormatError::Gguf(HeaderProblem::Misaligned { .. })),
            "offset {second}: {e:?}"
        );
    }
}

/// Offset of the first tensor's type field in a `gguf_file`.
fn find_type_field(f: &[u8]) -> usize {
    let name = f.windows(2).position(|w| w == b"t0").unwrap();
    name + 2 + 4 + 8
}

#[test]
fn safetensors_is_checked_from_its_header_and_the_file_length() {
    use safetensors::tensor::{Dtype, TensorView};
    let data = vec![0u8; 4 * 6];
    let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
    let file = safetensors::serialize([("w", view)], None).unwrap();
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let head = &file[..8 + n]; // what `read_head` reads: no tensor data
    let len = file.len() as u64;
    assert_eq!(
        recognise(Path::new("m.safetensors"), head, len).unwrap(),
        ModelFormat::Safetensors {
            tensors: 1,
            parameter_bytes: 24
        }
    );
    let truncated = recognise(Path::new("m.safetensors"), head, len - 1).unwrap_err();
    assert!(
        truncated.to_string().contains("need 24 bytes"),
        "{truncated}"
    );
    assert!(recognise(Path::new("m.safetensors"), &head[..8 + n - 1], len).is_err());
}

#[test]
fn the_header_extent_is_the_safetensors_header_or_a_bounded_prefix() {
    let probe = 100u64.to_le_bytes();
    assert_eq!(
        header_extent(Path::new("a.safetensors"), &probe, 1 << 20),
        108
    );
    assert_eq!(header_extent(Path::new("a.safetensors"), &probe, 50), 50);
    assert_eq!(
        header_extent(
            Path::new("a.safetensors"),
            &u64::MAX.to_le_bytes(),
            u64::MAX
        ),
        HEADER_PREFIX_MAX + 8
    );
    assert_eq!(
        header_extent(Path::new("a.gguf"), b"GGUF\x03\0\0\0", 1 << 40),
        HEADER_PREFIX_MAX
    );
    assert_eq!(header_extent(Path::new("a.bin"), b"", 10), 10);
}

#[test]
fn gguf_value_types_follow_the_table() {
    for (id, t) in GgufValueType::ALL {
        assert_eq!(GgufValueType::from_id(id), Ok(t));
    }
    assert_eq!(
        GgufValueType::from_id(13),
        Err(HeaderProblem::UnknownValueType(13))
    );
    assert_eq!(GgufValueType::Bool.fixed_bytes(), Some(1));
    assert_eq!(GgufValueType::F64.fixed_bytes(), Some(8));
    assert_eq!(GgufValueType::String.fixed_bytes(), None);
}

#[test]
fn tensor_tables_give_each_tensors_byte_range() {
    // GGUF: two F32 tensors of 4 elements at relative offsets 0 and 32, data aligned to 32.
    let f = gguf_file(2, 64);
    let table = tensor_table(Path::new("m.gguf"), &f, f.len() as u64)
        .unwrap()
        .unwrap();
    let data_start = (f.len() - 64) as u64;
    assert_eq!(table.len(), 2);
    for (i, t) in table.iter().enumerate() {
        assert_eq!(t.name, format!("t{i}"));
        assert_eq!(
            (t.dtype.as_str(), t.shape.as_slice(), t.bytes),
            ("F32", &[4u64][..], 16)
        );
        assert_eq!(t.offset, data_start + 32 * i as u64);
    }
    // safetensors: the range holds exactly the tensor's bytes.
    use safetensors::tensor::{Dtype, TensorView};
    let data: Vec<u8> = (0..24u8).collect();
    let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
    let file = safetensors::serialize([("w", view)], None).unwrap();
    let table = tensor_table(Path::new("m.safetensors"), &file, file.len() as u64)
        .unwrap()
        .unwrap();
    let t = &table[0];
    assert_eq!(
        (t.name.as_str(), t.dtype.as_str(), t.shape.as_slice()),
        ("w", "F32", &[2u64, 3][..])
    );
    let range = &file[t.offset as usize..(t.offset + t.bytes) as usize];
    assert_eq!(range, data.as_slice());
    // Raw files have no table.
    assert_eq!(tensor_table(Path::new("x.bin"), b"abc", 3).unwrap(), None);
}

/// Bytes that record the length of every read.
struct Recorded<'a> {
    bytes: &'a [u8],
    reads: std::sync::Mutex<Vec<usize>>,
}

impl vram_types::ShardSource for Recorded<'_> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.lock().unwrap().push(buf.len());
        self.bytes.read_at(offset, buf)
    }
}

/// A source whose every read fails.
struct Unreadable;

impl vram_types::ShardSource for Unreadable {
    fn len(&self) -> u64 {
        100
    }

    fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("device lost"))
    }
}

/// `sealed_table` over `bytes`, with the length of every read it made.
fn sealed(
    name: Option<&str>,
    bytes: &[u8],
) -> (
    Result<Option<Vec<TensorInfo>>, vram_types::VramError>,
    Vec<usize>,
) {
    let recorded = Recorded {
        bytes,
        reads: std::sync::Mutex::new(Vec::new()),
    };
    let result = sealed_table(name.map(Path::new), &recorded);
    (result, recorded.reads.into_inner().unwrap())
}

#[test]
fn a_sealed_table_is_read_by_name_or_content_and_sorted() {
    // GGUF with a header over 1 MiB: read in growing prefixes, after a 9-byte probe.
    let f = gguf_file(60_000, 60_000 * 32);
    let (table, reads) = sealed(Some("m.gguf"), &f);
    let table = table.unwrap().unwrap();
    assert_eq!(
        reads,
        [9, 1 << 20, f.len()],
        "4 MiB, or the whole when shorter"
    );
    let mut expected = tensor_table(Path::new("m.gguf"), &f, f.len() as u64)
        .unwrap()
        .unwrap();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(table, expected);
    // A small header takes one read after the probe; unnamed bytes with the magic too.
    let small = gguf_file(2, 64);
    let (table, reads) = sealed(None, &small);
    assert_eq!(table.unwrap().unwrap().len(), 2);
    assert_eq!(reads, [9, small.len()]);

    // A named file whose header does not hold is refused; unnamed, it is plain bytes.
    let mut cut = small.clone();
    cut.truncate(small.len() - 40); // 24 of the 48 data bytes the tensors need
    let (named, _) = sealed(Some("m.gguf"), &cut);
    assert!(
        matches!(
            named,
            Err(vram_types::VramError::MalformedModel(FormatError::Gguf(
                HeaderProblem::DataSize { .. }
            )))
        ),
        "{named:?}"
    );
    assert_eq!(sealed(None, &cut).0.unwrap(), None);

    // safetensors: by name, or by content (a length within the bytes, then `{`).
    use safetensors::tensor::{Dtype, TensorView};
    let data: Vec<u8> = (0..24u8).collect();
    let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
    let file = safetensors::serialize([("w", view)], None).unwrap();
    for name in [Some("m.safetensors"), None] {
        let (table, reads) = sealed(name, &file);
        assert_eq!(table.unwrap().unwrap()[0].name, "w");
        assert_eq!(reads, [9, file.len() - 24], "the probe, then the header");
    }
    assert!(
        sealed(Some("m.safetensors"), &file[..file.len() - 1])
            .0
            .is_err()
    );
    assert_eq!(sealed(None, &file[..file.len() - 1]).0.unwrap(), None);

    // Anything else: the probe alone, no table, whatever its name.
    for name in [Some("weights.bin"), None] {
        let (table, reads) = sealed(name, b"plain bytes, not a model");
        assert_eq!((table.unwrap(), reads), (None, vec![9]));
    }
    assert_eq!(sealed(None, b"").0.unwrap(), None);
    // A read that fails fails the whole.
    let failing = sealed_table(None, &Unreadable);
    assert!(
        matches!(
            failing,
            Err(vram_types::VramError::SourceReadFailed { offset: 0, .. })
        ),
        "{failing:?}"
    );
}
