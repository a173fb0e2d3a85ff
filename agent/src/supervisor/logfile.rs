//! The container log: JSON lines `{"log":"…","stream":"stdout","time":"<RFC 3339>"}` (docker's
//! json-file format), written by the shim with size rotation (`container.log` is the live
//! file, `container.log.1` the newest rotated one, up to `max_files` files in all), and read
//! back by the engine (`logs --tail`, `-f`).
//!
//! A **record** is one line of output (or a 16 KiB piece of a longer one), with its stream
//! and the time the shim read it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::timefmt;

/// Longest piece of a line kept in one record (docker splits at 16 KiB too).
pub const MAX_RECORD: usize = 16 * 1024;

/// One log line as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// A record as read back: time parsed, data as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: String,
    pub time_nanos: i64,
    pub data: Vec<u8>,
}

impl LogRecord {
    fn into_entry(self) -> LogEntry {
        LogEntry {
            time_nanos: timefmt::parse_rfc3339(&self.time).unwrap_or(0),
            stream: self.stream,
            data: self.log.into_bytes(),
        }
    }
}

/// Path of the `n`-th rotated file (`n` = 0 is the live file).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        path.to_path_buf()
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }
}

/// Appends records to the live file and rotates it when it passes `max_bytes`.
pub struct LogWriter {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: File,
    size: u64,
}

impl LogWriter {
    /// Opens (appending) the live log file. `max_bytes` = 0 disables rotation.
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            max_bytes,
            max_files: max_files.max(1),
            file,
            size,
        })
    }

    /// Writes one record per line of `data`; the caller splits lines (see [`LineSplitter`]).
    pub fn write(&mut self, stream: &str, time_nanos: i64, data: &[u8]) -> io::Result<()> {
        let rec = LogRecord {
            log: String::from_utf8_lossy(data).into_owned(),
            stream: stream.to_string(),
            time: timefmt::format_rfc3339(time_nanos),
        };
        let mut line = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        if self.max_bytes > 0 && self.size >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(rotated_path(&self.path, self.max_files - 1));
        for n in (1..self.max_files - 1).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Splits a byte stream into lines (kept with their `\n`) and pieces of at most
/// [`MAX_RECORD`] bytes; a partial line waits for more data or [`LineSplitter::finish`].
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            match rest.iter().position(|&c| c == b'\n') {
                Some(i) if i < MAX_RECORD => {
                    emit(&rest[..=i]);
                    start += i + 1;
                }
                _ if rest.len() >= MAX_RECORD => {
                    emit(&rest[..MAX_RECORD]);
                    start += MAX_RECORD;
                }
                _ => break,
            }
        }
        self.buf.drain(..start);
    }

    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

fn parse_lines(reader: impl BufRead, out: &mut Vec<LogEntry>) {
    for line in reader.lines().map_while(Result::ok) {
        if let Ok(rec) = serde_json::from_str::<LogRecord>(&line) {
            out.push(rec.into_entry());
        }
    }
}

/// Reads every record of the live file and its rotated files, oldest first, and returns
/// them with a [`LogFollower`] positioned at the end of the live file.
pub fn read_all(path: &Path, max_files: u32) -> io::Result<(Vec<LogEntry>, LogFollower)> {
    let mut out = Vec::new();
    for n in (1..max_files.max(1)).rev() {
        if let Ok(f) = File::open(rotated_path(path, n)) {
            parse_lines(BufReader::new(f), &mut out);
        }
    }
    let mut follower = LogFollower {
        path: path.to_path_buf(),
        file: None,
        pending: Vec::new(),
        ino: 0,
    };
    follower.poll_into(&mut out)?;
    Ok((out, follower))
}

/// The last `n` entries (all when `n` is negative).
pub fn tail(mut entries: Vec<LogEntry>, n: i64) -> Vec<LogEntry> {
    if n >= 0 && (n as usize) < entries.len() {
        entries.drain(..entries.len() - n as usize);
    }
    entries
}

/// Follows the live file: each [`LogFollower::poll`] returns the records appended since the
/// last one, and notices rotation (the live file replaced by a new one) and reopens.
pub struct LogFollower {
    path: PathBuf,
    file: Option<File>,
    pending: Vec<u8>,
    ino: u64,
}

