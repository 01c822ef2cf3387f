//! The deployment files set only settings the services read, and run the binaries
//! the workspace builds: deploy/compose.yaml, the Helm chart (values, production
//! example, templates) and deploy/Dockerfile, checked against the built binaries'
//! `--help` and the `[[bin]]` sections of their Cargo.toml.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Standard variables the services' telemetry reads besides their `COURIER_*`
/// flags: the log filter and the OpenTelemetry exporter and sampler settings. Both
/// binaries read all of them, whether or not their `--help` lists them.
const TELEMETRY_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// Settings the chart may map ahead of the release that reads them; none at present
/// (a name goes here only until a binary lists it in `--help`).
const RESERVED_ENV: &[&str] = &[];

const GATEWAY: &str = "courier-gateway";
const WORKER: &str = "courier-worker";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// One flag of a binary's `--help`: its environment variable and default.
struct Setting {
    env: String,
    default: Option<String>,
}

/// The settings `bin --help` lists, by variable name.
fn help_settings(bin: &str) -> BTreeMap<String, Setting> {
    let out = std::process::Command::new(courier_tests::bin_path(bin))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{bin} --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut settings = BTreeMap::new();
    let mut current: Option<Setting> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('-') {
            if let Some(s) = current.take() {
                settings.insert(s.env.clone(), s);
            }
        } else if let Some(rest) = line.strip_prefix("[env: ") {
            // `[env: NAME=]`, or `[env: NAME]` for a flag whose value is hidden.
            let name = rest.split(['=', ']']).next().unwrap().to_owned();
            current = Some(Setting {
                env: name,
                default: None,
            });
        } else if let Some(rest) = line.strip_prefix("[default: ") {
            if let Some(s) = current.as_mut() {
                s.default = Some(rest.trim_end_matches(']').to_owned());
            }
        }
    }
    if let Some(s) = current.take() {
        settings.insert(s.env.clone(), s);
    }
    assert!(
        settings.contains_key("COURIER_PROFILE") && settings.contains_key("COURIER_AMQP_URL"),
        "{bin} --help lists no COURIER_* variables; is its format unchanged?\n{text}"
    );
    settings
}

/// What each binary reads: its `--help` variables, the telemetry's and the reserved.
struct Readers {
    gateway: BTreeSet<String>,
    worker: BTreeSet<String>,
}

impl Readers {
    fn load() -> Self {
        let extra = TELEMETRY_ENV
            .iter()
            .chain(RESERVED_ENV)
            .map(|s| s.to_string());
        let with_extra = |bin| {
            help_settings(bin)
                .into_keys()
                .chain(extra.clone())
                .collect::<BTreeSet<_>>()
        };
        Self {
            gateway: with_extra(GATEWAY),
            worker: with_extra(WORKER),
        }
    }

    fn either(&self) -> BTreeSet<String> {
        self.gateway.union(&self.worker).cloned().collect()
    }

    fn both(&self) -> BTreeSet<String> {
        self.gateway.intersection(&self.worker).cloned().collect()
    }
}

