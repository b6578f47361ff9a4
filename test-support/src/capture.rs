//! [`LogCapture`]: keeps what a log writer writes, for tests that read their own logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `Write` that keeps everything written to it; clones share the buffer. Give a tracing
/// subscriber `.with_writer(move || capture.clone())`, then read [`contents`](Self::contents).
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