impl LogFollower {
    pub fn poll(&mut self) -> io::Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        self.poll_into(&mut out)?;
        Ok(out)
    }

    fn poll_into(&mut self, out: &mut Vec<LogEntry>) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => {
                    self.ino = f.metadata()?.ino();
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.read_available(out)?;
        // Rotated (or truncated) since we opened it: finish the old file, then the new one.
        let rotated = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino() != self.ino,
            Err(_) => false,
        };
        let truncated = match self.file.as_mut() {
            Some(f) => {
                let pos = f.stream_position()?;
                f.metadata()?.len() < pos
            }
            None => false,
        };
        if truncated {
            if let Some(f) = self.file.as_mut() {
                f.seek(SeekFrom::Start(0))?;
            }
            self.pending.clear();
            self.read_available(out)?;
        } else if rotated {
            self.file = None;
            self.pending.clear();
            if let Ok(f) = File::open(&self.path) {
                self.ino = f.metadata()?.ino();
                self.file = Some(f);
                self.read_available(out)?;
            }
        }
        Ok(())
    }

    fn read_available(&mut self, out: &mut Vec<LogEntry>) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.pending.extend_from_slice(&buf);
        if let Some(last) = self.pending.iter().rposition(|&c| c == b'\n') {
            let complete: Vec<u8> = self.pending.drain(..=last).collect();
            parse_lines(BufReader::new(&complete[..]), out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(entries: &[LogEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect()
    }

    #[test]
    fn splitter_keeps_newlines_and_splits_long_lines() {
        let mut s = LineSplitter::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        s.push(b"a\nbb", |l| got.push(l.to_vec()));
        s.push(b"b\n", |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"a\n".to_vec(), b"bbb\n".to_vec()]);
        got.clear();
        let long = vec![b'x'; MAX_RECORD + 10];
        s.push(&long, |l| got.push(l.to_vec()));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_RECORD);
        s.finish(|l| got.push(l.to_vec()));
        assert_eq!(got[1], vec![b'x'; 10]);
    }

    #[test]
    fn writer_rotates_and_reader_sees_all_kept_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        // Each record is ~80 bytes: 200 bytes per file, 3 files kept.
        let mut w = LogWriter::open(&path, 200, 3).unwrap();
        for i in 0..20 {
            w.write("stdout", i, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists(), "max_files is 3");
        let (all, _) = read_all(&path, 3).unwrap();
        let t = texts(&all);
        assert_eq!(t.last().unwrap(), "line 19\n");
        // Oldest kept lines were dropped, the rest is contiguous and ordered.
        let first: usize = t[0].trim()[5..].parse().unwrap();
        assert!(first > 0);
        let expected: Vec<String> = (first..20).map(|i| format!("line {i}\n")).collect();
        assert_eq!(t, expected);
        assert_eq!(all[0].time_nanos, first as i64);
    }

    #[test]
    fn tail_and_follow_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, 0, 1).unwrap();
        for i in 0..5 {
            w.write("stderr", i, format!("{i}\n").as_bytes()).unwrap();
        }
        let (all, mut f) = read_all(&path, 1).unwrap();
        assert_eq!(texts(&tail(all.clone(), 2)), vec!["3\n", "4\n"]);
        assert_eq!(tail(all.clone(), -1).len(), 5);
        assert_eq!(tail(all, 0).len(), 0);
        assert!(f.poll().unwrap().is_empty());
        w.write("stdout", 9, b"new\n").unwrap();
        let got = f.poll().unwrap();
        assert_eq!(texts(&got), vec!["new\n"]);
        assert_eq!(got[0].stream, "stdout");
        // Rotation with 2 files: the follower moves to the new live file.
        let mut w = LogWriter::open(&path, 100, 2).unwrap();
        w.write("stdout", 10, b"rotates\n").unwrap();
        w.write("stdout", 11, b"after\n").unwrap();
        let got = f.poll().unwrap();
        assert_eq!(texts(&got), vec!["rotates\n", "after\n"]);
    }
}
