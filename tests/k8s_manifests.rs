//! The Kubernetes manifests of `docker/k8s/`, every YAML file in it and its subdirectories,
//! checked offline:
//!
//! - every built-in object against the schemas of [`KUBERNETES_VERSION`] with
//!   kubernetes-validate in strict mode (an unknown field is an error, and so is a kind it has
//!   no schema for);
//! - every custom resource it cannot know (Prometheus Operator `ServiceMonitor`, KEDA
//!   `ScaledObject`) against the fields its operator requires, and what they point at;
//! - what ties the objects together: fulcrum's configuration in its ConfigMap passes
//!   `fulcrum check`, a `discovery = "dns"` name is a headless Service in front of pods that
//!   listen on its port, the probes ask `/healthz` and `/readyz` on the configuration's admin
//!   port, the termination grace covers the drain, every pod runs as the image's non-root user
//!   on a read-only root with no capability, and every selector finds its pods.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.34.0";

/// One object of one YAML file.
#[derive(Debug, Clone)]
struct Manifest {
    /// `docker/k8s/FILE#N` (N counts the file's documents from 1).
    place: String,
    object: Value,
}

impl Manifest {
    fn str(&self, pointer: &str) -> &str {
        self.object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    fn kind(&self) -> &str {
        self.str("/kind")
    }
    fn api_version(&self) -> &str {
        self.str("/apiVersion")
    }
    fn name(&self) -> &str {
        self.str("/metadata/name")
    }
    fn namespace(&self) -> &str {
        match self.str("/metadata/namespace") {
            "" => "default",
            ns => ns,
        }
    }
    /// `FILE#N Kind/name`, for messages.
    fn title(&self) -> String {
        format!("{} {}/{}", self.place, self.kind(), self.name())
    }
    /// The API group: `apps` of `apps/v1`, empty for the core group (`v1`).
    fn group(&self) -> &str {
        self.api_version()
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }
}

/// Every YAML file under `dir`, subdirectories included, in path order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The objects of a YAML text (empty documents dropped); `file` names them.
fn parse_objects(text: &str, file: &str) -> Vec<Manifest> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .filter_map(|(i, doc)| {
            let object = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: document {} is not YAML: {e}", i + 1));
            (!object.is_null()).then(|| Manifest {
                place: format!("{file}#{}", i + 1),
                object,
            })
        })
        .collect()
}

/// Every object of every YAML file under `docker/k8s/`.
fn manifests() -> Vec<Manifest> {
    let root = repo_root();
    let files = yaml_files(&root.join("docker/k8s"));
    assert!(!files.is_empty(), "no YAML file under docker/k8s/");
    files
        .iter()
        .flat_map(|path| {
            let file = path.strip_prefix(&root).unwrap().display().to_string();
            parse_objects(&std::fs::read_to_string(path).unwrap(), &file)
        })
        .collect()
}

/// API groups whose kinds are custom resources kubernetes-validate has no schema for; their
/// objects are checked by [`check_custom_resource`] instead.
const CUSTOM_GROUPS: &[&str] = &["monitoring.coreos.com", "keda.sh"];

fn is_custom(m: &Manifest) -> bool {
    CUSTOM_GROUPS.contains(&m.group())
}

/// kubernetes-validate (strict, [`KUBERNETES_VERSION`]) on each object: the problems, named by
/// the object's title. An object it has no schema for is a problem, not a warning.
fn kubernetes_validate(objects: &[&Manifest]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = objects
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = dir.path().join(format!("object-{i}.json"));
            std::fs::write(&f, serde_json::to_string_pretty(&m.object).unwrap()).unwrap();
            f
        })
        .collect();
    let out = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("cannot run kubernetes-validate");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let mut problems = Vec::new();
    for (f, m) in files.iter().zip(objects) {
        let f = f.display().to_string();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&f)).collect();
        let passed = !lines.is_empty()
            && lines
                .iter()
                .all(|l| l.starts_with("INFO") && l.contains(" passed "));
        if !passed {
            let said = if lines.is_empty() {
                format!("no verdict ({}):\n{text}", out.status)
            } else {
                lines.join("\n").replace(&f, "")
            };
            problems.push(format!("{}: {said}", m.title()));
        }
    }
    if problems.is_empty() && !out.status.success() {
        problems.push(format!(
            "kubernetes-validate failed ({}):\n{text}",
            out.status
        ));
    }
    problems
}

