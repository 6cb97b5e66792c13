//! Dataset readers: JSONL, JSON (array of objects, or `{"data": [...]}`), CSV/TSV and plain
//! text, from a path or from bytes already in memory (a browser `File`).
//!
//! Every reader yields [`Row`]s: the fields of one example in file order, with the 1-based line
//! on which the row starts, so later errors ("line 37: no field 'tone'") point into the file.
//! Input must be UTF-8 (a leading byte-order mark is skipped); anything else is an error naming
//! the line and byte offset of the first bad byte.

use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};

/// The file formats a dataset can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// One JSON object per line; blank lines are skipped.
    Jsonl,
    /// A JSON array of objects, or an object whose `"data"` field is such an array. A `.json`
    /// file that holds several objects one after another is read as JSONL.
    Json,
    /// Comma-separated values (RFC 4180 quoting) with a header row; every value is a string.
    Csv,
    /// Tab-separated values, otherwise as CSV.
    Tsv,
    /// Plain text: one row `{"text": line}` per non-blank line.
    Text,
}

impl DataFormat {
    /// The format implied by a file name's extension (`.jsonl`/`.ndjson`, `.json`, `.csv`,
    /// `.tsv`, `.txt`).
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Ok(DataFormat::Jsonl),
            "json" => Ok(DataFormat::Json),
            "csv" => Ok(DataFormat::Csv),
            "tsv" => Ok(DataFormat::Tsv),
            "txt" | "text" => Ok(DataFormat::Text),
            _ => Err(Error::format(
                path,
                format!(
                    "cannot tell the dataset format from the extension '{ext}': use .jsonl, \
                     .json, .csv, .tsv or .txt, or name the format"
                ),
            )),
        }
    }

    /// Parse a format name as given on a command line: `jsonl`, `json`, `csv`, `tsv`, `text`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Ok(DataFormat::Jsonl),
            "json" => Ok(DataFormat::Json),
            "csv" => Ok(DataFormat::Csv),
            "tsv" => Ok(DataFormat::Tsv),
            "txt" | "text" => Ok(DataFormat::Text),
            _ => Err(Error::Invalid(format!(
                "unknown dataset format '{name}'; expected one of jsonl, json, csv, tsv, text"
            ))),
        }
    }
}

/// One example as read from the file: named fields in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line of the file on which the row starts.
    pub line: usize,
    /// Field names and values in the order the file gives them.
    pub fields: Vec<(String, Value)>,
}

impl Row {
    /// The value of field `name`, if the row has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The names of the row's fields, comma-separated (for error messages).
    pub fn field_list(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|(k, _)| k.as_str()).collect();
        names.join(", ")
    }
}

/// Rows read from one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The file's path or display name; errors about rows name it.
    pub source: PathBuf,
    /// The format the rows were read as.
    pub format: DataFormat,
    /// The rows, in file order.
    pub rows: Vec<Row>,
}

/// Read a dataset file, choosing the format from its extension unless `format` is given.
pub fn read_dataset(path: &Path, format: Option<DataFormat>) -> Result<Dataset> {
    let format = match format {
        Some(f) => f,
        None => DataFormat::from_path(path)?,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_dataset(&bytes, path, format)
}

/// Parse a dataset held in memory; `name` is the display name used in errors.
pub fn parse_dataset(bytes: &[u8], name: impl AsRef<Path>, format: DataFormat) -> Result<Dataset> {
    let name = name.as_ref();
    let text = decode_utf8(bytes, name)?;
    if text.trim().is_empty() {
        return Err(Error::format(name, "empty file: no rows"));
    }
    let rows = match format {
        DataFormat::Jsonl => parse_jsonl(text, name)?,
        DataFormat::Json => parse_json(text, name)?,
        DataFormat::Csv => parse_csv(text, name, ',')?,
        DataFormat::Tsv => parse_csv(text, name, '\t')?,
        DataFormat::Text => parse_text(text),
    };
    if rows.is_empty() {
        return Err(Error::format(name, "no rows"));
    }
    Ok(Dataset {
        source: name.to_path_buf(),
        format,
        rows,
    })
}

/// `bytes` as UTF-8 without a leading byte-order mark, or an error naming the first bad byte.
fn decode_utf8<'a>(bytes: &'a [u8], name: &Path) -> Result<&'a str> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(Error::format(
            name,
            "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8",
        ));
    }
    let bom = if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    match std::str::from_utf8(&bytes[bom..]) {
        Ok(s) => Ok(s),
        Err(e) => {
            let offset = bom + e.valid_up_to();
            let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
            let byte = bytes[offset];
            Err(Error::format(
                name,
                format!(
                    "line {line}, byte {offset}: not valid UTF-8 (0x{byte:02X}); the file is \
                     probably Windows-1252 or Latin-1: convert it, e.g. \
                     `iconv -f WINDOWS-1252 -t UTF-8`"
                ),
            ))
        }
    }
}