/// Every `COURIER_*`, `OTEL_*` and `RUST_LOG` name in `text` (`COURIER_*` itself, a
/// name ending in `_`, is prose and skipped).
fn env_names(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_uppercase()) {
        let before = rest[..start].chars().next_back();
        let word_len = rest[start..]
            .find(|c: char| !is_word(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        let boundary = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let env_like =
            word.starts_with("COURIER_") || word.starts_with("OTEL_") || word == "RUST_LOG";
        if boundary && env_like && !word.ends_with('_') {
            names.insert(word.to_owned());
        }
        rest = &rest[start + word_len.max(1)..];
    }
    names
}

/// `key: value` entries of a block-style YAML file, each with the keys above it
/// (list items add `-`). Enough for the files checked here: block scalars are
/// skipped, flow collections are kept as their text.
fn yaml_entries(text: &str) -> Vec<(Vec<String>, String)> {
    let mut entries = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut block_scalar_above: Option<usize> = None;
    for raw in text.lines() {
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        if let Some(level) = block_scalar_above {
            if trimmed.is_empty() || indent > level {
                continue;
            }
            block_scalar_above = None;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let (content, item) = match trimmed.strip_prefix("- ") {
            Some(c) => (c.trim_start(), true),
            None => (trimmed, false),
        };
        // A list item closes the previous item of its list; its content sits two
        // columns in.
        let pop_from = if item { indent + 1 } else { indent };
        while stack.last().is_some_and(|(i, _)| *i >= pop_from) {
            stack.pop();
        }
        let indent = if item {
            stack.push((indent + 1, "-".into()));
            indent + 2
        } else {
            indent
        };
        let Some((key, value)) = mapping_entry(content) else {
            if matches!(content, "|" | "|-" | ">" | ">-") {
                block_scalar_above = Some(indent - 2);
            }
            continue;
        };
        if value.starts_with('|') || value.starts_with('>') {
            block_scalar_above = Some(indent);
        }
        let mut path: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
        path.push(key.clone());
        entries.push((path, value.trim_matches('"').to_owned()));
        stack.push((indent, key));
    }
    entries
}

/// `key: value` or `key:` (a key is a plain or double-quoted word, and YAML wants a
/// space or the line's end after its colon).
fn mapping_entry(content: &str) -> Option<(String, String)> {
    let (key, value) = content.split_once(':')?;
    let quoted = key.len() >= 2 && key.starts_with('"') && key.ends_with('"');
    let plain = !key.is_empty() && !key.contains([' ', '"', '{', '[']);
    if !(quoted || plain) || !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    Some((
        key.trim_matches('"').to_owned(),
        strip_comment(value.trim()),
    ))
}

fn strip_comment(value: &str) -> String {
    match value.find(" #") {
        Some(i) if !value.starts_with('"') => value[..i].trim().to_owned(),
        _ => value.to_owned(),
    }
}

/// The names of the entries directly under `parent` (a dotted path).
fn keys_under(entries: &[(Vec<String>, String)], parent: &str) -> BTreeSet<String> {
    let parent: Vec<&str> = parent.split('.').collect();
    entries
        .iter()
        .filter(|(path, _)| {
            path.len() == parent.len() + 1 && path.iter().zip(&parent).all(|(a, b)| a == b)
        })
        .map(|(path, _)| path.last().unwrap().clone())
        .filter(|k| k != "<<")
        .collect()
}

fn value_at<'a>(entries: &'a [(Vec<String>, String)], path: &str) -> Option<&'a str> {
    let path: Vec<&str> = path.split('.').collect();
    entries
        .iter()
        .find(|(p, _)| p.len() == path.len() && p.iter().zip(&path).all(|(a, b)| a == b))
        .map(|(_, v)| v.as_str())
}

/// `names` that `allowed` lacks, as a readable list for an assertion.
fn unknown(names: &BTreeSet<String>, allowed: &BTreeSet<String>) -> Vec<String> {
    names.difference(allowed).cloned().collect()
}

/// `35s`, `1m`, `500ms`, `45` (seconds).
fn duration(text: &str) -> Duration {
    let text = text.trim().trim_matches('"');
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits]
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text}"));
    match &text[digits..] {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => panic!("unknown duration unit {other} in {text}"),
    }
}

const CHART: &str = "deploy/helm/courier";
const VALUES_FILES: [&str; 2] = [
    "deploy/helm/courier/values.yaml",
    "deploy/helm/values-production.yaml",
];

fn chart_templates() -> Vec<(String, String)> {
    let dir = repo().join(CHART).join("templates");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() > 5, "no templates in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn compose_sets_only_variables_its_services_read() {
    let readers = Readers::load();
    let text = read("deploy/compose.yaml");
    let entries = yaml_entries(&text);

    let anywhere = unknown(&env_names(&text), &readers.either());
    assert!(
        anywhere.is_empty(),
        "deploy/compose.yaml sets {anywhere:?}, which no binary reads"
    );

    let shared = keys_under(&entries, "x-courier-env");
    assert!(
        shared.contains("COURIER_PROFILE"),
        "the shared environment was not found"
    );
    let not_both = unknown(&shared, &readers.both());
    assert!(not_both.is_empty(), "the environment shared by gateway and worker sets {not_both:?}, which one of them does not read");
    for (service, reads) in [("gateway", &readers.gateway), ("worker", &readers.worker)] {
        let set = keys_under(&entries, &format!("services.{service}.environment"));
        assert!(
            !set.is_empty(),
            "services.{service}.environment was not found"
        );
        let extra = unknown(&set, reads);
        assert!(
            extra.is_empty(),
            "compose's {service} sets {extra:?}, which courier-{service} does not read"
        );
    }
    assert_eq!(
        value_at(&entries, "x-courier-env.COURIER_PROFILE"),
        Some("dev"),
        "the compose walk-through needs the dev profile"
    );
}