/// `Some(problem)` when `v` at `pointer` of `m` is not a non-empty string.
fn need_string(m: &Manifest, pointer: &str) -> Option<String> {
    match m.object.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => None,
        other => Some(format!(
            "{}: {pointer} must be a non-empty string, is {other:?}",
            m.title()
        )),
    }
}

/// Whether `labels` has every pair of `selector`'s `matchLabels` (and the selector is not empty).
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector.as_object().filter(|w| !w.is_empty()) else {
        return false;
    };
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Go duration as the operators take it (`15s`, `1m30s`, `500ms`).
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// The fields the operator of a custom resource requires, and that what it points at exists
/// among `all`.
fn check_custom_resource(m: &Manifest, all: &[Manifest]) -> Vec<String> {
    let mut problems: Vec<String> = need_string(m, "/metadata/name").into_iter().collect();
    match (m.api_version(), m.kind()) {
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            let selector = m.object.pointer("/spec/selector/matchLabels");
            let endpoints = m
                .object
                .pointer("/spec/endpoints")
                .and_then(Value::as_array);
            let Some(selector) = selector else {
                problems.push(format!(
                    "{}: spec.selector.matchLabels is required",
                    m.title()
                ));
                return problems;
            };
            let Some(endpoints) = endpoints.filter(|e| !e.is_empty()) else {
                problems.push(format!(
                    "{}: spec.endpoints must list at least one",
                    m.title()
                ));
                return problems;
            };
            let services: Vec<&Manifest> = all
                .iter()
                .filter(|s| s.kind() == "Service" && s.namespace() == m.namespace())
                .filter(|s| selects(selector, &s.object["metadata"]["labels"]))
                .collect();
            if services.is_empty() {
                problems.push(format!(
                    "{}: spec.selector {selector} selects no Service in {}",
                    m.title(),
                    m.namespace()
                ));
            }
            for (i, e) in endpoints.iter().enumerate() {
                let Some(port) = e["port"].as_str() else {
                    problems.push(format!(
                        "{}: spec.endpoints[{i}].port must name a Service port",
                        m.title()
                    ));
                    continue;
                };
                for s in &services {
                    let named = s.object["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == port);
                    if !named {
                        problems.push(format!(
                            "{}: spec.endpoints[{i}].port {port} is not a port of {}",
                            m.title(),
                            s.title()
                        ));
                    }
                }
                for key in ["interval", "scrapeTimeout"] {
                    if let Some(d) = e.get(key) {
                        if !d.as_str().is_some_and(is_duration) {
                            problems.push(format!(
                                "{}: spec.endpoints[{i}].{key} {d} is not a duration",
                                m.title()
                            ));
                        }
                    }
                }
            }
        }
        ("keda.sh/v1alpha1", "ScaledObject") => {
            problems.extend(need_string(m, "/spec/scaleTargetRef/name"));
            let target = m.str("/spec/scaleTargetRef/name");
            let kind = match m.str("/spec/scaleTargetRef/kind") {
                "" => "Deployment",
                k => k,
            };
            if !all
                .iter()
                .any(|t| t.kind() == kind && t.name() == target && t.namespace() == m.namespace())
            {
                problems.push(format!(
                    "{}: spec.scaleTargetRef {kind}/{target} is not among the manifests in {}",
                    m.title(),
                    m.namespace()
                ));
            }
            let count = |key: &str| m.object["spec"].get(key).map(Value::as_u64);
            let (min, max) = (count("minReplicaCount"), count("maxReplicaCount"));
            for (key, v) in [("minReplicaCount", min), ("maxReplicaCount", max)] {
                if v == Some(None) {
                    problems.push(format!("{}: spec.{key} must be a count", m.title()));
                }
            }
            if let (Some(Some(min)), Some(Some(max))) = (min, max) {
                if min > max {
                    problems.push(format!(
                        "{}: minReplicaCount {min} is above maxReplicaCount {max}",
                        m.title()
                    ));
                }
            }
            match m.object.pointer("/spec/triggers").and_then(Value::as_array) {
                Some(triggers) if !triggers.is_empty() => {
                    for (i, t) in triggers.iter().enumerate() {
                        if t["type"].as_str().is_none_or(str::is_empty) {
                            problems.push(format!(
                                "{}: spec.triggers[{i}].type is required",
                                m.title()
                            ));
                        }
                        // KEDA takes trigger metadata as a map of strings: a bare number or
                        // boolean is refused by the CRD.
                        match t["metadata"].as_object() {
                            Some(meta) => {
                                for (k, v) in meta {
                                    if !v.is_string() {
                                        problems.push(format!(
                                            "{}: spec.triggers[{i}].metadata.{k} must be a string (quote it), is {v}",
                                            m.title()
                                        ));
                                    }
                                }
                            }
                            None => problems.push(format!(
                                "{}: spec.triggers[{i}].metadata is required",
                                m.title()
                            )),
                        }
                    }
                }
                _ => problems.push(format!(
                    "{}: spec.triggers must list at least one",
                    m.title()
                )),
            }
        }
        ("monitoring.coreos.com/v1", "PrometheusRule") => {
            let groups = m.object.pointer("/spec/groups").and_then(Value::as_array);
            let Some(groups) = groups.filter(|g| !g.is_empty()) else {
                problems.push(format!("{}: spec.groups must list at least one", m.title()));
                return problems;
            };
            for (g, group) in groups.iter().enumerate() {
                if group["name"].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{}: spec.groups[{g}].name is required", m.title()));
                }
                let Some(rules) = group["rules"].as_array().filter(|r| !r.is_empty()) else {
                    problems.push(format!(
                        "{}: spec.groups[{g}].rules must list at least one",
                        m.title()
                    ));
                    continue;
                };
                for (r, rule) in rules.iter().enumerate() {
                    let named = rule["alert"].is_string() != rule["record"].is_string();
                    if !named || !rule["expr"].is_string() {
                        problems.push(format!(
                            "{}: spec.groups[{g}].rules[{r}] needs an expr and one of alert or record",
                            m.title()
                        ));
                    }
                }
            }
        }
        (api, kind) => problems.push(format!(
            "{}: custom resource {api} {kind} is not known to this test; teach \
             check_custom_resource the fields its operator requires",
            m.title()
        )),
    }
    problems
}

