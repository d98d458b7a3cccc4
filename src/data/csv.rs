//! CSV files (RFC 4180: comma-separated fields, LF or CRLF records, fields in double quotes
//! holding commas, line breaks and doubled quotes), read with the `csv` crate. The crate reads
//! two malformations leniently, as Python's `csv` module does: a quote left open to the end of
//! the file (the rest of the file becomes one field) and text after a closing quote (`"1"x` is
//! read as `1x`). pandas refuses the first, and both mean a broken file, so `check_quoting`
//! refuses them with their line before the crate parses.

use std::path::Path;

use super::DataError;

/// One record and the 1-based line of the file where it starts (quoted line breaks make a
/// record span lines).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    /// Line of the row's first character (1-based).
    pub line: usize,
    /// Its fields.
    pub fields: Vec<String>,
}

/// A CSV file: header and rows.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvTable {
    /// Column names.
    pub header: Vec<String>,
    /// Every row after the header.
    pub rows: Vec<CsvRow>,
}

impl CsvTable {
    /// Index of the column `name`, or an error listing the columns there are.
    pub fn column(&self, name: &str, path: &Path) -> Result<usize, DataError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::new(path, Some(1), format!("no column `{name}`; the columns are {:?}", self.header)))
    }
}

/// Refuses a quoted field that is never closed and text after a closing quote, naming the line.
/// A quote inside an unquoted field (`a"b`) is data, as the `csv` crate reads it.
fn check_quoting(text: &str, path: &Path) -> Result<(), DataError> {
    let bytes = text.as_bytes();
    let (mut i, mut line, mut field_start) = (0usize, 1usize, true);
    while i < bytes.len() {
        match bytes[i] {
            b'"' if field_start => {
                let open_line = line;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(DataError::new(path, Some(open_line), "quoted field is never closed".into())),
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(b'\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                if !matches!(bytes.get(i), None | Some(b',' | b'\n' | b'\r')) {
                    return Err(DataError::new(path, Some(line), "text after the closing quote of a field".into()));
                }
                field_start = false;
            }
            c => {
                field_start = c == b',' || c == b'\n';
                line += usize::from(c == b'\n');
                i += 1;
            }
        }
    }
    Ok(())
}

/// Reads `text` as a header and records. Blank lines between records are skipped (as python's
/// `csv.DictReader` does); a quote left open, text after a closing quote, or a record whose
/// field count differs from the header's is an error naming the line.
pub fn parse_csv(text: &str, path: &Path) -> Result<CsvTable, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_quoting(text, path)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut records: Vec<CsvRow> = Vec::new();
    let mut record = csv::StringRecord::new();
    // The crate's record position is where the previous terminator was (blank lines and a CRLF's
    // LF included): the record's own line is that of its first byte past the line breaks.
    let bytes = text.as_bytes();
    let (mut scanned, mut line) = (0usize, 1usize);
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let mut first = record.position().map_or(scanned, |p| p.byte() as usize).max(scanned);
                while bytes.get(first).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                    first += 1;
                }
                line += bytes[scanned..first.min(bytes.len())].iter().filter(|&&b| b == b'\n').count();
                scanned = first.min(bytes.len());
                records.push(CsvRow { line, fields: record.iter().map(str::to_string).collect() });
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize);
                return Err(DataError::new(path, line, e.to_string()));
            }
        }
    }
    let mut it = records.into_iter();
    let header = it.next().ok_or_else(|| DataError::new(path, None, "empty CSV file (no header)".into()))?.fields;
    let rows: Vec<CsvRow> = it.collect();
    for r in &rows {
        if r.fields.len() != header.len() {
            return Err(DataError::new(path, Some(r.line), format!("{} fields; the header has {}", r.fields.len(), header.len())));
        }
    }
    Ok(CsvTable { header, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CsvTable, DataError> {
        parse_csv(s, Path::new("t.csv"))
    }

    #[test]
    fn quoted_commas_newlines_and_quotes() {
        let t = parse("a,b,c\r\n1,\"x, \"\"y\"\"\nz\",\n\n\"\",q,\"\"\"\"\n").unwrap();
        assert_eq!(t.header, vec!["a", "b", "c"]);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0], CsvRow { line: 2, fields: vec!["1".into(), "x, \"y\"\nz".into(), "".into()] });
        // The blank line 4 is skipped; the next record starts on line 5.
        assert_eq!(t.rows[1], CsvRow { line: 5, fields: vec!["".into(), "q".into(), "\"".into()] });
    }

    #[test]
    fn no_trailing_newline_and_bom() {
        let t = parse("\u{feff}h1,h2\nä,\"b\"").unwrap();
        assert_eq!(t.header, vec!["h1", "h2"]);
        assert_eq!(t.rows[0].fields, vec!["ä", "b"]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("a,b\n1,2\n3,\"open\n\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:3") && e.contains("never closed"), "{e}");
        let e = parse("a,b\n1,2\n3\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:3") && e.contains("1 fields"), "{e}");
        let e = parse("a,b\n\"1\"x,2\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("after the closing quote"), "{e}");
        assert!(parse("").is_err());
        // A quote inside an unquoted field is data; a lone CR inside a quoted field too.
        let t = parse("a,b\n1\"x,\"p\rq\"\n").unwrap();
        assert_eq!(t.rows[0].fields, vec!["1\"x", "p\rq"]);
        // An unclosed quote in the last field would swallow the rest of the file.
        let e = parse("a,b\n1,\"x\n2,y\n3,z\n").unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("never closed"), "{e}");
    }
}
