//! Role matchers: the `[inventory]` config first, then the ecosystem's conventions.
//!
//! Order, first match wins:
//!
//! 1. config matchers, per role in the order serving, training, notebook, batch: all of the
//!    role's labels, or an image prefix;
//! 2. built-in owners (`InferenceService`, `PyTorchJob`, `Notebook`, …), checked with their API
//!    group so that another CRD of the same kind name does not match;
//! 3. built-in labels (KServe, KubeRay, Kubeflow, JupyterHub);
//! 4. built-in images (Triton, vLLM, TGI, TorchServe, TF Serving, NIM, … and Jupyter);
//! 5. a `Job` / `CronJob` / Argo `Workflow` owner with a GPU request: batch;
//! 6. no GPU requested: non-GPU; otherwise unknown.
//!
//! Owners and labels come before images because they say how the pod was made: a PyTorchJob
//! that runs the vLLM image (RL rollouts) is training. Generic Job owners come last because
//! Jobs are also how KubeRay and Kubeflow Trainer submit work.
//!
//! All of these are claims made by whoever created the pod: anyone allowed to create pods
//! picks the labels and the image name. Built-in image matchers ignore the registry (mirrors
//! are common in GPU clusters) and match whole name components, never substrings ("serve" in
//! a name is not enough). A `serving_images` prefix that names your own registry is a
//! stronger signal.

use std::collections::BTreeMap;

use super::{InventoryConfig, PodInfo, pod::VALUE_FROM};
use crate::role::Role;

/// Config matchers, normalised once.
#[derive(Debug, Clone, Default)]
pub(super) struct Matchers {
    config: Vec<RoleMatcher>,
}

#[derive(Debug, Clone)]
struct RoleMatcher {
    role: Role,
    /// (as configured, normalised).
    images: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
}

impl Matchers {
    pub(super) fn new(config: &InventoryConfig) -> Self {
        let role = |role, images: &[String], labels: &BTreeMap<String, String>| RoleMatcher {
            role,
            images: images
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| (p.clone(), normalize_image(p.trim())))
                .collect(),
            labels: labels.clone(),
        };
        Matchers {
            config: vec![
                role(
                    Role::Serving,
                    &config.serving_images,
                    &config.serving_labels,
                ),
                role(
                    Role::Training,
                    &config.training_images,
                    &config.training_labels,
                ),
                role(
                    Role::Notebook,
                    &config.notebook_images,
                    &config.notebook_labels,
                ),
                role(Role::Batch, &config.batch_images, &config.batch_labels),
            ],
        }
    }
}

/// The role of `pod` and the reason, naming the matcher. See the module docs for the order.
pub(super) fn role_of(m: &Matchers, pod: &PodInfo) -> (Role, String) {
    if pod.containers.is_empty() && pod.labels.is_empty() && pod.owners.is_empty() {
        return (
            Role::Unknown,
            "no facts about the pod's spec (seen only in a binding, a delete or a metadata-level \
             audit event)"
                .to_string(),
        );
    }
    if let Some(hit) = config_match(m, pod)
        .or_else(|| owner_match(pod))
        .or_else(|| label_match(pod))
        .or_else(|| image_match(pod))
        .or_else(|| batch_match(pod))
    {
        return hit;
    }
    let gpus = pod.gpu_request();
    if pod.containers.is_empty() {
        return (
            Role::Unknown,
            "no containers known; no role matcher applies".to_string(),
        );
    }
    if gpus == 0 {
        if !pod.resource_claims.is_empty() {
            // Dynamic Resource Allocation hands out GPUs through claims, not nvidia.com/gpu.
            return (
                Role::Unknown,
                "requests no nvidia.com/gpu but has resource claims (DRA); no role matcher \
                 applies"
                    .to_string(),
            );
        }
        return (Role::NonGpu, non_gpu_reason(pod));
    }
    (
        Role::Unknown,
        format!("requests {gpus} GPU(s); no role matcher applies"),
    )
}

/// "requests no nvidia.com/gpu", plus what could still reach a GPU.
fn non_gpu_reason(pod: &PodInfo) -> String {
    let mut reason = "requests no nvidia.com/gpu".to_string();
    if let Some(v) = pod
        .containers
        .iter()
        .find_map(|c| c.nvidia_visible_devices.as_deref())
        .filter(|v| !matches!(*v, "" | "void" | "none"))
    {
        if v == VALUE_FROM {
            reason.push_str(" but sets NVIDIA_VISIBLE_DEVICES (from valueFrom)");
        } else {
            reason.push_str(&format!(" but sets NVIDIA_VISIBLE_DEVICES={v}"));
        }
    }
    if pod.containers.iter().any(|c| c.privileged) {
        reason.push_str("; privileged");
    }
    reason
}