/// The text of the file at `path` inside `container` of the pod template `pod`: the ConfigMap
/// (among `all`) mounted on its directory, and the key named as the file.
fn mounted_file<'a>(
    workload: &Manifest,
    container: &Value,
    path: &str,
    all: &'a [Manifest],
) -> (&'a Manifest, String) {
    let pod = &workload.object["spec"]["template"]["spec"];
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(dir))
        .unwrap_or_else(|| {
            panic!(
                "{}: nothing is mounted at {dir} for {path}",
                workload.title()
            )
        });
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{}: no volume {}", workload.title(), mount["name"]));
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: volume {volume} is not a ConfigMap", workload.title()));
    let cm = all
        .iter()
        .find(|c| {
            c.kind() == "ConfigMap" && c.name() == cm_name && c.namespace() == workload.namespace()
        })
        .unwrap_or_else(|| panic!("{}: no ConfigMap {cm_name}", workload.title()));
    let text = cm.object["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no key {file} for {path}", cm.title()))
        .to_string();
    (cm, text)
}

/// The number of a container port given by number or by name.
fn port_number(container: &Value, port: &Value) -> Option<u64> {
    port.as_u64().or_else(|| {
        container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == *port)?["containerPort"]
            .as_u64()
    })
}

/// The image's non-root user, from the `USER` of the Dockerfile's runtime stage.
fn image_uid() -> u64 {
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .and_then(|u| u.trim().parse().ok())
        .expect("docker/Dockerfile's runtime stage sets a numeric USER")
}