#[test]
fn compose_runs_the_backing_services_as_courier_needs_them() {
    let entries = yaml_entries(&read("deploy/compose.yaml"));
    let services = keys_under(&entries, "services");
    for s in [
        "rabbitmq", "redis", "gateway", "worker", "jaeger", "receiver",
    ] {
        assert!(
            services.contains(s),
            "compose has no {s} service: {services:?}"
        );
    }
    let redis = value_at(&entries, "services.redis.command").unwrap();
    for flag in [
        "--appendonly\", \"yes",
        "--appendfsync\", \"everysec",
        "--maxmemory-policy\", \"noeviction",
    ] {
        assert!(redis.contains(flag), "redis runs without {flag}: {redis}");
    }
    for s in ["gateway", "worker"] {
        for dep in ["rabbitmq", "redis"] {
            assert_eq!(
                value_at(
                    &entries,
                    &format!("services.{s}.depends_on.{dep}.condition")
                ),
                Some("service_healthy"),
                "{s} must wait for a healthy {dep}"
            );
        }
    }
    for s in ["rabbitmq", "redis"] {
        assert!(
            value_at(&entries, &format!("services.{s}.healthcheck.test")).is_some(),
            "{s} has no healthcheck"
        );
    }
    assert_eq!(
        value_at(&entries, "services.worker.deploy.replicas"),
        Some("2")
    );
}

#[test]
fn the_chart_sets_only_variables_its_components_read() {
    let readers = Readers::load();

    for file in VALUES_FILES {
        let text = read(file);
        let anywhere = unknown(&env_names(&text), &readers.either());
        assert!(
            anywhere.is_empty(),
            "{file} names {anywhere:?}, which no binary reads"
        );
        let entries = yaml_entries(&text);
        for (block, reads, who) in [
            ("config", readers.both(), "both services"),
            ("gateway.config", readers.gateway.clone(), GATEWAY),
            ("worker.config", readers.worker.clone(), WORKER),
            ("otel", readers.both(), "both services"),
        ] {
            let set = keys_under(&entries, block);
            let extra = unknown(&set, &reads);
            assert!(
                extra.is_empty(),
                "{file}: {block} sets {extra:?}, which {who} does not read"
            );
        }
    }

    for (name, text) in chart_templates() {
        let reads = if name.starts_with("gateway-") {
            &readers.gateway
        } else if name.starts_with("worker-") {
            &readers.worker
        } else {
            &readers.either()
        };
        let extra = unknown(&env_names(&text), reads);
        assert!(
            extra.is_empty(),
            "templates/{name} names {extra:?}, which its component does not read"
        );
    }
}

#[test]
fn workers_get_longer_to_stop_than_their_shutdown_grace() {
    let worker = help_settings(WORKER);
    let default_grace = worker["COURIER_SHUTDOWN_GRACE"]
        .default
        .clone()
        .expect("a default grace");
    let defaults = yaml_entries(&read(VALUES_FILES[0]));
    for file in VALUES_FILES {
        let entries = yaml_entries(&read(file));
        // A values file overrides the chart's defaults.
        let get = |path: &str| {
            value_at(&entries, path)
                .or_else(|| value_at(&defaults, path))
                .map(str::to_owned)
        };
        let grace = get("worker.config.COURIER_SHUTDOWN_GRACE")
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| default_grace.clone());
        let period = get("worker.terminationGracePeriodSeconds")
            .expect("worker.terminationGracePeriodSeconds");
        assert!(
            duration(&period) > duration(&grace),
            "{file}: worker.terminationGracePeriodSeconds {period} must exceed COURIER_SHUTDOWN_GRACE {grace}"
        );
    }
    let compose = yaml_entries(&read("deploy/compose.yaml"));
    let grace = value_at(
        &compose,
        "services.worker.environment.COURIER_SHUTDOWN_GRACE",
    )
    .unwrap_or(&default_grace);
    let stop = value_at(&compose, "services.worker.stop_grace_period")
        .expect("compose worker stop_grace_period");
    assert!(
        duration(stop) > duration(grace),
        "compose: worker stop_grace_period {stop} must exceed COURIER_SHUTDOWN_GRACE {grace}"
    );
}

/// The `[[bin]]` names of a crate's Cargo.toml.
fn bin_names(manifest: &str) -> Vec<String> {
    let text = read(manifest);
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name") {
                names.push(
                    v.trim_start()
                        .trim_start_matches('=')
                        .trim()
                        .trim_matches('"')
                        .to_owned(),
                );
            }
        }
    }
    names
}