fn config_match(m: &Matchers, pod: &PodInfo) -> Option<(Role, String)> {
    for rm in &m.config {
        if !rm.labels.is_empty()
            && rm
                .labels
                .iter()
                .all(|(k, v)| pod.labels.get(k).is_some_and(|pv| pv == v))
        {
            let labels: Vec<String> = rm.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let noun = if labels.len() == 1 { "label" } else { "labels" };
            return Some((rm.role, format!("{noun} {} (config)", labels.join(", "))));
        }
        for c in &pod.containers {
            let image = normalize_image(&c.image);
            if let Some((prefix, _)) = rm
                .images
                .iter()
                .find(|(_, norm)| image_has_prefix(&image, norm))
            {
                return Some((
                    rm.role,
                    format!(
                        "image {} matches {} prefix {prefix} (config)",
                        c.image, rm.role
                    ),
                ));
            }
        }
    }
    None
}

/// (API group, kind, role, what it is).
const OWNERS: &[(&str, &str, Role)] = &[
    ("serving.kserve.io", "InferenceService", Role::Serving),
    ("serving.kserve.io", "ServingRuntime", Role::Serving),
    ("serving.kserve.io", "ClusterServingRuntime", Role::Serving),
    ("serving.kserve.io", "InferenceGraph", Role::Serving),
    ("ray.io", "RayService", Role::Serving),
    (
        "machinelearning.seldon.io",
        "SeldonDeployment",
        Role::Serving,
    ),
    ("kubeflow.org", "PyTorchJob", Role::Training),
    ("kubeflow.org", "MPIJob", Role::Training),
    ("kubeflow.org", "TFJob", Role::Training),
    ("kubeflow.org", "XGBoostJob", Role::Training),
    ("kubeflow.org", "PaddleJob", Role::Training),
    ("kubeflow.org", "JAXJob", Role::Training),
    ("kubeflow.org", "MXJob", Role::Training),
    ("trainer.kubeflow.org", "TrainJob", Role::Training),
    ("ray.io", "RayJob", Role::Training),
    // Volcano's Job (not batch/v1's) runs distributed training with its pytorch/mpi plugins.
    ("batch.volcano.sh", "Job", Role::Training),
    ("kubeflow.org", "Notebook", Role::Notebook),
];

fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn owner_match(pod: &PodInfo) -> Option<(Role, String)> {
    pod.owners.iter().find_map(|o| {
        let g = group(&o.api_version);
        OWNERS
            .iter()
            .find(|(og, kind, _)| *og == g && *kind == o.kind)
            .map(|(_, _, role)| (*role, format!("owner {} {}", o.kind, o.name)))
    })
}

/// (label, required value or `None` for any, role, ecosystem).
const LABELS: &[(&str, Option<&str>, Role, &str)] = &[
    (
        "serving.kserve.io/inferenceservice",
        None,
        Role::Serving,
        "KServe",
    ),
    (
        "serving.kserve.io/inferencegraph",
        None,
        Role::Serving,
        "KServe",
    ),
    ("component", Some("predictor"), Role::Serving, "KServe"),
    ("modelmesh-service", None, Role::Serving, "KServe ModelMesh"),
    ("seldon-deployment-id", None, Role::Serving, "Seldon Core"),
    (
        "ray.io/originated-from-crd",
        Some("RayService"),
        Role::Serving,
        "KubeRay",
    ),
    (
        "training.kubeflow.org/job-name",
        None,
        Role::Training,
        "Kubeflow Training Operator",
    ),
    (
        "ray.io/originated-from-crd",
        Some("RayJob"),
        Role::Training,
        "KubeRay",
    ),
    ("notebook-name", None, Role::Notebook, "Kubeflow Notebooks"),
    (
        "component",
        Some("singleuser-server"),
        Role::Notebook,
        "JupyterHub",
    ),
    (
        "app.kubernetes.io/component",
        Some("singleuser-server"),
        Role::Notebook,
        "JupyterHub",
    ),
];

fn label_match(pod: &PodInfo) -> Option<(Role, String)> {
    LABELS.iter().find_map(|(key, want, role, what)| {
        let v = pod.labels.get(*key)?;
        if want.is_some_and(|w| w != v) {
            return None;
        }
        Some((*role, format!("label {key}={v} ({what})")))
    })
}

fn image_match(pod: &PodInfo) -> Option<(Role, String)> {
    // Serving images anywhere in the pod win over notebook images: a notebook image serving a
    // model is rarer than a serving pod with a Jupyter sidecar for debugging.
    for (role, rules) in [
        (
            Role::Serving,
            serving_image as fn(&ImageRef) -> Option<&'static str>,
        ),
        (Role::Notebook, notebook_image),
    ] {
        for c in &pod.containers {
            let r = ImageRef::parse(&c.image);
            if let Some(what) = rules(&r) {
                return Some((role, format!("image {} matches {role} ({what})", c.image)));
            }
        }
    }
    None
}

