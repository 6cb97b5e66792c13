//! A minimal protobuf encoder for the ONNX messages an exported decoder needs.
//!
//! Field numbers follow `onnx/onnx.proto` (ModelProto, GraphProto, NodeProto, AttributeProto,
//! TensorProto, ValueInfoProto, TypeProto, TensorShapeProto, OperatorSetIdProto,
//! StringStringEntryProto). Only encoding is implemented; repeated scalars are written
//! unpacked except where onnx.proto declares them packed.

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
    Int64 = 7,
    Bool = 9,
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

/// A `NodeProto` in the default (ai.onnx) domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl Node {
    /// NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5.
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
}
