//! Corpus readers: text files in, documents out, then token ids.
//!
//! Formats (`data.path`):
//! - `.txt`: the whole file is one document; its source is the file's path.
//! - `.jsonl`: one document per line, the text in a string field (`data.text_field`, default
//!   "text"); its source is `path:line` (lines count from 1).
//! - a directory: every `.txt` and `.jsonl` file under it, recursively, in path order (byte-wise,
//!   component by component: `a.txt`, `b/c.txt`, `b.txt` sort as `a.txt` < `b/c.txt` < `b.txt`).
//!   Hidden entries (names starting with `.`) and other extensions (a `README.md`, a `LICENSE`)
//!   are ignored; symbolic links to files are read, symbolic links to directories are not followed.
//!
//! Not documents: a `.txt` file holding only whitespace, and blank lines of a `.jsonl` file. A
//! leading UTF-8 byte-order mark is dropped. Text is otherwise passed on unchanged.
//!
//! **Bad input is fatal.** An unreadable file, invalid UTF-8, a NUL byte (a binary file), a line
//! that is not a JSON object, or one without a string text field stops reading with an error that
//! names the file and line: a silently skipped line would hide a broken corpus. The document
//! iterator yields that error once and then ends.
//!
//! Documents stream: one file (`.txt`) or one line (`.jsonl`) is in memory at a time, so a corpus
//! larger than memory can be tokenised. [`TokenizedCorpus`] then keeps only token ids (4 bytes per
//! token) and each document's source.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// One document of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Where it came from: `path` for a `.txt` file, `path:line` for a `.jsonl` line.
    pub source: String,
    pub text: String,
}

/// Why a corpus could not be read. Each message names the file (and line) and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorpusError {
    #[error("corpus {path} does not exist: set data.path to a .txt or .jsonl file, or a directory of them")]
    NotFound { path: String },
    #[error("corpus file {path} is neither .txt nor .jsonl: rename it, or set data.path to a directory of .txt/.jsonl files")]
    UnsupportedFile { path: String },
    #[error(
        "no .txt or .jsonl files under {path}: set data.path to a directory that holds the corpus"
    )]
    NoFiles { path: String },
    #[error("cannot read {at}: {err}")]
    Io { at: String, err: std::io::Error },
    #[error("{at}: not valid UTF-8: convert the file to UTF-8")]
    InvalidUtf8 { at: String },
    #[error(
        "{at}: contains a NUL byte, so it is probably a binary file: remove it from the corpus"
    )]
    Binary { at: String },
    #[error(
        "{at}: not valid JSON ({message}): each line of a .jsonl file must be one JSON object"
    )]
    BadJson { at: String, message: String },
    #[error(
        "{at}: a JSON {found}, not an object: each line of a .jsonl file must be one JSON object"
    )]
    NotAnObject { at: String, found: &'static str },
    #[error("{at}: no `{field}` field (fields present: {present}): set data.text_field to the field that holds the text")]
    MissingField {
        at: String,
        field: String,
        present: String,
    },
    #[error("{at}: field `{field}` is a JSON {found}, not a string")]
    NonStringField {
        at: String,
        field: String,
        found: &'static str,
    },
    #[error("corpus {path} holds no documents: its files are empty")]
    Empty { path: String },
}

/// A corpus on disk: the list of files to read, in order. Reading happens in [`Corpus::documents`].
#[derive(Debug, Clone)]
pub struct Corpus {
    path: PathBuf,
    files: Vec<PathBuf>,
    text_field: String,
}

impl Corpus {
    /// Finds the corpus files at `path` (a `.txt` or `.jsonl` file, or a directory of them).
    /// `text_field` names the JSON field holding each `.jsonl` document's text.
    pub fn open(path: &Path, text_field: &str) -> Result<Corpus, CorpusError> {
        let shown = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => CorpusError::NotFound {
                path: shown.clone(),
            },
            _ => CorpusError::Io {
                at: shown.clone(),
                err,
            },
        })?;
        let files = if metadata.is_dir() {
            let mut files = Vec::new();
            collect_corpus_files(path, &mut files)?;
            files.sort();
            files
        } else if file_kind(path).is_some() {
            vec![path.to_path_buf()]
        } else {
            return Err(CorpusError::UnsupportedFile { path: shown });
        };
        if files.is_empty() {
            return Err(CorpusError::NoFiles { path: shown });
        }
        Ok(Corpus {
            path: path.to_path_buf(),
            files,
            text_field: text_field.to_string(),
        })
    }

    /// The files that will be read, in reading order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Streams the documents, file by file. Yields an error (then ends) on bad input, and an
    /// [`CorpusError::Empty`] error when the files hold no document at all.
    pub fn documents(&self) -> Documents<'_> {
        Documents {
            corpus: self,
            next_file: 0,
            jsonl: None,
            yielded: 0,
            finished: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Txt,
    Jsonl,
}