fn serving_image(r: &ImageRef) -> Option<&'static str> {
    let last = r.last();
    let parent = r.parent();
    Some(match last {
        "tritonserver" => "Triton Inference Server",
        "vllm-openai" | "vllm-openai-rocm" | "vllm-tpu" | "vllm-cpu" => "vLLM",
        "vllm" if matches!(parent, Some("vllm" | "rocm")) => "vLLM",
        "text-generation-inference" => "TGI",
        "text-embeddings-inference" => "TEI",
        "torchserve" | "torchserve-kfs" | "torchserve-nightly" | "torchserve-kfs-nightly" => {
            "TorchServe"
        }
        "serving" if parent == Some("tensorflow") => "TF Serving",
        "tensorflow-serving" => "TF Serving",
        "sglang" if parent == Some("lmsysorg") => "SGLang",
        "mlserver" if parent == Some("seldonio") => "MLServer",
        "ollama" if parent == Some("ollama") => "Ollama",
        _ if parent == Some("kserve") && last.ends_with("server") => "KServe model server",
        // NVIDIA NIM microservices: nvcr.io/nim/<publisher>/<model>.
        _ if r.registry == Some("nvcr.io") && r.path.first() == Some(&"nim") => "NVIDIA NIM",
        _ => return None,
    })
}

fn notebook_image(r: &ImageRef) -> Option<&'static str> {
    let last = r.last();
    let namespaced = r
        .path
        .iter()
        .rev()
        .skip(1)
        .any(|c| matches!(*c, "jupyter" | "jupyterhub" | "kubeflownotebookswg"));
    let named = last.ends_with("-notebook")
        || last.contains("-notebook-")
        || last.starts_with("notebook-")
        || last.starts_with("jupyter");
    match (namespaced, named) {
        (true, _) => Some("Jupyter"),
        (false, true) => Some("notebook image name"),
        _ => None,
    }
}

fn batch_match(pod: &PodInfo) -> Option<(Role, String)> {
    let gpus = pod.gpu_request();
    if gpus == 0 {
        return None;
    }
    pod.owners.iter().find_map(|o| {
        let g = group(&o.api_version);
        let batch = matches!(
            (g, o.kind.as_str()),
            ("batch", "Job" | "CronJob") | ("argoproj.io", "Workflow")
        );
        batch.then(|| {
            (
                Role::Batch,
                format!("owner {} {} with {gpus} GPU(s) requested", o.kind, o.name),
            )
        })
    })
}

/// An image reference split into registry, path components and nothing else (tag and digest
/// dropped), Docker Hub's implicit `docker.io/library/` removed, lower-cased.
#[derive(Debug)]
struct ImageRef<'a> {
    registry: Option<&'a str>,
    path: Vec<&'a str>,
}

impl<'a> ImageRef<'a> {
    fn parse(image: &'a str) -> ImageRef<'a> {
        let image = image.trim();
        let image = image.split_once('@').map_or(image, |(i, _)| i);
        // A tag is a ':' after the last '/' (a ':' before it is a registry port).
        let image = match image.rfind(':') {
            Some(colon) if image[colon..].find('/').is_none() => &image[..colon],
            _ => image,
        };
        let mut parts: Vec<&str> = image.split('/').filter(|p| !p.is_empty()).collect();
        let registry = match parts.first() {
            Some(first)
                if parts.len() > 1
                    && (first.contains('.') || first.contains(':') || *first == "localhost") =>
            {
                Some(parts.remove(0))
            }
            _ => None,
        };
        let registry = registry
            .filter(|r| !matches!(*r, "docker.io" | "index.docker.io" | "registry-1.docker.io"));
        if registry.is_none() && parts.len() > 1 && parts[0] == "library" {
            parts.remove(0);
        }
        ImageRef {
            registry,
            path: parts,
        }
    }

    fn last(&self) -> &'a str {
        self.path.last().copied().unwrap_or_default()
    }

    fn parent(&self) -> Option<&'a str> {
        self.path.len().checked_sub(2).map(|i| self.path[i])
    }
}

/// An image reference for prefix matching: lower case, Docker Hub's implicit registry and
/// `library/` removed (`docker.io/library/nginx:1` → `nginx:1`).
pub(super) fn normalize_image(image: &str) -> String {
    let lower = image.trim().to_ascii_lowercase();
    let mut s = lower.as_str();
    for hub in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = s.strip_prefix(hub) {
            s = rest;
            break;
        }
    }
    s.strip_prefix("library/").unwrap_or(s).to_string()
}

