//! The built-in rule pack for GPU clusters, embedded from `detect/rules/`.
//!
//! Every rule `<name>.yml` has its fixture `<name>.test.yml`: events in, expected matches and
//! findings out (run by `gpusiem rules test` and by this crate's tests).

use super::sigma::{self, Rule, RuleError};

/// `(name, rule YAML, test YAML)` of every built-in rule.
pub const FILES: &[(&str, &str, &str)] = &[
    (
        "cluster_admin_binding",
        include_str!("../../rules/cluster_admin_binding.yml"),
        include_str!("../../rules/cluster_admin_binding.test.yml"),
    ),
    (
        "compromised_gpu_container",
        include_str!("../../rules/compromised_gpu_container.yml"),
        include_str!("../../rules/compromised_gpu_container.test.yml"),
    ),
    (
        "exec_into_gpu_pod",
        include_str!("../../rules/exec_into_gpu_pod.yml"),
        include_str!("../../rules/exec_into_gpu_pod.test.yml"),
    ),
    (
        "exec_into_pod",
        include_str!("../../rules/exec_into_pod.yml"),
        include_str!("../../rules/exec_into_pod.test.yml"),
    ),
    (
        "gpu_device_opened",
        include_str!("../../rules/gpu_device_opened.yml"),
        include_str!("../../rules/gpu_device_opened.test.yml"),
    ),
    (
        "gpu_device_opened_by_unexpected_process",
        include_str!("../../rules/gpu_device_opened_by_unexpected_process.yml"),
        include_str!("../../rules/gpu_device_opened_by_unexpected_process.test.yml"),
    ),
    (
        "gpu_misuse_finding",
        include_str!("../../rules/gpu_misuse_finding.yml"),
        include_str!("../../rules/gpu_misuse_finding.test.yml"),
    ),
    (
        "gpu_reachable_without_gpu_request",
        include_str!("../../rules/gpu_reachable_without_gpu_request.yml"),
        include_str!("../../rules/gpu_reachable_without_gpu_request.test.yml"),
    ),
    (
        "miner_pool_connection",
        include_str!("../../rules/miner_pool_connection.yml"),
        include_str!("../../rules/miner_pool_connection.test.yml"),
    ),
    (
        "networkpolicy_deleted_in_gpu_namespace",
        include_str!("../../rules/networkpolicy_deleted_in_gpu_namespace.yml"),
        include_str!("../../rules/networkpolicy_deleted_in_gpu_namespace.test.yml"),
    ),
    (
        "new_binary_in_inference_container",
        include_str!("../../rules/new_binary_in_inference_container.yml"),
        include_str!("../../rules/new_binary_in_inference_container.test.yml"),
    ),
    (
        "secrets_read_by_inference_service_account",
        include_str!("../../rules/secrets_read_by_inference_service_account.yml"),
        include_str!("../../rules/secrets_read_by_inference_service_account.test.yml"),
    ),
    (
        "shell_or_new_process_in_container",
        include_str!("../../rules/shell_or_new_process_in_container.yml"),
        include_str!("../../rules/shell_or_new_process_in_container.test.yml"),
    ),
];

/// Parses the pack.
pub fn rules() -> Result<Vec<Rule>, Vec<RuleError>> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (name, text, _) in FILES {
        match sigma::parse_file(&format!("builtin:{name}.yml"), text) {
            Ok(mut r) => rules.append(&mut r),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RuleSet, RulesConfig, testing};
    use super::FILES;

    #[test]
    fn every_builtin_rule_passes_its_fixture() {
        let set = RuleSet::builtin().unwrap_or_else(|e| panic!("pack: {e:?}"));
        let mut failures = Vec::new();
        for (name, _, test) in FILES {
            let t = testing::parse(&format!("builtin:{name}.test.yml"), test)
                .unwrap_or_else(|e| panic!("{e}"));
            let run = testing::run(&t, &set, &RulesConfig::default());
            failures.extend(run.failures.iter().map(ToString::to_string));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_builtin_rule_has_mitre_tags_and_a_title() {
        let set = RuleSet::builtin().unwrap_or_else(|e| panic!("pack: {e:?}"));
        for r in set.rules() {
            assert!(!r.mitre.is_empty(), "{}", r.name);
            assert!(!r.title.is_empty(), "{}", r.name);
        }
    }
}
