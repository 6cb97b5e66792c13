//! A minimal protobuf encoder for the ONNX messages an exported decoder needs.
//!
//! Field numbers follow `onnx/onnx.proto` (ModelProto, GraphProto, NodeProto, AttributeProto,
//! TensorProto, ValueInfoProto, TypeProto, TensorShapeProto, OperatorSetIdProto,
//! StringStringEntryProto). Repeated scalars are written unpacked except where onnx.proto declares
//! them packed. Decoding is limited to what `hone generate-adapter` needs: the graph's inputs
//! ([`read_graph_inputs`]).

/// Protobuf wire types used here.
const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// An append-only protobuf message buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    pub buf: Vec<u8>,
}

/// Bytes a varint takes.
pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a base-128 varint.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u64) {
        self.varint(((field as u64) << 3) | wire);
    }

    /// An `int64`/`int32`/enum field (negative values take ten bytes, as protobuf requires).
    pub fn int(&mut self, field: u32, v: i64) {
        self.tag(field, WIRE_VARINT);
        self.varint(v as u64);
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) {
        self.tag(field, WIRE_FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `bytes` field.
    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, WIRE_LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// An embedded message field.
    pub fn message(&mut self, field: u32, m: &Writer) {
        self.bytes(field, &m.buf);
    }

    /// A length-delimited field made of `head` followed by `tail`, without joining them first
    /// (large tensors are written once, straight into their parent).
    pub fn message_parts(&mut self, field: u32, head: &[u8], tail: &[u8]) {
        self.tag(field, WIRE_LEN);
        self.varint((head.len() + tail.len()) as u64);
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(tail);
    }
}

/// `TensorProto.DataType` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Uint8 = 2,
    Int64 = 7,
    Bool = 9,
    Float16 = 10,
}

/// A `TensorProto` with its data as little-endian `raw_data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: DataType,
    pub raw: Vec<u8>,
}

impl Tensor {
    /// An fp32 tensor.
    pub fn f32(name: impl Into<String>, dims: Vec<i64>, values: &[f32]) -> Tensor {
        let mut raw = Vec::with_capacity(values.len() * 4);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            name: name.into(),
            dims,
            data_type: DataType::Float,
            raw,
        }
    }

    /// An fp16 tensor (values rounded to nearest).
    pub fn f16(name: impl Into<String>, dims: Vec<i64>, values: &[f32]) -> Tensor {
        let raw = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        Tensor {
            name: name.into(),
            dims,
            data_type: DataType::Float16,
            raw,
        }
    }

    /// A uint8 tensor.
    pub fn u8(name: impl Into<String>, dims: Vec<i64>, values: Vec<u8>) -> Tensor {
        Tensor {
            name: name.into(),
            dims,
            data_type: DataType::Uint8,
            raw: values,
        }
    }

    /// An int64 tensor.
    pub fn i64(name: impl Into<String>, dims: Vec<i64>, values: &[i64]) -> Tensor {
        let mut raw = Vec::with_capacity(values.len() * 8);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            name: name.into(),
            dims,
            data_type: DataType::Int64,
            raw,
        }
    }

    /// Write this tensor as field `field` of `w` (TensorProto: dims = 1, data_type = 2,
    /// name = 8, raw_data = 9).
    pub fn encode_into(&self, w: &mut Writer, field: u32) {
        let mut head = Writer::new();
        for &d in &self.dims {
            head.int(1, d);
        }
        head.int(2, self.data_type as i64);
        head.string(8, &self.name);
        // raw_data's own tag and length go at the end of the head.
        head.tag(9, WIRE_LEN);
        head.varint(self.raw.len() as u64);
        w.message_parts(field, &head.buf, &self.raw);
    }
}

/// An attribute value (`AttributeProto.AttributeType`).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    Ints(Vec<i64>),
}

/// A named `AttributeProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

impl Attribute {
    pub fn int(name: &str, v: i64) -> Attribute {
        Attribute {
            name: name.into(),
            value: AttrValue::Int(v),
        }
    }
    pub fn float(name: &str, v: f32) -> Attribute {
        Attribute {
            name: name.into(),
            value: AttrValue::Float(v),
        }
    }
    pub fn ints(name: &str, v: &[i64]) -> Attribute {
        Attribute {
            name: name.into(),
            value: AttrValue::Ints(v.to_vec()),
        }
    }

    /// AttributeProto: name = 1, f = 2, i = 3, s = 4, t = 5, ints = 8, type = 20.
    fn encode(&self) -> Writer {
        let mut w = Writer::new();
        w.string(1, &self.name);
        match &self.value {
            AttrValue::Float(f) => {
                w.float(2, *f);
                w.int(20, 1);
            }
            AttrValue::Int(i) => {
                w.int(3, *i);
                w.int(20, 2);
            }
            AttrValue::String(s) => {
                w.string(4, s);
                w.int(20, 3);
            }
            AttrValue::Tensor(t) => {
                t.encode_into(&mut w, 5);
                w.int(20, 4);
            }
            AttrValue::Ints(v) => {
                for &i in v {
                    w.int(8, i);
                }
                w.int(20, 7);
            }
        }
        w
    }
}