/// 1-based line and byte column of byte offsets in a text.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset);
        (line, offset - self.starts[line - 1] + 1)
    }
}

/// A JSON object whose fields keep their order in the file.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object (one row)")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut fields: Vec<(String, Value)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    // A repeated key keeps its first position and its last value, as JSON
                    // parsers that build a map do.
                    match fields.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => fields.push((key, value)),
                    }
                }
                Ok(OrderedObject(fields))
            }
        }
        deserializer.deserialize_any(ObjectVisitor)
    }
}

/// serde_json's message without its " at line L column C" tail (we say where ourselves).
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn parse_jsonl(text: &str, name: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let obj: OrderedObject = serde_json::from_str(line).map_err(|e| {
            Error::format(
                name,
                format!(
                    "line {}, column {}: invalid JSON: {}",
                    i + 1,
                    e.column(),
                    json_message(&e)
                ),
            )
        })?;
        rows.push(Row {
            line: i + 1,
            fields: obj.0,
        });
    }
    Ok(rows)
}

/// A cursor over a JSON document for reading a top-level array (or `{"data": [...]}`) one
/// element at a time, so every row knows its line.
struct JsonCursor<'a> {
    text: &'a str,
    pos: usize,
    lines: LineIndex,
    name: &'a Path,
}

impl<'a> JsonCursor<'a> {
    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        self.pos += rest.len() - trimmed.len();
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn error_here(&self, msg: impl std::fmt::Display) -> Error {
        let (line, col) = self.lines.line_col(self.pos);
        Error::format(
            self.name,
            format!("line {line}, column {col}: invalid JSON: {msg}"),
        )
    }

    /// Deserialize one JSON value starting at the cursor and move past it.
    fn value<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let mut stream = serde_json::Deserializer::from_str(&self.text[self.pos..]).into_iter();
        match stream.next() {
            Some(Ok(v)) => {
                self.pos += stream.byte_offset();
                Ok(v)
            }
            Some(Err(e)) => {
                let (base_line, base_col) = self.lines.line_col(self.pos);
                let (line, col) = if e.line() <= 1 {
                    (base_line, base_col + e.column().saturating_sub(1))
                } else {
                    (base_line + e.line() - 1, e.column())
                };
                Err(Error::format(
                    self.name,
                    format!(
                        "line {line}, column {col}: invalid JSON: {}",
                        json_message(&e)
                    ),
                ))
            }
            None => Err(self.error_here("unexpected end of file")),
        }
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error_here(format!("expected '{}'", byte as char)))
        }
    }

    /// Read an array of objects starting at the cursor (which is on '[').
    fn rows_array(&mut self) -> Result<Vec<Row>> {
        self.expect(b'[')?;
        let mut rows = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(rows);
        }
        loop {
            self.skip_ws();
            let (line, _) = self.lines.line_col(self.pos);
            let obj: OrderedObject = self.value()?;
            rows.push(Row {
                line,
                fields: obj.0,
            });
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(rows);
                }
                _ => return Err(self.error_here("expected ',' or ']' after an array element")),
            }
        }
    }

    /// Read `{"data": [...], ...}` starting at the cursor (which is on '{').
    fn rows_in_data_field(&mut self) -> Result<Vec<Row>> {
        self.expect(b'{')?;
        let mut found = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                let key: String = self.value()?;
                self.expect(b':')?;
                self.skip_ws();
                if key == "data" && self.peek() == Some(b'[') {
                    found = Some(self.rows_array()?);
                } else {
                    self.value::<IgnoredAny>()?;
                }
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.error_here("expected ',' or '}' after an object field")),
                }
            }
        }
        found.ok_or_else(|| {
            Error::format(
                self.name,
                "a JSON dataset must be an array of objects or an object with a \"data\" \
                 array of objects",
            )
        })
    }
}

