//! TensorBoard event files in `RUN/tb/` (`logging.tensorboard`), written with the `tboard`
//! crate: every numeric field of each `metrics.jsonl` line as a scalar under the same name
//! (the periodic `eval_*` fields included), and a few of each rollout batch's thoughts as a
//! `samples` text summary. `tensorboard --logdir RUN/tb` shows them live.
//!
//! Resume: the trainer reruns the steps after its checkpoint, so opening the log at step S
//! first drops every event past S from the event files already there (rewriting only the files
//! that have some), as it drops those lines from `metrics.jsonl`; a resumed run then writes
//! one new event file. No step is ever logged twice.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tboard::tensorboard::{self as pb, event::What, summary, summary_metadata, DataType};
use tboard::{EventWriter, SummaryReader};

/// The directory of a run's event files.
pub fn tb_dir(run: &Path) -> PathBuf {
    run.join("tb")
}

/// This process's event file.
pub struct TensorBoard {
    writer: EventWriter<std::fs::File>,
}

impl TensorBoard {
    /// Open `RUN/tb/` for a run that continues after `step` (0 for a fresh run): events past
    /// `step` in existing files are dropped first.
    pub fn open(run: &Path, step: u64) -> Result<TensorBoard> {
        let dir = tb_dir(run);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for file in event_files(&dir)? {
            drop_events_after(&file, step)?;
        }
        let writer = EventWriter::create(&dir).map_err(|e| anyhow!("cannot create a TensorBoard event file in {}: {e}", dir.display()))?;
        Ok(TensorBoard { writer })
    }

    /// Every number (and boolean, as 0/1) of a metrics line as a scalar of the line's step.
    pub fn log_metrics(&mut self, m: &Value) -> Result<()> {
        let step = m["step"].as_u64().context("a metrics line without a step")? as i64;
        let obj = m.as_object().context("a metrics line is a JSON object")?;
        let values: Vec<summary::Value> = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| {
                let x = v.as_f64().or_else(|| v.as_bool().map(|b| b as u8 as f64))?;
                Some(summary::Value { tag: k.clone(), value: Some(summary::value::Value::SimpleValue(x as f32)), ..Default::default() })
            })
            .collect();
        self.write(step, values)
    }

    /// A text summary (markdown) under `tag`.
    pub fn log_text(&mut self, step: u64, tag: &str, markdown: &str) -> Result<()> {
        let tensor = pb::TensorProto {
            dtype: DataType::DtString.into(),
            tensor_shape: Some(pb::TensorShapeProto::default()),
            string_val: vec![markdown.as_bytes().to_vec()],
            ..Default::default()
        };
        let metadata = pb::SummaryMetadata {
            plugin_data: Some(summary_metadata::PluginData { plugin_name: "text".into(), content: vec![] }),
            ..Default::default()
        };
        let value = summary::Value { tag: tag.into(), metadata: Some(metadata), value: Some(summary::value::Value::Tensor(tensor)), ..Default::default() };
        self.write(step as i64, vec![value])
    }

    fn write(&mut self, step: i64, value: Vec<summary::Value>) -> Result<()> {
        self.writer.write(step, What::Summary(pb::Summary { value })).map_err(|e| anyhow!("cannot write a TensorBoard event: {e}"))?;
        self.writer.flush().map_err(|e| anyhow!("cannot flush the TensorBoard event file: {e}"))
    }
}

/// The event files of a TensorBoard directory, by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    out.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents.")));
    out.sort();
    Ok(out)
}

/// Every event of an event file, in order. A torn last record (a crash mid-write) ends the list.
pub fn read_events(path: &Path) -> Result<Vec<pb::Event>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for e in SummaryReader::new(std::io::BufReader::new(f)) {
        match e {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Rewrite `path` without its events past `step` (atomically; untouched when none are).
fn drop_events_after(path: &Path, step: u64) -> Result<()> {
    let events = read_events(path)?;
    let keep = |e: &pb::Event| e.step <= step as i64 || matches!(e.what, Some(What::FileVersion(_)));
    if events.iter().all(keep) {
        return Ok(());
    }
    let tmp = path.with_extension("rewrite");
    let mut w = EventWriter::from_writer(std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?, None)
        .map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    for e in events.into_iter().filter(keep).filter(|e| !matches!(e.what, Some(What::FileVersion(_)))) {
        w.write_event(e).map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    }
    w.flush().map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}