/// What every workload's pods must be: the image's non-root user, no privilege, a read-only
/// root, and resources reserved.
fn check_pod_security(w: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let pod = &w.object["spec"]["template"]["spec"];
    let uid = image_uid();
    for c in pod["containers"].as_array().into_iter().flatten() {
        let name = format!("{} container {}", w.title(), c["name"]);
        let sc = &c["securityContext"];
        let either = |key: &str| sc.get(key).or_else(|| pod["securityContext"].get(key));
        if either("runAsNonRoot") != Some(&Value::Bool(true)) {
            problems.push(format!("{name}: runAsNonRoot is not true"));
        }
        if either("runAsUser").and_then(Value::as_u64) != Some(uid) {
            problems.push(format!("{name}: runAsUser is not the image's USER {uid}"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            problems.push(format!("{name}: readOnlyRootFilesystem is not true"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            problems.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        if !drops_all || sc["capabilities"].get("add").is_some() {
            problems.push(format!("{name}: capabilities must drop ALL and add none"));
        }
        for r in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
            if c["resources"].pointer(r).is_none() {
                problems.push(format!(
                    "{name}: resources{} is not set",
                    r.replace('/', ".")
                ));
            }
        }
    }
    problems
}

/// A fulcrum container (`run -c FILE`): its configuration passes `fulcrum check`, its probes
/// ask the admin port, the grace period covers the drain, and its DNS names are headless
/// Services in front of pods listening on the named port.
fn check_fulcrum(w: &Manifest, c: &Value, config_path: &str, all: &[Manifest]) -> Vec<String> {
    let mut problems = Vec::new();
    let name = format!("{} container {}", w.title(), c["name"]);
    let (cm, text) = mounted_file(w, c, config_path, all);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fulcrum.toml");
    std::fs::write(&file, &text).unwrap();
    let check = Command::new(fulcrum_bin())
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    if !check.status.success() {
        problems.push(format!(
            "{}: `fulcrum check` refuses {config_path} ({}):\n{}{}",
            cm.title(),
            check.status,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
        return problems;
    }
    let (config, _) = fulcrum_config::parse(&text, config_path).unwrap_or_else(|d| panic!("{d}"));

    let admin_port = u64::from(config.admin.listen.port());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        if get["path"] != path {
            problems.push(format!("{name}: {probe} does not GET {path}"));
        }
        if port_number(c, &get["port"]) != Some(admin_port) {
            problems.push(format!(
                "{name}: {probe} does not ask the admin port {admin_port} of the configuration"
            ));
        }
    }

    let pod = &w.object["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let pre_stop = c
        .pointer("/lifecycle/preStop/sleep/seconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let drain = pre_stop + config.server.drain_delay_s + config.server.grace_period_s;
    if grace <= drain {
        problems.push(format!(
            "{name}: terminationGracePeriodSeconds {grace} does not cover preStop {pre_stop} s + \
             drain_delay_s {} + grace_period_s {}",
            config.server.drain_delay_s, config.server.grace_period_s
        ));
    }

    // A history file is written every step: on a writable volume, as the root filesystem
    // of a hardened pod is read-only.
    for pool in &config.pools {
        let Some(file) = pool
            .autoscale
            .as_ref()
            .and_then(|a| a.history_file.as_ref())
        else {
            continue;
        };
        let writable = c["volumeMounts"].as_array().is_some_and(|mounts| {
            mounts.iter().any(|m| {
                m["readOnly"] != Value::Bool(true)
                    && m["mountPath"].as_str().is_some_and(|p| file.starts_with(p))
            })
        });
        if !writable {
            problems.push(format!(
                "{name}: pool {} writes history_file {} outside every writable volume mount",
                pool.name,
                file.display()
            ));
        }
    }

    for pool in &config.pools {
        let fulcrum_config::Discovery::Dns { names, .. } = &pool.discovery else {
            continue;
        };
        for n in names {
            problems.extend(check_headless(
                &format!("{} pool {}", cm.title(), pool.name),
                &n.host,
                n.port,
                w.namespace(),
                all,
            ));
        }
    }
    problems
}

/// `host:port` of a DNS pool names a headless Service among `all` whose pods (a workload it
/// selects) listen on `port`.
fn check_headless(
    who: &str,
    host: &str,
    port: u16,
    namespace: &str,
    all: &[Manifest],
) -> Vec<String> {
    let labels: Vec<&str> = host.split('.').collect();
    let (service, ns) = match labels.as_slice() {
        [s] => (*s, namespace),
        [s, ns] | [s, ns, "svc"] | [s, ns, "svc", "cluster", "local"] => (*s, *ns),
        _ => {
            return vec![format!(
                "{who}: {host} is not a Service name (SERVICE.NAMESPACE.svc.cluster.local)"
            )]
        }
    };
    let Some(svc) = all
        .iter()
        .find(|m| m.kind() == "Service" && m.name() == service && m.namespace() == ns)
    else {
        return vec![format!("{who}: no Service {service} in {ns} for {host}")];
    };
    let mut problems = Vec::new();
    if svc.object["spec"]["clusterIP"] != "None" {
        problems.push(format!(
            "{who}: {} is not headless (clusterIP: None): its name resolves to one virtual IP, \
             not to every pod",
            svc.title()
        ));
    }
    let selector = &svc.object["spec"]["selector"];
    let pods: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.namespace() == ns && m.object.pointer("/spec/template/spec").is_some())
        .filter(|m| {
            selects(
                selector,
                &m.object["spec"]["template"]["metadata"]["labels"],
            )
        })
        .collect();
    if pods.is_empty() {
        problems.push(format!("{who}: {} selects no workload", svc.title()));
    }
    for p in pods {
        let listens = p.object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .any(|cp| cp["containerPort"].as_u64() == Some(u64::from(port)));
        if !listens {
            problems.push(format!(
                "{who}: the pods of {} have no containerPort {port} (the port of {host})",
                p.title()
            ));
        }
    }
    problems
}

/// Namespaces of the systems the manifests plug into rather than create: the Prometheus stack
/// (prometheus-adapter's rule for the HPA recipe lives beside the adapter).
const EXTERNAL_NAMESPACES: &[&str] = &["monitoring"];

/// Everything between the objects of `all`: workloads (fulcrum and testbed containers,
/// security), selectors of Services and PodDisruptionBudgets, namespaces.
fn check_together(all: &[Manifest]) -> Vec<String> {
    let mut problems = Vec::new();
    let namespaces: Vec<&str> = all
        .iter()
        .filter(|m| m.kind() == "Namespace")
        .map(Manifest::name)
        .collect();
    let workloads: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.object.pointer("/spec/template/spec/containers").is_some())
        .collect();
    for m in all {
        if m.kind() != "Namespace"
            && !namespaces.is_empty()
            && !namespaces.contains(&m.namespace())
            && !EXTERNAL_NAMESPACES.contains(&m.namespace())
        {
            problems.push(format!(
                "{}: namespace {} is not one of the manifests' {namespaces:?}",
                m.title(),
                m.namespace()
            ));
        }
        let selector = match m.kind() {
            "Service" => m.object.pointer("/spec/selector"),
            "PodDisruptionBudget" => m.object.pointer("/spec/selector/matchLabels"),
            _ => None,
        };
        if let Some(selector) = selector {
            let found = workloads.iter().any(|w| {
                w.namespace() == m.namespace()
                    && selects(
                        selector,
                        &w.object["spec"]["template"]["metadata"]["labels"],
                    )
            });
            if !found {
                problems.push(format!("{}: selector {selector} finds no pod", m.title()));
            }
        }
    }
    let mut fulcrums = 0;
    for w in &workloads {
        if let Some(selector) = w.object.pointer("/spec/selector/matchLabels") {
            if !selects(
                selector,
                &w.object["spec"]["template"]["metadata"]["labels"],
            ) {
                problems.push(format!(
                    "{}: its selector does not select its own pods",
                    w.title()
                ));
            }
        }
        problems.extend(check_pod_security(w));
        for c in w.object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let args: Vec<&str> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let after = |flags: &[&str]| {
                args.iter()
                    .position(|a| flags.contains(a))
                    .and_then(|i| args.get(i + 1).copied())
            };
            match args.first() {
                Some(&"run") => {
                    fulcrums += 1;
                    let path = after(&["-c", "--config"]).unwrap_or("/etc/fulcrum/fulcrum.toml");
                    problems.extend(check_fulcrum(w, c, path, all));
                }
                Some(&"testbed") => {
                    let path = after(&["--scenario"]).expect("testbed --scenario FILE");
                    let (cm, text) = mounted_file(w, c, path, all);
                    if let Err(d) = fulcrum_scenario::parse_scenario(&text, path) {
                        problems.push(format!(
                            "{}: the scenario {path} is invalid:\n{d}",
                            cm.title()
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    if fulcrums == 0 {
        problems.push("no workload runs fulcrum (`args: [run, -c, FILE]`)".to_string());
    }
    problems
}

#[test]
fn every_manifest_is_valid_and_they_fit_together() {
    let all = manifests();
    let (custom, builtin): (Vec<&Manifest>, Vec<&Manifest>) =
        all.iter().partition(|m| is_custom(m));
    let mut problems = kubernetes_validate(&builtin);
    for m in &custom {
        problems.extend(check_custom_resource(m, &all));
    }
    problems.extend(check_together(&all));
    assert!(
        problems.is_empty(),
        "{} problems in docker/k8s/:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // What the issue asks of the set, so that a file removed by mistake is missed.
    let kinds: BTreeMap<&str, usize> = all.iter().fold(BTreeMap::new(), |mut k, m| {
        *k.entry(m.kind()).or_default() += 1;
        k
    });
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(
            kinds.contains_key(kind),
            "no {kind} in docker/k8s/: {kinds:?}"
        );
    }
    eprintln!(
        "{} objects checked ({} by kubernetes-validate {KUBERNETES_VERSION}, {} custom): {kinds:?}",
        all.len(),
        builtin.len(),
        custom.len()
    );
}

/// The checks find what they are for: each broken object below must be refused.
#[test]
fn broken_manifests_are_refused() {
    let broken = parse_objects(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ns}
spec:
  replicas: two
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: x, imagePort: 80}]
---
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: m, namespace: ns}
spec:
  selector: {matchLabels: {app: web}}
  endpoints: []
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: s, namespace: ns}
spec:
  scaleTargetRef: {name: missing}
  minReplicaCount: 5
  maxReplicaCount: 2
  triggers:
    - type: prometheus
      metadata: {threshold: 10, query: "fulcrum_x"}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledJob
metadata: {name: j, namespace: ns}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: r, namespace: ns}
spec:
  groups:
    - name: g
      rules:
        - {alert: A, record: b, expr: up}
        - {alert: C}
"#,
        "broken.yaml",
    );
    let validated = kubernetes_validate(&[&broken[0], &broken[1]]);
    assert_eq!(validated.len(), 2, "{validated:#?}");
    assert!(validated[0].contains("Deployment/web"), "{validated:#?}");
    assert!(validated[1].contains("Widget/w"), "{validated:#?}");

    let monitor = check_custom_resource(&broken[2], &broken);
    assert!(
        monitor.iter().any(|p| p.contains("endpoints")),
        "{monitor:#?}"
    );
    let scaled = check_custom_resource(&broken[3], &broken);
    for want in [
        "Deployment/missing",
        "minReplicaCount 5",
        "metadata.threshold",
    ] {
        assert!(
            scaled.iter().any(|p| p.contains(want)),
            "{want}: {scaled:#?}"
        );
    }
    let unknown = check_custom_resource(&broken[4], &broken);
    assert!(
        unknown.iter().any(|p| p.contains("not known")),
        "{unknown:#?}"
    );
    let rule = check_custom_resource(&broken[5], &broken);
    for want in ["rules[0] needs", "rules[1] needs"] {
        assert!(rule.iter().any(|p| p.contains(want)), "{want}: {rule:#?}");
    }

    // A DNS name whose Service has a cluster IP, and pods on another port.
    let service = parse_objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\n\
         spec: {selector: {app: web}, ports: [{port: 80}]}\n",
        "svc.yaml",
    );
    let mut set = broken[..1].to_vec();
    set.extend(service);
    let headless = check_headless("pool web", "web.ns.svc.cluster.local", 8080, "ns", &set);
    assert!(
        headless.iter().any(|p| p.contains("not headless")),
        "{headless:#?}"
    );
    assert!(
        headless.iter().any(|p| p.contains("containerPort 8080")),
        "{headless:#?}"
    );

    // A pod that runs as root with a writable root filesystem.
    let security = check_pod_security(&broken[0]);
    for want in [
        "runAsNonRoot",
        "readOnlyRootFilesystem",
        "drop ALL",
        "resources",
    ] {
        assert!(
            security.iter().any(|p| p.contains(want)),
            "{want}: {security:#?}"
        );
    }
}

#[test]
fn durations_are_read_as_the_operators_do() {
    for ok in ["15s", "1m30s", "500ms", "2h"] {
        assert!(is_duration(ok), "{ok}");
    }
    for bad in ["", "15", "s", "1.5s", "15 s"] {
        assert!(!is_duration(bad), "{bad}");
    }
}

/// promtool's unit tests of the alerts in `monitoring/prometheusrule.yaml`: each fires when
/// what it is about happens, and not before its `for`.
const ALERT_TESTS: &str = r#"
rule_files: [rules.json]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'fulcrum_pool_recommended_backends{namespace="fulcrum",pool="web",pod="a"}'
        values: '12x40'
      - series: 'fulcrum_pool_recommended_backends{namespace="fulcrum",pool="web",pod="b"}'
        values: '6x40'
      - series: 'fulcrum_pool_recommended_backends{namespace="fulcrum",pool="api",pod="a"}'
        values: '8x40'
      - series: 'fulcrum_pool_recommended_backends{namespace="fulcrum",pool="api",pod="b"}'
        values: '6x40'
      - series: 'fulcrum_pool_history_write_failures_total{namespace="fulcrum",pool="web",pod="a"}'
        values: '0x10 0+1x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: FulcrumPodsDisagreeOnBackends
        exp_alerts: []
      - eval_time: 20m
        alertname: FulcrumPodsDisagreeOnBackends
        exp_alerts:
          - exp_labels: {severity: warning, namespace: fulcrum, pool: web}
            exp_annotations:
              summary: "fulcrum pods disagree on pool web's backend count"
              description: "The fulcrum pods of fulcrum have recommended counts more than 1.5 times apart for pool web for 15 minutes; the autoscaler follows the highest. Compare GET /api/forecast?pool=web on each pod's admin port."
      - eval_time: 15m
        alertname: FulcrumForecastHistoryNotWritten
        exp_alerts: []
      - eval_time: 30m
        alertname: FulcrumForecastHistoryNotWritten
        exp_alerts:
          - exp_labels: {severity: warning, namespace: fulcrum, pool: web, pod: a}
            exp_annotations:
              summary: "fulcrum cannot write pool web's history_file"
              description: "Pod a has failed to append pool web's rate to its history_file for 10 minutes (its log says why); a restart would start the pool's forecast from nothing."
      - eval_time: 30m
        alertname: FulcrumRecommendationMissing
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'up{namespace="fulcrum",job="fulcrum-admin"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: FulcrumRecommendationMissing
        exp_alerts: []
      - eval_time: 10m
        alertname: FulcrumRecommendationMissing
        exp_alerts:
          - exp_labels: {severity: critical, namespace: fulcrum, pool: web}
            exp_annotations:
              summary: "No fulcrum pod recommends a backend count for pool web"
              description: "fulcrum_pool_recommended_backends{pool=\"web\"} has had no sample in namespace fulcrum for 5 minutes (fulcrum down, not scraped, or the pool has no [pools.web.autoscale]); the autoscaler keeps the backends as they are."
"#;

/// `promtool` on `args`, its output in the message when it fails.
fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "promtool (Debian package `prometheus`) is required; scripts/setup.sh test installs it",
        );
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_when_they_should() {
    let all = manifests();
    let rules: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.kind() == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule under docker/k8s/");
    let dir = tempfile::tempdir().unwrap();
    let groups = serde_json::json!({ "groups": rules[0].object["spec"]["groups"] });
    std::fs::write(dir.path().join("rules.json"), groups.to_string()).unwrap();
    std::fs::write(dir.path().join("tests.yml"), ALERT_TESTS).unwrap();
    promtool(dir.path(), &["check", "rules", "rules.json"]);
    promtool(dir.path(), &["test", "rules", "tests.yml"]);
}
