//! The JSON Schemas of `proto-schemas/`, each registered under its `$id`.

use std::path::PathBuf;

use serde_json::Value;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto-schemas")
}

fn read(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every schema file of the folder.
pub fn all() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".schema.json") {
            out.push((name, read(&path)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A validator for `file` (e.g. `batch-envelope.schema.json`) that resolves
/// references to the other schemas and checks formats.
pub fn validator(file: &str) -> jsonschema::Validator {
    let mut options = jsonschema::options().should_validate_formats(true);
    for (_, schema) in all() {
        let id = schema["$id"].as_str().unwrap().to_owned();
        options = options.with_resource(id, jsonschema::Resource::from_contents(schema).unwrap());
    }
    options.build(&read(&dir().join(file))).unwrap()
}

/// Panics with every error if `instance` does not validate against `file`.
pub fn assert_valid(file: &str, instance: &Value) {
    let v = validator(file);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} does not validate against {file}: {errors:?}"
    );
}

/// An example of `proto-schemas/examples/`.
pub fn example(name: &str) -> Value {
    read(&dir().join("examples").join(name))
}