fn parse_json(text: &str, name: &Path) -> Result<Vec<Row>> {
    let mut cur = JsonCursor {
        text,
        pos: 0,
        lines: LineIndex::new(text),
        name,
    };
    cur.skip_ws();
    let rows = match cur.peek() {
        Some(b'[') => cur.rows_array()?,
        Some(b'{') => {
            // One object, or JSON Lines in a .json file? Look past the first value.
            let start = cur.pos;
            cur.value::<IgnoredAny>()?;
            cur.skip_ws();
            if cur.peek().is_some() {
                return parse_jsonl(text, name);
            }
            cur.pos = start;
            cur.rows_in_data_field()?
        }
        _ => return Err(cur.error_here(
            "a JSON dataset must be an array of objects (or use JSON Lines: one object per line)",
        )),
    };
    cur.skip_ws();
    if cur.peek().is_some() {
        return Err(cur.error_here("trailing characters after the JSON value"));
    }
    Ok(rows)
}

/// One CSV record: the line it starts on and its fields.
struct Record {
    line: usize,
    fields: Vec<String>,
}

/// Split CSV text into records (RFC 4180: fields in double quotes may hold the delimiter,
/// line breaks and `""` for a quote; records end with LF, CRLF or CR). Completely empty lines
/// are skipped. A quote inside an unquoted field is kept as a character, as Python's csv does.
fn csv_records(text: &str, name: &Path, delim: char) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    // Whether the current record has any content yet (a blank line has none).
    let mut started = false;
    let mut end_record =
        |fields: &mut Vec<String>, field: &mut String, started: &mut bool, record_line: usize| {
            if *started {
                fields.push(std::mem::take(field));
                records.push(Record {
                    line: record_line,
                    fields: std::mem::take(fields),
                });
            }
            *started = false;
        };
    while let Some(c) = chars.next() {
        if c == '"' && field.is_empty() {
            // A quoted field: only at the start of a field.
            started = true;
            let quote_line = line;
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::format(
                            name,
                            format!(
                                "line {quote_line}: quoted field {} never closed",
                                fields.len() + 1
                            ),
                        ))
                    }
                    Some('"') => {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            field.push('"');
                        } else {
                            break;
                        }
                    }
                    Some(ch) => {
                        if ch == '\n' || (ch == '\r' && chars.peek() != Some(&'\n')) {
                            line += 1;
                        }
                        field.push(ch);
                    }
                }
            }
            match chars.peek() {
                None | Some('\n') | Some('\r') => {}
                Some(&ch) if ch == delim => {}
                Some(&ch) => {
                    return Err(Error::format(
                        name,
                        format!(
                            "line {line}: field {}: unexpected {ch:?} after a closing quote \
                             (a quote inside a quoted field is written \"\")",
                            fields.len() + 1
                        ),
                    ))
                }
            }
            continue;
        }
        if c == delim {
            started = true;
            fields.push(std::mem::take(&mut field));
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            end_record(&mut fields, &mut field, &mut started, record_line);
            line += 1;
            record_line = line;
        } else {
            started = true;
            field.push(c);
        }
    }
    end_record(&mut fields, &mut field, &mut started, record_line);
    Ok(records)
}

fn parse_csv(text: &str, name: &Path, delim: char) -> Result<Vec<Row>> {
    let mut records = csv_records(text, name, delim)?.into_iter();
    let header = match records.next() {
        Some(h) => h,
        None => return Ok(Vec::new()),
    };
    for (i, col) in header.fields.iter().enumerate() {
        if header.fields[..i].contains(col) {
            return Err(Error::format(
                name,
                format!("line {}: header names column '{col}' twice", header.line),
            ));
        }
    }
    let mut rows = Vec::new();
    for rec in records {
        if rec.fields.len() != header.fields.len() {
            return Err(Error::format(
                name,
                format!(
                    "line {}: row has {} fields but the header (line {}) has {}",
                    rec.line,
                    rec.fields.len(),
                    header.line,
                    header.fields.len()
                ),
            ));
        }
        rows.push(Row {
            line: rec.line,
            fields: header
                .fields
                .iter()
                .cloned()
                .zip(rec.fields.into_iter().map(Value::String))
                .collect(),
        });
    }
    Ok(rows)
}