/// A `NodeProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// "" for ai.onnx, e.g. "com.microsoft" for ONNX Runtime's contrib ops.
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl Node {
    /// NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5, domain = 7.
    fn encode(&self) -> Writer {
        let mut w = Writer::new();
        for i in &self.inputs {
            w.string(1, i);
        }
        for o in &self.outputs {
            w.string(2, o);
        }
        w.string(3, &self.name);
        w.string(4, &self.op_type);
        for a in &self.attributes {
            w.message(5, &a.encode());
        }
        if !self.domain.is_empty() {
            w.string(7, &self.domain);
        }
        w
    }
}

/// One dimension of a tensor type: fixed or symbolic.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Value(i64),
    Param(String),
}

/// A `ValueInfoProto` of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: DataType,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    /// ValueInfoProto { name = 1, type = 2 }; TypeProto { tensor_type = 1 };
    /// TypeProto.Tensor { elem_type = 1, shape = 2 }; TensorShapeProto { dim = 1 };
    /// Dimension { dim_value = 1, dim_param = 2 }.
    fn encode(&self) -> Writer {
        let mut shape = Writer::new();
        for d in &self.dims {
            let mut dim = Writer::new();
            match d {
                Dim::Value(v) => dim.int(1, *v),
                Dim::Param(p) => dim.string(2, p),
            }
            shape.message(1, &dim);
        }
        let mut tensor = Writer::new();
        tensor.int(1, self.elem_type as i64);
        tensor.message(2, &shape);
        let mut ty = Writer::new();
        ty.message(1, &tensor);
        let mut w = Writer::new();
        w.string(1, &self.name);
        w.message(2, &ty);
        w
    }
}

/// A `GraphProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    /// GraphProto: node = 1, name = 2, initializer = 5, input = 11, output = 12.
    fn encode(&self) -> Writer {
        let mut w = Writer::new();
        w.buf
            .reserve(self.initializers.iter().map(|t| t.raw.len() + 64).sum());
        for n in &self.nodes {
            w.message(1, &n.encode());
        }
        w.string(2, &self.name);
        for t in &self.initializers {
            t.encode_into(&mut w, 5);
        }
        for i in &self.inputs {
            w.message(11, &i.encode());
        }
        for o in &self.outputs {
            w.message(12, &o.encode());
        }
        w
    }
}

/// A `ModelProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub ir_version: i64,
    /// `(domain, version)`; "" is ai.onnx.
    pub opset_import: Vec<(String, i64)>,
    pub producer_name: String,
    pub producer_version: String,
    pub doc_string: String,
    pub graph: Graph,
    pub metadata_props: Vec<(String, String)>,
}

impl Model {
    /// The serialized ModelProto: ir_version = 1, producer_name = 2, producer_version = 3,
    /// doc_string = 6, graph = 7, opset_import = 8 (OperatorSetIdProto { domain = 1,
    /// version = 2 }), metadata_props = 14 (StringStringEntryProto { key = 1, value = 2 }).
    pub fn encode(&self) -> Vec<u8> {
        let graph = self.graph.encode();
        let mut w = Writer::new();
        w.buf.reserve(graph.buf.len() + 4096);
        w.int(1, self.ir_version);
        w.string(2, &self.producer_name);
        w.string(3, &self.producer_version);
        if !self.doc_string.is_empty() {
            w.string(6, &self.doc_string);
        }
        for (domain, version) in &self.opset_import {
            let mut op = Writer::new();
            op.string(1, domain);
            op.int(2, *version);
            w.message(8, &op);
        }
        for (k, v) in &self.metadata_props {
            let mut e = Writer::new();
            e.string(1, k);
            e.string(2, v);
            w.message(14, &e);
        }
        w.message_parts(7, &graph.buf, &[]);
        w.buf
    }
}

/// A graph input as read back from a model file.
#[derive(Debug, Clone, PartialEq)]
pub struct InputInfo {
    pub name: String,
    /// `TensorProto.DataType` value (1 = float).
    pub elem_type: i64,
    pub dims: Vec<Dim>,
}