fn file_kind(path: &Path) -> Option<FileKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "txt" => Some(FileKind::Txt),
        "jsonl" => Some(FileKind::Jsonl),
        _ => None,
    }
}

/// Appends every corpus file under `dir` to `files`, descending into real subdirectories only.
fn collect_corpus_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), CorpusError> {
    let io_error = |err| CorpusError::Io {
        at: dir.display().to_string(),
        err,
    };
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry.file_type().map_err(io_error)?;
        if file_type.is_dir() {
            collect_corpus_files(&path, files)?;
        } else if file_kind(&path).is_some() && path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

/// Iterator over a corpus's documents; see [`Corpus::documents`].
pub struct Documents<'a> {
    corpus: &'a Corpus,
    next_file: usize,
    jsonl: Option<JsonlReader>,
    yielded: usize,
    finished: bool,
}

impl Iterator for Documents<'_> {
    type Item = Result<Document, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = self.next_document()?;
        match &result {
            Ok(_) => self.yielded += 1,
            Err(_) => self.finished = true,
        }
        Some(result)
    }
}

impl Documents<'_> {
    fn next_document(&mut self) -> Option<Result<Document, CorpusError>> {
        while !self.finished {
            if let Some(reader) = &mut self.jsonl {
                match reader.next_document(&self.corpus.text_field).transpose() {
                    Some(result) => return Some(result),
                    None => self.jsonl = None,
                }
            }
            let Some(path) = self.corpus.files.get(self.next_file) else {
                self.finished = true;
                let path = self.corpus.path.display().to_string();
                return (self.yielded == 0).then_some(Err(CorpusError::Empty { path }));
            };
            self.next_file += 1;
            match file_kind(path) {
                Some(FileKind::Jsonl) => match JsonlReader::open(path) {
                    Ok(reader) => self.jsonl = Some(reader),
                    Err(err) => return Some(Err(err)),
                },
                _ => match read_txt_document(path).transpose() {
                    Some(result) => return Some(result),
                    None => continue,
                },
            }
        }
        None
    }
}

/// Reads a whole `.txt` file as one document; `None` when it holds only whitespace.
fn read_txt_document(path: &Path) -> Result<Option<Document>, CorpusError> {
    let at = path.display().to_string();
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|err| CorpusError::Io {
            at: at.clone(),
            err,
        })?;
    let text = decode_text(bytes, |line| format!("{at}:{line}"))?;
    Ok((!text.trim().is_empty()).then_some(Document { source: at, text }))
}

/// Checks for NUL bytes and invalid UTF-8 and drops a leading byte-order mark. `at(line)` names
/// the place of a problem found on `line` (counted from 1 within `bytes`).
fn decode_text(mut bytes: Vec<u8>, at: impl Fn(usize) -> String) -> Result<String, CorpusError> {
    let line_of =
        |bytes: &[u8], offset: usize| 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(CorpusError::Binary {
            at: at(line_of(&bytes, offset)),
        });
    }
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|err| {
        let offset = err.utf8_error().valid_up_to();
        CorpusError::InvalidUtf8 {
            at: at(line_of(err.as_bytes(), offset)),
        }
    })
}

/// Reads a `.jsonl` file line by line.
struct JsonlReader {
    shown: String,
    reader: BufReader<File>,
    line: usize,
}