/// Whether normalised `image` starts with normalised `prefix`, where the prefix may end inside
/// the repository's last name component (`nvcr.io/nvidia/triton` matches
/// `nvcr.io/nvidia/tritonserver:24.05`) but never inside a registry or namespace component:
/// `ghcr.io/acme` must not match `ghcr.io/acme-evil/miner`, an organisation anyone can create.
pub(super) fn image_has_prefix(image: &str, prefix: &str) -> bool {
    let Some(rest) = image.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with('/') || rest.starts_with('/') || !rest.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_drop_tags_digests_and_docker_hub_defaults() {
        let r = ImageRef::parse("docker.io/library/nginx:1.25");
        assert_eq!(
            (r.registry, r.path.as_slice()),
            (None, ["nginx"].as_slice())
        );
        let r = ImageRef::parse("registry.local:5000/vllm/vllm-openai:v0.6.3@sha256:abc");
        assert_eq!(r.registry, Some("registry.local:5000"));
        assert_eq!(r.path, ["vllm", "vllm-openai"]);
        let r = ImageRef::parse("nvcr.io/nim/meta/llama3-8b-instruct:1.0.0");
        assert_eq!(serving_image(&r), Some("NVIDIA NIM"));
        let r = ImageRef::parse("localhost/tritonserver");
        assert_eq!(r.registry, Some("localhost"));
    }

    #[test]
    fn serving_images_match_whole_names_not_substrings() {
        let serving = |i: &str| serving_image(&ImageRef::parse(i));
        assert_eq!(
            serving("nvcr.io/nvidia/tritonserver:24.05-py3"),
            Some("Triton Inference Server")
        );
        assert_eq!(serving("mirror.corp/vllm/vllm-openai:latest"), Some("vLLM"));
        assert_eq!(
            serving("ghcr.io/huggingface/text-generation-inference:2.4"),
            Some("TGI")
        );
        assert_eq!(
            serving("pytorch/torchserve-kfs:0.12.0-gpu"),
            Some("TorchServe")
        );
        assert_eq!(serving("tensorflow/serving:2.16.1-gpu"), Some("TF Serving"));
        assert_eq!(
            serving("kserve/huggingfaceserver:v0.14.0"),
            Some("KServe model server")
        );
        // "serve" somewhere in a name is not enough.
        assert_eq!(serving("acme/model-server"), None);
        assert_eq!(serving("acme/observer"), None);
        assert_eq!(serving("evil/vllm-openai-miner"), None);
        assert_eq!(serving("evil/vllm"), None);
        assert_eq!(serving("acme/serving"), None);
        assert_eq!(serving("evil.io/nvidia/nim/x"), None);
        // Ray images are used for training as much as for serving.
        assert_eq!(serving("rayproject/ray-ml:2.9.0-gpu"), None);
    }

    #[test]
    fn notebook_images_follow_jupyter_and_kubeflow_naming() {
        let nb = |i: &str| notebook_image(&ImageRef::parse(i));
        assert!(nb("quay.io/jupyter/pytorch-notebook:cuda12-latest").is_some());
        assert!(nb("jupyter/scipy-notebook").is_some());
        assert!(nb("kubeflownotebookswg/jupyter-pytorch-cuda-full:v1.9.0").is_some());
        assert!(nb("jupyterhub/k8s-singleuser-sample:3.3.7").is_some());
        assert!(nb("gcr.io/kubeflow-images-public/tensorflow-2.1.0-notebook-gpu:1.0.0").is_some());
        assert!(nb("pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime").is_none());
        assert!(nb("acme/notebookish").is_none());
    }

    #[test]
    fn config_prefixes_never_end_inside_a_namespace() {
        let p = |i: &str, pre: &str| image_has_prefix(&normalize_image(i), &normalize_image(pre));
        assert!(p(
            "nvcr.io/nvidia/tritonserver:24.05-py3",
            "nvcr.io/nvidia/tritonserver"
        ));
        assert!(p(
            "nvcr.io/nvidia/tritonserver:24.05-py3",
            "nvcr.io/nvidia/triton"
        ));
        assert!(p("docker.io/vllm/vllm-openai:v0.6.3", "vllm/vllm-openai"));
        assert!(p("vllm/vllm-openai", "docker.io/vllm/vllm-openai"));
        assert!(p("ghcr.io/acme/serving/llm:1", "ghcr.io/acme"));
        assert!(p("ghcr.io/acme/serving/llm:1", "ghcr.io/acme/"));
        assert!(!p("ghcr.io/acme-evil/miner:1", "ghcr.io/acme"));
        assert!(!p("registry.corp.evil.io/x/y", "registry.corp"));
        assert!(!p("other/vllm-openai", "vllm/vllm-openai"));
    }
}