/// One field of a protobuf message: number, and its value (a varint, or the bytes of a
/// length-delimited field; fixed-width fields are skipped).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates the fields of one protobuf message; a malformed message ends in an error.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("field of {n} bytes at byte {} runs past the end", self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_LEN => {
                let n = self.varint()? as usize;
                Field::Bytes(self.skip(n)?)
            }
            WIRE_FIXED32 => {
                self.skip(4)?;
                Field::Other
            }
            1 => {
                self.skip(8)?;
                Field::Other
            }
            w => return Err(format!("unsupported wire type {w} at byte {}", self.pos)),
        };
        Ok(Some((field, value)))
    }

    /// Every length-delimited field numbered `want`.
    fn messages(buf: &'a [u8], want: u32) -> Result<Vec<&'a [u8]>, String> {
        let mut r = Reader::new(buf);
        let mut out = Vec::new();
        while let Some((f, v)) = r.next_field()? {
            if let (true, Field::Bytes(b)) = (f == want, v) {
                out.push(b);
            }
        }
        Ok(out)
    }
}

/// The inputs of the graph of a serialized `ModelProto` (ModelProto.graph = 7, GraphProto.input
/// = 11, field numbers as in [`ValueInfo`]'s encoder). Initializers are skipped, not copied.
pub fn read_graph_inputs(model: &[u8]) -> Result<Vec<InputInfo>, String> {
    let graph = Reader::messages(model, 7)?
        .pop()
        .ok_or("no graph in the model (ModelProto field 7)")?;
    let mut inputs = Vec::new();
    for vi in Reader::messages(graph, 11)? {
        let mut info = InputInfo {
            name: String::new(),
            elem_type: 0,
            dims: Vec::new(),
        };
        let mut r = Reader::new(vi);
        while let Some((f, v)) = r.next_field()? {
            match (f, v) {
                (1, Field::Bytes(b)) => info.name = String::from_utf8_lossy(b).into_owned(),
                (2, Field::Bytes(ty)) => {
                    for tensor in Reader::messages(ty, 1)? {
                        let mut t = Reader::new(tensor);
                        while let Some((f, v)) = t.next_field()? {
                            match (f, v) {
                                (1, Field::Varint(e)) => info.elem_type = e as i64,
                                (2, Field::Bytes(shape)) => {
                                    for dim in Reader::messages(shape, 1)? {
                                        info.dims.push(read_dim(dim)?);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        inputs.push(info);
    }
    Ok(inputs)
}

fn read_dim(buf: &[u8]) -> Result<Dim, String> {
    let mut r = Reader::new(buf);
    let mut dim = Dim::Param(String::new());
    while let Some((f, v)) = r.next_field()? {
        match (f, v) {
            (1, Field::Varint(x)) => dim = Dim::Value(x as i64),
            (2, Field::Bytes(b)) => dim = Dim::Param(String::from_utf8_lossy(b).into_owned()),
            _ => {}
        }
    }
    Ok(dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let enc = |v: u64| {
            let mut w = Writer::new();
            w.varint(v);
            w.buf
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            assert_eq!(enc(v).len(), varint_len(v));
        }
    }

    #[test]
    fn fields() {
        let mut w = Writer::new();
        w.int(1, 8);
        w.string(2, "hi");
        w.int(3, -1);
        assert_eq!(&w.buf[..6], &[0x08, 8, 0x12, 2, b'h', b'i']);
        assert_eq!(w.buf[6], 0x18);
        assert_eq!(w.buf.len(), 7 + 10);
    }

    #[test]
    fn tensor_in_parts_equals_joined() {
        let t = Tensor::f32("w", vec![2], &[1.0, -2.0]);
        let mut a = Writer::new();
        t.encode_into(&mut a, 5);
        let mut inner = Writer::new();
        inner.int(1, 2);
        inner.int(2, 1);
        inner.string(8, "w");
        inner.bytes(9, &t.raw);
        let mut b = Writer::new();
        b.message(5, &inner);
        assert_eq!(a.buf, b.buf);
    }

    #[test]
    fn graph_inputs_read_back() {
        let inputs = vec![
            ValueInfo {
                name: "input_ids".into(),
                elem_type: DataType::Int64,
                dims: vec![Dim::Param("batch_size".into()), Dim::Value(7)],
            },
            ValueInfo {
                name: "a".into(),
                elem_type: DataType::Float,
                dims: vec![Dim::Value(300), Dim::Param("r".into())],
            },
        ];
        let model = Model {
            ir_version: 8,
            graph: Graph {
                initializers: vec![Tensor::f32("a", vec![300, 1], &[0.5; 300])],
                inputs: inputs.clone(),
                ..Graph::default()
            },
            ..Model::default()
        };
        let got = read_graph_inputs(&model.encode()).unwrap();
        assert_eq!(got.len(), 2);
        for (g, want) in got.iter().zip(&inputs) {
            assert_eq!(g.name, want.name);
            assert_eq!(g.elem_type, want.elem_type as i64);
            assert_eq!(g.dims, want.dims);
        }
        let bytes = model.encode();
        let err = read_graph_inputs(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
        assert!(read_graph_inputs(b"").unwrap_err().contains("no graph"));
    }
}
