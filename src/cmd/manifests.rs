//! `kiln deploy NAME --export kserve|kubernetes`: a model's current deployment as the manifests
//! a cluster runs it from, each pod a `kiln serve --bundle` of one version.
//!
//! The manifests are JSON (which Kubernetes reads as it reads YAML). Beside them go the bundles
//! they serve, verified out of the registry, laid out as `bundles/NAME/VERSION/` for the user to
//! copy to where the cluster reads models: the storage KServe's `storageUri` names, or the
//! volume the plain Deployment mounts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use kiln_core::backend::Backend;
use serde_json::{Value, json};

/// What `--export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A ClusterServingRuntime `kiln` (V2) and an InferenceService using it.
    Kserve,
    /// A Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget.
    Kubernetes,
}

/// The options of an export.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub dir: PathBuf,
    /// The kiln container image.
    pub image: String,
    /// Where the cluster finds `bundles/` (KServe), e.g. `s3://models/kiln`.
    pub storage_uri: Option<String>,
    /// The PersistentVolumeClaim holding `bundles/` (plain Kubernetes).
    pub volume_claim: Option<String>,
    /// The central kiln the pods follow as replicas (plain Kubernetes), instead of a volume.
    pub registry: Option<String>,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

/// The port every kiln pod listens on.
const PORT: u16 = 8080;