impl JsonlReader {
    fn open(path: &Path) -> Result<JsonlReader, CorpusError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|err| CorpusError::Io {
            at: shown.clone(),
            err,
        })?;
        Ok(JsonlReader {
            shown,
            reader: BufReader::new(file),
            line: 0,
        })
    }

    /// The next document, skipping blank lines; `None` at the end of the file.
    fn next_document(&mut self, field: &str) -> Result<Option<Document>, CorpusError> {
        loop {
            let mut bytes = Vec::new();
            self.line += 1;
            let at = format!("{}:{}", self.shown, self.line);
            let read = self.reader.read_until(b'\n', &mut bytes);
            if read.map_err(|err| CorpusError::Io {
                at: at.clone(),
                err,
            })? == 0
            {
                return Ok(None);
            }
            let line = decode_text(bytes, |_| at.clone())?;
            if line.trim().is_empty() {
                continue;
            }
            let text = text_field_of(&line, field, &at)?;
            return Ok(Some(Document { source: at, text }));
        }
    }
}

/// The string in `field` of the JSON object on `line`.
fn text_field_of(line: &str, field: &str, at: &str) -> Result<String, CorpusError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|err| CorpusError::BadJson {
            at: at.to_string(),
            message: err.to_string(),
        })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(CorpusError::NotAnObject {
            at: at.to_string(),
            found: json_type(&value),
        });
    };
    match object.remove(field) {
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(other) => Err(CorpusError::NonStringField {
            at: at.to_string(),
            field: field.to_string(),
            found: json_type(&other),
        }),
        None => Err(CorpusError::MissingField {
            at: at.to_string(),
            field: field.to_string(),
            present: object
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Tokenised documents, stored end to end in one buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizedDocs {
    tokens: Vec<u32>,
    /// `ends[i]`: one past document i's last token in `tokens`.
    ends: Vec<usize>,
    sources: Vec<String>,
}

impl TokenizedDocs {
    /// Documents from `(source, token ids)` pairs: for tests and synthetic data.
    pub fn from_documents(
        documents: impl IntoIterator<Item = (String, Vec<u32>)>,
    ) -> TokenizedDocs {
        let mut docs = TokenizedDocs::default();
        for (source, ids) in documents {
            docs.push(&ids, source);
        }
        docs
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Token ids of document `i`. Panics when `i >= len()`, like slice indexing.
    pub fn tokens(&self, i: usize) -> &[u32] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.tokens[start..self.ends[i]]
    }

    /// Where document `i` came from (`path` or `path:line`).
    pub fn source(&self, i: usize) -> &str {
        &self.sources[i]
    }

    /// Tokens over all documents.
    pub fn total_tokens(&self) -> usize {
        self.tokens.len()
    }

    fn push(&mut self, ids: &[u32], source: String) {
        self.tokens.extend_from_slice(ids);
        self.ends.push(self.tokens.len());
        self.sources.push(source);
    }

    /// Splits off the last `n` documents (`n <= len()`).
    fn split_off_last(&mut self, n: usize) -> TokenizedDocs {
        let keep = self.len() - n;
        let cut = if keep == 0 { 0 } else { self.ends[keep - 1] };
        TokenizedDocs {
            tokens: self.tokens.split_off(cut),
            ends: self
                .ends
                .split_off(keep)
                .into_iter()
                .map(|end| end - cut)
                .collect(),
            sources: self.sources.split_off(keep),
        }
    }
}

/// A tokenised corpus split into training and held-out documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedCorpus {
    /// Documents the sampler draws training contexts from.
    pub train: TokenizedDocs,
    /// The last `heldout_docs` documents (of those long enough), kept for evaluation.
    pub heldout: TokenizedDocs,
    /// Documents dropped for having fewer than `min_len` tokens.
    pub skipped_short: usize,
}

impl TokenizedCorpus {
    /// Tokenises every document with `encode`, drops those with fewer than `min_len` tokens (pass
    /// `data.min_prefix + 1`: a context needs `min_prefix` tokens before its target), and holds
    /// out the last `heldout_docs` of the rest, in corpus order, so the split is the same on every
    /// run and every rank. Fails when no training document is left.
    pub fn build(
        corpus: &Corpus,
        encode: impl Fn(&str) -> anyhow::Result<Vec<u32>>,
        min_len: usize,
        heldout_docs: usize,
    ) -> anyhow::Result<TokenizedCorpus> {
        let mut train = TokenizedDocs::default();
        let mut skipped_short = 0;
        for document in corpus.documents() {
            let Document { source, text } = document?;
            let ids = encode(&text).with_context(|| format!("cannot tokenize {source}"))?;
            if ids.len() < min_len {
                skipped_short += 1;
            } else {
                train.push(&ids, source);
            }
        }
        let kept = train.len();
        if kept == 0 {
            bail!(
                "no document of corpus {} has at least {min_len} tokens ({skipped_short} shorter ones \
                 skipped): use longer documents or lower data.min_prefix",
                corpus.path.display()
            );
        }
        if heldout_docs >= kept {
            bail!(
                "data.heldout_docs = {heldout_docs} leaves no training documents: corpus {} has {kept} \
                 documents of at least {min_len} tokens ({skipped_short} shorter ones skipped)",
                corpus.path.display()
            );
        }
        let heldout = train.split_off_last(heldout_docs);
        Ok(TokenizedCorpus {
            train,
            heldout,
            skipped_short,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus/small")
    }

    /// A whitespace "tokenizer": one id per word, the word's length.
    fn encode_words(text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read_all(path: &Path, field: &str) -> Result<Vec<Document>, CorpusError> {
        Corpus::open(path, field)?.documents().collect()
    }

    fn error_of(path: &Path) -> String {
        read_all(path, "text").unwrap_err().to_string()
    }

    #[test]
    fn directory_is_read_recursively_in_path_order() {
        let docs = read_all(&small_corpus_dir(), "text").unwrap();
        let sources: Vec<String> = docs
            .iter()
            .map(|d| {
                d.source
                    .strip_prefix(&format!("{}/", small_corpus_dir().display()))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            sources,
            [
                "a-river.txt",
                "b-lamp.txt",
                "nested/c-notes.jsonl:1",
                "nested/c-notes.jsonl:2",
                "nested/c-notes.jsonl:4"
            ]
        );
        assert!(docs[0].text.starts_with("The river rose slowly"));
        assert!(docs[2].text.starts_with("One plus one is two."));
    }

    #[test]
    fn hidden_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "doc.txt", b"kept");
        write(dir.path(), ".swap.txt", b"hidden");
        write(dir.path(), "README.md", b"not corpus");
        write(dir.path(), ".git/x.txt", b"hidden dir");
        let docs = read_all(dir.path(), "text").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].text, "kept");
    }

    #[test]
    fn text_field_is_configurable_and_bom_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.jsonl",
            "\u{feff}{\"body\": \"a b c\"}\r\n{\"body\": \"d\"}".as_bytes(),
        );
        let docs = read_all(&path, "body").unwrap();
        assert_eq!(
            docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            ["a b c", "d"]
        );
        let path = write(dir.path(), "t.txt", "\u{feff}hello".as_bytes());
        assert_eq!(read_all(&path, "text").unwrap()[0].text, "hello");
    }

    #[test]
    fn missing_path_and_unsupported_file_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = Corpus::open(&dir.path().join("nope"), "text")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("does not exist"),
            "{err}"
        );
        let path = write(dir.path(), "data.csv", b"a,b");
        let err = Corpus::open(&path, "text").unwrap_err().to_string();
        assert!(
            err.contains("data.csv") && err.contains("neither .txt nor .jsonl"),
            "{err}"
        );
        let empty_dir = dir.path().join("empty");
        std::fs::create_dir(&empty_dir).unwrap();
        let err = Corpus::open(&empty_dir, "text").unwrap_err().to_string();
        assert!(err.contains("no .txt or .jsonl files"), "{err}");
    }

    #[test]
    fn bad_jsonl_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&[u8], &str)] = &[
            (
                b"{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n",
                "bad.jsonl:2: not valid JSON",
            ),
            (
                b"{\"text\": \"ok\"}\n\n{\"body\": \"x\", \"id\": 3}\n",
                "bad.jsonl:3: no `text` field (fields present: body, id)",
            ),
            (
                b"{\"text\": 42}\n",
                "bad.jsonl:1: field `text` is a JSON number",
            ),
            (b"[\"text\"]\n", "bad.jsonl:1: a JSON array, not an object"),
            (
                b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n",
                "bad.jsonl:2: not valid UTF-8",
            ),
            (
                b"{\"text\": \"a\x00b\"}\n",
                "bad.jsonl:1: contains a NUL byte",
            ),
        ];
        for (bytes, expected) in cases {
            let path = write(dir.path(), "bad.jsonl", bytes);
            let err = error_of(&path);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }

    #[test]
    fn bad_txt_files_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bin.txt", b"line one\nline\x00two\n");
        assert!(
            error_of(&path).contains("bin.txt:2: contains a NUL byte"),
            "{}",
            error_of(&path)
        );
        let path = write(dir.path(), "latin1.txt", b"one\ntwo\ncaf\xe9\n");
        assert!(
            error_of(&path).contains("latin1.txt:3: not valid UTF-8"),
            "{}",
            error_of(&path)
        );
    }

    #[test]
    fn unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A directory named like a corpus file cannot be read as one.
        std::fs::create_dir(dir.path().join("dir.txt")).unwrap();
        let corpus = Corpus {
            path: dir.path().into(),
            files: vec![dir.path().join("dir.txt")],
            text_field: "text".into(),
        };
        let err = corpus.documents().next().unwrap().unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read") && err.contains("dir.txt"),
            "{err}"
        );
    }

    #[test]
    fn iteration_ends_after_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.jsonl",
            b"{\"text\": \"ok\"}\nnot json\n{\"text\": \"after\"}\n",
        );
        let results: Vec<_> = Corpus::open(dir.path(), "text")
            .unwrap()
            .documents()
            .collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok() && results[1].is_err());
    }

    #[test]
    fn corpus_without_documents_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "blank.jsonl", b"\n  \n");
        write(dir.path(), "blank.txt", b"   \n");
        let err = error_of(dir.path());
        assert!(err.contains("holds no documents"), "{err}");
    }

    #[test]
    fn build_skips_short_documents_and_holds_out_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            "one two three four",
            "tiny",
            "a b c d e",
            "x y z w v u",
            "p q r s",
        ];
        let jsonl: String = lines
            .iter()
            .map(|t| format!("{{\"text\": \"{t}\"}}\n"))
            .collect();
        write(dir.path(), "c.jsonl", jsonl.as_bytes());
        let corpus = Corpus::open(dir.path(), "text").unwrap();
        let tc = TokenizedCorpus::build(&corpus, encode_words, 4, 2).unwrap();
        assert_eq!(tc.skipped_short, 1);
        assert_eq!((tc.train.len(), tc.heldout.len()), (2, 2));
        assert_eq!(tc.train.tokens(0), &[3, 3, 5, 4]);
        assert_eq!(tc.train.tokens(1), &[1, 1, 1, 1, 1]);
        assert!(tc.train.source(1).ends_with("c.jsonl:3"));
        assert_eq!(tc.heldout.tokens(0), &[1; 6]);
        assert_eq!(tc.heldout.tokens(1), &[1; 4]);
        assert!(tc.heldout.source(1).ends_with("c.jsonl:5"));
        assert_eq!(
            tc.train.total_tokens() + tc.heldout.total_tokens(),
            4 + 5 + 6 + 4
        );
    }

    #[test]
    fn build_refuses_to_leave_no_training_documents() {
        let corpus = Corpus::open(&small_corpus_dir(), "text").unwrap();
        let err = format!(
            "{:#}",
            TokenizedCorpus::build(&corpus, encode_words, 1, 5).unwrap_err()
        );
        assert!(
            err.contains("data.heldout_docs = 5") && err.contains("has 5 documents"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            TokenizedCorpus::build(&corpus, encode_words, 10_000, 0).unwrap_err()
        );
        assert!(
            err.contains("no document") && err.contains("5 shorter ones skipped"),
            "{err}"
        );
    }

    #[test]
    fn tokenizer_errors_name_the_document() {
        let corpus = Corpus::open(&small_corpus_dir(), "text").unwrap();
        let fail = |_: &str| -> anyhow::Result<Vec<u32>> { anyhow::bail!("boom") };
        let err = format!(
            "{:#}",
            TokenizedCorpus::build(&corpus, fail, 1, 0).unwrap_err()
        );
        assert!(
            err.contains("cannot tokenize") && err.contains("a-river.txt") && err.contains("boom"),
            "{err}"
        );
    }
}
