//! Pod roles: what a pod is for decides what is normal for it on a GPU.

use serde::{Deserialize, Serialize};

/// What a pod is for, as far as GPU use goes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves models (KServe, Triton, vLLM, TGI, TorchServe, TF Serving, NIM, Ray Serve).
    Serving,
    /// Trains models (Kubeflow PyTorchJob/MPIJob/TFJob, RayJob, Volcano/training Jobs).
    Training,
    /// Interactive notebooks (Jupyter, Kubeflow Notebook).
    Notebook,
    /// Batch jobs that requested a GPU (Job/CronJob owners).
    Batch,
    /// Requested no `nvidia.com/gpu` at all.
    NonGpu,
    /// Not known: no facts about the pod, or a GPU allocated to no pod.
    #[default]
    Unknown,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Serving,
        Role::Training,
        Role::Notebook,
        Role::Batch,
        Role::NonGpu,
        Role::Unknown,
    ];

    /// Snake-case name, as in findings and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Training => "training",
            Role::Notebook => "notebook",
            Role::Batch => "batch",
            Role::NonGpu => "non_gpu",
            Role::Unknown => "unknown",
        }
    }

    /// Parses a snake-case name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