/// The serving container: `kiln serve --bundle` of `bundle`, probes on kiln's health endpoints,
/// unprivileged.
fn container(name: &str, image: &str, args: Vec<String>) -> Value {
    let probe = |path: &str, delay: u32| {
        json!({
            "httpGet": { "path": path, "port": PORT },
            "initialDelaySeconds": delay,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    json!({
        "name": name,
        "image": image,
        "args": args,
        "env": [{ "name": "RAYON_NUM_THREADS", "value": "1" }],
        "ports": [{ "name": "http", "containerPort": PORT, "protocol": "TCP" }],
        "readinessProbe": probe("/v2/health/ready", 2),
        "livenessProbe": probe("/v2/health/live", 10),
        "resources": {
            "requests": { "cpu": "500m", "memory": "256Mi" },
            "limits": { "cpu": "2", "memory": "1Gi" },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
    })
}

/// The exact command line (after `kiln`) every manifest runs.
pub fn serve_args(bundle: &str, model: &str) -> Vec<String> {
    [
        "serve",
        "--bundle",
        bundle,
        "--name",
        model,
        "--addr",
        &format!("0.0.0.0:{PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `(version, percent)` of each route of a deployment, in route order.
type Routes = Vec<(u32, u32)>;

/// The command line of a replica that follows the central kiln at `url` for `model`.
pub fn replica_args(url: &str, model: &str) -> Vec<String> {
    [
        "serve",
        "--registry",
        url,
        "--models",
        model,
        "--cache",
        "/cache",
        "--addr",
        &format!("0.0.0.0:{PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The version each route of the deployment serves, with its share, and the shadow's target.
fn routes(backend: &dyn Backend, model: &str) -> Result<(Routes, Option<String>)> {
    let detail = backend.model(model)?;
    let d = &detail.deployment;
    let mut out = Vec::new();
    for r in &d.routes {
        let v = match r.target.parse::<u32>() {
            Ok(v) => v,
            Err(_) => *detail.aliases.get(&r.target).with_context(|| {
                format!(
                    "{model}'s deployment routes to `{}`, which points at no version; promote \
                     one first (`kiln models promote {model} VERSION`)",
                    r.target
                )
            })?,
        };
        out.push((v, r.percent));
    }
    Ok((out, d.shadow.clone()))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes the manifests and bundles of `model`'s deployment into `options.dir`; returns the
/// files written and notes on what the target cannot express.
pub fn export(
    backend: &dyn Backend,
    model: &str,
    options: &Options,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    kiln_core::registry::check_model_name(model)?;
    let (routes, shadow) = routes(backend, model)?;
    let mut notes = Vec::new();
    if let Some(s) = shadow {
        notes.push(format!(
            "the shadow `{s}` is not exported: neither target mirrors traffic to a model whose \
             answers are only compared"
        ));
    }
    if options.dir.exists() && std::fs::read_dir(&options.dir)?.next().is_some() {
        bail!(
            "{} is not empty; choose a new directory",
            options.dir.display()
        );
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let mut written = Vec::new();
    // The bundles, verified out of the registry.
    let wanted: Vec<u32> = match (options.target, &options.registry) {
        (Target::Kserve, _) => routes.iter().map(|(v, _)| *v).collect(),
        (Target::Kubernetes, None) => routes.iter().take(1).map(|(v, _)| *v).collect(),
        // Replicas fetch their bundles from the central kiln.
        (Target::Kubernetes, Some(_)) => Vec::new(),
    };
    for v in &wanted {
        let version = backend.resolve(model, &v.to_string())?;
        let dest = options.dir.join("bundles").join(model).join(v.to_string());
        if !dest.exists() {
            std::fs::create_dir_all(dest.parent().unwrap_or(&options.dir))?;
            backend.export_version(&version, &dest)?;
            written.push(dest);
        }
    }
    let labels = json!({ "app.kubernetes.io/name": model, "app.kubernetes.io/managed-by": "kiln" });
    match options.target {
        Target::Kserve => {
            let base = options.storage_uri.as_deref().with_context(|| {
                "--export kserve needs --storage-uri: where the cluster reads the bundles \
                 written under DIR/bundles (e.g. s3://models/kiln after copying them there)"
            })?;
            let base = base.trim_end_matches('/');
            if routes.len() > 2 {
                bail!(
                    "{model}'s deployment splits between {} targets; an InferenceService splits \
                     between its latest revision and the one before (canaryTrafficPercent)",
                    routes.len()
                );
            }
            // The canary is the route after the first; KServe keeps the remaining share on
            // the revision that served before this one was applied.
            let (version, canary) = match routes.as_slice() {
                [(v, _)] => (*v, None),
                [(first, _), (v, percent)] => {
                    notes.push(format!(
                        "apply the InferenceService while version {first} serves (its previous \
                         revision): KServe gives version {v} {percent}% and keeps the rest there"
                    ));
                    (*v, Some(*percent))
                }
                _ => bail!("{model}'s deployment has no route"),
            };
            let runtime = json!({
                "apiVersion": "serving.kserve.io/v1alpha1",
                "kind": "ClusterServingRuntime",
                "metadata": { "name": "kiln", "labels": { "app.kubernetes.io/managed-by": "kiln" } },
                "spec": {
                    "supportedModelFormats": [{ "name": "kiln", "version": "1", "autoSelect": true }],
                    "protocolVersions": ["v2"],
                    "containers": [container(
                        "kserve-container",
                        &options.image,
                        serve_args("/mnt/models", "{{.Name}}"),
                    )],
                },
            });
            let mut predictor = json!({
                "minReplicas": options.min_replicas,
                "maxReplicas": options.max_replicas,
                "model": {
                    "modelFormat": { "name": "kiln", "version": "1" },
                    "runtime": "kiln",
                    "protocolVersion": "v2",
                    "storageUri": format!("{base}/{model}/{version}"),
                },
            });
            if let Some(p) = canary {
                predictor["canaryTrafficPercent"] = json!(p);
            }
            let service = json!({
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": { "name": model, "labels": labels },
                "spec": { "predictor": predictor },
            });
            for (file, value) in [
                ("servingruntime.json", runtime),
                ("inferenceservice.json", service),
            ] {
                let path = options.dir.join(file);
                write_json(&path, &value)?;
                written.push(path);
            }
        }
        Target::Kubernetes => {
            let claim = options
                .volume_claim
                .clone()
                .unwrap_or(format!("{model}-models"));
            let version = routes.first().map(|(v, _)| *v).context("no route")?;
            if routes.len() > 1 && options.registry.is_none() {
                notes.push(format!(
                    "a Service balances pods evenly, so only the first route (version {version}) \
                     is exported; export to kserve for a percentage split, or give --registry: \
                     replicas route as the central deployment says"
                ));
            }
            // Replicas of a central kiln (a cache volume, the central token from a Secret), or
            // one bundle from a read-only volume.
            let (pod, volumes) = match &options.registry {
                Some(url) => {
                    let mut pod = container("kiln", &options.image, replica_args(url, model));
                    pod["volumeMounts"] = json!([{ "name": "cache", "mountPath": "/cache" }]);
                    pod["env"].as_array_mut().context("env")?.push(json!({
                        "name": "KILN_REGISTRY_TOKEN",
                        "valueFrom": { "secretKeyRef": {
                            "name": format!("{model}-registry-token"), "key": "token", "optional": true,
                        } },
                    }));
                    (pod, json!([{ "name": "cache", "emptyDir": {} }]))
                }
                None => {
                    let bundle = format!("/models/{model}/{version}");
                    let mut pod = container("kiln", &options.image, serve_args(&bundle, model));
                    pod["volumeMounts"] =
                        json!([{ "name": "models", "mountPath": "/models", "readOnly": true }]);
                    let volumes = json!([{
                        "name": "models",
                        "persistentVolumeClaim": { "claimName": claim, "readOnly": true },
                    }]);
                    (pod, volumes)
                }
            };
            let selector = json!({ "app.kubernetes.io/name": model });
            let manifests: Vec<(&str, Value)> = vec![
                (
                    "deployment.json",
                    json!({
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": { "name": model, "labels": labels },
                        "spec": {
                            "replicas": options.min_replicas,
                            "selector": { "matchLabels": selector },
                            "template": {
                                "metadata": { "labels": labels },
                                "spec": {
                                    "containers": [pod],
                                    "volumes": volumes,
                                    "securityContext": { "runAsNonRoot": true, "fsGroup": 65532 },
                                },
                            },
                        },
                    }),
                ),
                (
                    "service.json",
                    json!({
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": { "name": model, "labels": labels },
                        "spec": {
                            "selector": selector,
                            "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
                        },
                    }),
                ),
                (
                    "hpa.json",
                    json!({
                        "apiVersion": "autoscaling/v2",
                        "kind": "HorizontalPodAutoscaler",
                        "metadata": { "name": model, "labels": labels },
                        "spec": {
                            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": model },
                            "minReplicas": options.min_replicas,
                            "maxReplicas": options.max_replicas,
                            "metrics": [{
                                "type": "Resource",
                                "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 70 } },
                            }],
                        },
                    }),
                ),
                (
                    "pdb.json",
                    json!({
                        "apiVersion": "policy/v1",
                        "kind": "PodDisruptionBudget",
                        "metadata": { "name": model, "labels": labels },
                        "spec": { "minAvailable": 1, "selector": { "matchLabels": selector } },
                    }),
                ),
            ];
            for (file, value) in manifests {
                let path = options.dir.join(file);
                write_json(&path, &value)?;
                written.push(path);
            }
        }
    }
    Ok((written, notes))
}
