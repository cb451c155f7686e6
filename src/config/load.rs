//! Loading a config file: paths made absolute against the config file, `--set KEY=VALUE`
//! overrides applied to the parsed TOML (with the valid keys listed when one is unknown), then
//! deserialisation, its errors turned into messages that name the key, the file or the override
//! at fault. The schema itself is `config.rs`.

use super::*;

/// Keys holding paths, resolved as config.rs's module docs say.
const PATH_KEYS: [(&str, &str); 2] = [("model", "path"), ("data", "path")];

impl TrainConfig {
    /// Reads `path`, applies `--set section.key=value` overrides in order, and deserialises.
    /// Does not call [`validate`](Self::validate).
    pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut root: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let config_dir = std::path::absolute(path)
            .with_context(|| format!("cannot resolve the directory of {}", path.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        resolve_paths(&mut root, &config_dir);
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let mut overridden = Vec::new();
        for raw in overrides {
            let key = apply_override(&mut root, raw, &cwd)?;
            overridden.push((key, raw.as_str()));
        }
        TrainConfig::deserialize(toml::Value::Table(root))
            .map_err(|err| describe_deserialize_error(&err, path, &text, &overridden))
    }
}

/// Makes the relative path keys of the file absolute against the config file's directory.
pub(super) fn resolve_paths(root: &mut toml::Table, base: &Path) {
    for (section, key) in PATH_KEYS {
        let value = root.get_mut(section).and_then(|s| s.get_mut(key));
        if let Some(toml::Value::String(s)) = value {
            *s = base.join(&*s).to_string_lossy().into_owned();
        }
    }
}

/// Applies one `section.key=value` override and returns `section.key`. The value is parsed as a
/// TOML value (`1e-6`, `true`, `[0.9, 0.99]`, `"quoted"`), and taken as a plain string when it is
/// not one (`--set model.path=models/x.gguf`).
pub(super) fn apply_override(root: &mut toml::Table, raw: &str, cwd: &Path) -> Result<String> {
    let usage = "expected section.key=value, e.g. --set optim.lr=1e-6";
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {raw}: {usage}"))?;
    let key = key.trim();
    let (section, field) = key
        .split_once('.')
        .ok_or_else(|| anyhow!("--set {raw}: {usage}"))?;
    let Some(fields) = section_fields(section) else {
        bail!(
            "--set {raw}: unknown section `{section}`; valid sections: {}",
            fields_of::<TrainConfig>().join(", ")
        )
    };
    if !fields.contains(&field) {
        bail!(
            "--set {raw}: unknown key `{field}` in [{section}]; valid keys: {}",
            fields.join(", ")
        );
    }
    let mut value = parse_override_value(value);
    if let toml::Value::String(s) = &mut value {
        if PATH_KEYS.contains(&(section, field)) {
            *s = cwd.join(&*s).to_string_lossy().into_owned();
        }
    }
    let table = root
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(table) = table else {
        bail!("--set {raw}: `{section}` in the config file is not a section ([{section}]); fix the file")
    };
    table.insert(field.to_string(), value);
    Ok(key.to_string())
}

pub(super) fn parse_override_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The keys of one section, as its struct spells them.
pub(super) fn section_fields(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "model" => fields_of::<ModelSection>(),
        "data" => fields_of::<DataSection>(),
        "rollout" => fields_of::<RolloutSection>(),
        "objective" => fields_of::<ObjectiveSection>(),
        "optim" => fields_of::<OptimSection>(),
        "train" => fields_of::<TrainSection>(),
        "logging" => fields_of::<LoggingSection>(),
        "checkpoint" => fields_of::<CheckpointSection>(),
        _ => return None,
    })
}

/// The field names serde's derive gives a struct, read by asking it to deserialise from a probe
/// that records them. Keeps the override key check in step with the structs by construction.
pub(super) fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldProbe {
        fields: &mut fields,
    });
    fields.unwrap_or(&[])
}

struct FieldProbe<'a> {
    fields: &'a mut Option<&'static [&'static str]>,
}

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.fields = Some(fields);
        Err(serde::de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Turns a deserialisation error into one naming the key and where its value came from: the
/// `--set` that wrote it, or the file (with the line, when the file alone shows the same error).
pub(super) fn describe_deserialize_error(
    err: &toml::de::Error,
    path: &Path,
    text: &str,
    overridden: &[(String, &str)],
) -> anyhow::Error {
    let message = err.message().trim();
    let key = err.to_string().lines().rev().find_map(|l| {
        l.strip_prefix("in `")?
            .strip_suffix('`')
            .map(str::to_string)
    });
    let key_note = match key.as_deref() {
        Some(k) if k.contains('.') => format!(" (key `{k}`)"),
        Some(section) => format!(" (in [{section}])"),
        None => String::new(),
    };
    let from_override = key.as_deref().and_then(|k| {
        overridden
            .iter()
            .rev()
            .find(|(set, _)| k == set || k.starts_with(&format!("{set}.")))
    });
    if let Some((set, raw)) = from_override {
        let value = raw.split_once('=').map_or("", |(_, v)| v);
        let wants_string =
            message.contains("expected a string") || message.contains("expected path string");
        let hint = if wants_string {
            format!("; to pass it as a string, quote it: --set '{set}=\"{value}\"'")
        } else {
            String::new()
        };
        return anyhow!("--set {raw}: {message}{key_note}{hint}");
    }
    if let Err(file_err) = toml::from_str::<TrainConfig>(text) {
        if file_err.message().trim() == message {
            return anyhow!(
                "{}: {}{key_note}",
                path.display(),
                file_err.to_string().trim_end()
            );
        }
    }
    anyhow!("{}: {message}{key_note}", path.display())
}