/// The `courier-*` names in `text` that follow `prefix`.
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(rest.len());
            rest[..end].to_owned()
        })
        .collect()
}

#[test]
fn the_image_and_manifests_run_the_workspace_binaries() {
    let gateway = bin_names("crates/courier-gateway/Cargo.toml");
    let worker = bin_names("crates/courier-worker/Cargo.toml");
    assert_eq!(
        gateway,
        [GATEWAY],
        "crates/courier-gateway/Cargo.toml [[bin]]"
    );
    assert_eq!(worker, [WORKER], "crates/courier-worker/Cargo.toml [[bin]]");
    let bins: BTreeSet<String> = [GATEWAY, WORKER].iter().map(|s| s.to_string()).collect();

    let dockerfile = read("deploy/Dockerfile");
    assert_eq!(
        names_after(&dockerfile, "target/release/"),
        bins,
        "binaries the Dockerfile takes from the build"
    );
    assert_eq!(
        names_after(&dockerfile, "/usr/local/bin/"),
        bins,
        "binaries the image installs in /usr/local/bin"
    );
    assert!(
        dockerfile.contains("-p courier-gateway -p courier-worker"),
        "the Dockerfile builds the packages of both binaries"
    );
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("a CMD");
    assert_eq!(
        cmd,
        format!("CMD [\"{GATEWAY}\"]"),
        "the default command is the gateway, in exec form"
    );

    // The ports the image exposes are the binaries' default listen ports.
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("an EXPOSE");
    for (bin, var) in [
        (GATEWAY, "COURIER_GATEWAY_ADDR"),
        (WORKER, "COURIER_WORKER_ADMIN_ADDR"),
    ] {
        let addr = help_settings(bin)[var].default.clone().unwrap();
        let port = addr.rsplit(':').next().unwrap();
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "{expose} lacks {bin}'s port {port}"
        );
    }

    let compose = yaml_entries(&read("deploy/compose.yaml"));
    for (service, bin) in [("gateway", GATEWAY), ("worker", WORKER)] {
        assert_eq!(
            value_at(&compose, &format!("services.{service}.command")),
            Some(format!("[\"{bin}\"]").as_str()),
            "compose's {service} command"
        );
    }
    for (template, bin) in [
        ("gateway-deployment.yaml", GATEWAY),
        ("worker-deployment.yaml", WORKER),
    ] {
        let text = read(&format!("{CHART}/templates/{template}"));
        let commands: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("command:"))
            .collect();
        assert_eq!(
            commands,
            [format!("command: [\"{bin}\"]")],
            "templates/{template} runs {bin}"
        );
    }
}

#[test]
fn the_yaml_reader_handles_the_shapes_used_here() {
    let entries = yaml_entries(
        "a:\n  b: 1 # note\n  list:\n    - name: x\n      value: y\n    - name: z\n  ports:\n    - \"80:80\"\n  script: |\n    k: not a key\n  c: \"2\"\nd: 3\n",
    );
    assert_eq!(value_at(&entries, "a.b"), Some("1"));
    assert_eq!(value_at(&entries, "a.list.-.name"), Some("x"));
    assert_eq!(value_at(&entries, "a.list.-.value"), Some("y"));
    let names: Vec<_> = entries
        .iter()
        .filter(|(p, _)| p.last().unwrap() == "name")
        .map(|(p, v)| (p.join("."), v.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("a.list.-.name".to_owned(), "x"),
            ("a.list.-.name".to_owned(), "z")
        ]
    );
    assert_eq!(value_at(&entries, "a.c"), Some("2"));
    assert_eq!(value_at(&entries, "d"), Some("3"));
    assert!(value_at(&entries, "a.script.k").is_none() && value_at(&entries, "k").is_none());
    assert_eq!(
        keys_under(&entries, "a"),
        ["b", "c", "list", "ports", "script"]
            .map(String::from)
            .into()
    );
    assert!(
        keys_under(&entries, "a.ports.-").is_empty(),
        "a list of strings has no keys"
    );
    assert_eq!(
        env_names("COURIER_* and ${COURIER_PREFIX}, XCOURIER_NO, OTEL_SERVICE_NAME: RUST_LOG"),
        ["COURIER_PREFIX", "OTEL_SERVICE_NAME", "RUST_LOG"]
            .map(String::from)
            .into()
    );
}