fn parse_text(text: &str) -> Vec<Row> {
    text.split('\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            (!line.trim().is_empty()).then(|| Row {
                line: i + 1,
                fields: vec![("text".to_string(), Value::String(line.to_string()))],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str, format: DataFormat) -> Result<Dataset> {
        parse_dataset(text.as_bytes(), "data.x", format)
    }

    fn fields(row: &Row) -> Vec<(&str, Value)> {
        row.fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect()
    }

    #[test]
    fn jsonl_keeps_field_order_and_line_numbers_and_skips_blank_lines() {
        let ds = parse(
            "{\"z\": 1, \"a\": \"x\"}\n\n  \r\n{\"b\": [1, 2], \"a\": null}\r\n",
            DataFormat::Jsonl,
        )
        .unwrap();
        assert_eq!(ds.rows.len(), 2);
        assert_eq!(ds.rows[0].line, 1);
        assert_eq!(
            fields(&ds.rows[0]),
            vec![("z", json!(1)), ("a", json!("x"))]
        );
        assert_eq!(ds.rows[1].line, 4);
        assert_eq!(ds.rows[1].get("b"), Some(&json!([1, 2])));
        assert_eq!(ds.rows[1].field_list(), "b, a");
    }

    #[test]
    fn jsonl_invalid_line_names_line_and_column() {
        let err = parse("{\"a\": 1}\n{\"a\": 1,,}\n", DataFormat::Jsonl)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("data.x: line 2, column 9: invalid JSON: key must be a string"),
            "{err}"
        );
        let err = parse("{\"a\": 1}\n[1, 2]\n", DataFormat::Jsonl)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("expected a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn json_array_rows_know_their_lines() {
        let text = "[\n  {\"q\": \"a\", \"b\": 1},\n\n  {\"q\": \"c\"}\n]\n";
        let ds = parse(text, DataFormat::Json).unwrap();
        assert_eq!(ds.rows.len(), 2);
        assert_eq!((ds.rows[0].line, ds.rows[1].line), (2, 4));
        assert_eq!(
            fields(&ds.rows[0]),
            vec![("q", json!("a")), ("b", json!(1))]
        );
    }

    #[test]
    fn json_data_wrapper_and_jsonl_in_a_json_file() {
        let text = "{\"version\": {\"x\": [1]},\n \"data\": [\n {\"t\": \"a\"}, {\"t\": \"b\"}]}";
        let ds = parse(text, DataFormat::Json).unwrap();
        assert_eq!(ds.rows.len(), 2);
        assert_eq!(ds.rows[0].line, 3);
        let ds = parse("{\"t\": 1}\n{\"t\": 2}\n", DataFormat::Json).unwrap();
        assert_eq!(ds.rows.len(), 2);
        assert_eq!(ds.rows[1].line, 2);
        let err = parse("{\"rows\": []}", DataFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"data\" array"), "{err}");
    }

    #[test]
    fn json_errors_point_at_the_bad_spot() {
        let err = parse("[\n {\"a\": 1},\n {\"a\": tru}\n]", DataFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("data.x: line 3, column"), "{err}");
        let err = parse("[{\"a\": 1}, 5]", DataFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1, column 12") && err.contains("expected a JSON object"),
            "{err}"
        );
        let err = parse("[{\"a\": 1},]", DataFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1, column 11"), "{err}");
        let err = parse("[{\"a\": 1}] x", DataFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trailing characters"), "{err}");
        let err = parse("[{\"a\": 1}", DataFormat::Json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected ',' or ']'"), "{err}");
        let err = parse("\"text\"", DataFormat::Json).unwrap_err().to_string();
        assert!(err.contains("array of objects"), "{err}");
        let err = parse("[]", DataFormat::Json).unwrap_err().to_string();
        assert_eq!(err, "data.x: no rows");
    }

    #[test]
    fn csv_quoting_as_rfc4180() {
        let text = "phrase,tone\r\n\"a, b\",pos\r\n\"say \"\"hi\"\"\nthen go\",neg\r\n\nplain \"q\",\"\"\n";
        let ds = parse(text, DataFormat::Csv).unwrap();
        assert_eq!(ds.rows.len(), 3);
        assert_eq!(
            fields(&ds.rows[0]),
            vec![("phrase", json!("a, b")), ("tone", json!("pos"))]
        );
        assert_eq!(
            ds.rows[1].get("phrase"),
            Some(&json!("say \"hi\"\nthen go"))
        );
        assert_eq!(ds.rows[1].line, 3);
        assert_eq!(ds.rows[2].line, 6);
        assert_eq!(
            fields(&ds.rows[2]),
            vec![("phrase", json!("plain \"q\"")), ("tone", json!(""))]
        );
    }

    #[test]
    fn csv_last_record_without_newline_and_empty_fields() {
        let ds = parse("a,b,c\n1,,3\n,,", DataFormat::Csv).unwrap();
        assert_eq!(ds.rows.len(), 2);
        assert_eq!(ds.rows[1].get("c"), Some(&json!("")));
        let ds = parse("a\tb\nx,y\tz\n", DataFormat::Tsv).unwrap();
        assert_eq!(ds.rows[0].get("a"), Some(&json!("x,y")));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = parse("a,b\n1,2\n1,2,3\n", DataFormat::Csv)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "data.x: line 3: row has 3 fields but the header (line 1) has 2"
        );
        let err = parse("a,b\n1,\"2\nmore", DataFormat::Csv)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "data.x: line 2: quoted field 2 never closed");
        let err = parse("a,b\n\"x\"y,2\n", DataFormat::Csv)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("data.x: line 2: field 1: unexpected 'y'"),
            "{err}"
        );
        let err = parse("a,a\n1,2\n", DataFormat::Csv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("column 'a' twice"), "{err}");
        let err = parse("a,b\n", DataFormat::Csv).unwrap_err().to_string();
        assert_eq!(err, "data.x: no rows");
    }

    #[test]
    fn text_rows_are_non_blank_lines() {
        let ds = parse("first line\r\n\n   \nsecond  \n", DataFormat::Text).unwrap();
        assert_eq!(ds.rows.len(), 2);
        assert_eq!(ds.rows[0].get("text"), Some(&json!("first line")));
        assert_eq!((ds.rows[0].line, ds.rows[1].line), (1, 4));
        assert_eq!(ds.rows[1].get("text"), Some(&json!("second  ")));
    }

    #[test]
    fn empty_and_bom_and_utf16() {
        for format in [
            DataFormat::Jsonl,
            DataFormat::Json,
            DataFormat::Csv,
            DataFormat::Text,
        ] {
            let err = parse(" \n\n", format).unwrap_err().to_string();
            assert_eq!(err, "data.x: empty file: no rows");
        }
        let ds = parse_dataset(b"\xEF\xBB\xBF{\"a\": 1}\n", "b.jsonl", DataFormat::Jsonl).unwrap();
        assert_eq!(ds.rows[0].fields[0].0, "a");
        let err = parse_dataset(b"\xFF\xFEa\x00", "u.txt", DataFormat::Text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-16"), "{err}");
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            DataFormat::from_path(Path::new("a/b.JSONL")).unwrap(),
            DataFormat::Jsonl
        );
        assert_eq!(
            DataFormat::from_path(Path::new("b.csv")).unwrap(),
            DataFormat::Csv
        );
        let err = DataFormat::from_path(Path::new("b.parquet"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("b.parquet: cannot tell the dataset format"),
            "{err}"
        );
        assert_eq!(DataFormat::from_name("text").unwrap(), DataFormat::Text);
        assert!(DataFormat::from_name("xml").is_err());
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/data");

    #[test]
    fn windows_1252_polarity_snippet_names_line_and_byte() {
        let path = Path::new(FIXTURES).join("polarity_cp1252.txt");
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(FIXTURES).join("polarity_cp1252.expected.json"))
                .unwrap(),
        )
        .unwrap();
        let err = read_dataset(&path, None).unwrap_err().to_string();
        let want = format!(
            "{}: line {}, byte {}: not valid UTF-8 (0x{:02X})",
            path.display(),
            expected["line"],
            expected["byte"],
            expected["value"].as_u64().unwrap()
        );
        assert!(err.starts_with(&want), "{err}\nwant prefix: {want}");
        assert!(err.contains("Windows-1252"), "{err}");
    }

    #[test]
    fn polarity_example_dataset_reads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/polarity.jsonl"
        ));
        let ds = read_dataset(path, None).unwrap();
        assert_eq!(ds.rows.len(), 200);
        let positive = ds
            .rows
            .iter()
            .filter(|r| r.get("tone") == Some(&json!("positive")))
            .count();
        assert_eq!(positive, 100);
        assert!(ds.rows.iter().all(|r| r.field_list() == "phrase, tone"));
        // Decoded from Windows-1252: the em dash (0x97) is U+2014 now.
        assert!(ds.rows.iter().any(|r| r
            .get("phrase")
            .unwrap()
            .as_str()
            .unwrap()
            .contains('\u{2014}')));
    }

    #[test]
    fn read_dataset_reports_missing_file() {
        let err = read_dataset(Path::new("/nonexistent/x.jsonl"), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/nonexistent/x.jsonl: "), "{err}");
    }
}
