"""tool-vault's Vault access: a policy limited to the KV path tool-vault is configured with, a
Kubernetes-auth role bound to tool-vault's own ServiceAccount, and the Job that applies both."""

from __future__ import annotations

import re

import pytest

from .manifests import ROOT, Manifest, find, pod_spec

pytestmark = pytest.mark.unit

COMPONENT = ROOT / "deploy" / "k8s" / "components" / "vault"


def policy_paths(policy: str) -> dict[str, list[str]]:
    return {
        path: re.findall(r'"([a-z]+)"', capabilities)
        for path, capabilities in re.findall(
            r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]', policy
        )
    }


def test_the_policy_covers_only_tool_vaults_kv_path(rendered: dict[str, list[Manifest]]) -> None:
    config = find(rendered["prod"], "ConfigMap", "tool-vault")["data"]
    mount, prefix = config["VA_TOOLVAULT_VAULT_MOUNT"], config["VA_TOOLVAULT_VAULT_PATH_PREFIX"]
    policy = find(rendered["prod"], "ConfigMap", "vault-configure")["data"]["tool-vault-policy.hcl"]
    assert policy == (COMPONENT / "tool-vault-policy.hcl").read_text()
    assert policy_paths(policy) == {
        f"{mount}/data/{prefix}/*": ["create", "read", "update"],
        f"{mount}/metadata/{prefix}/*": ["read", "delete"],
    }


def test_the_role_is_bound_to_tool_vaults_service_account(
    rendered: dict[str, list[Manifest]],
) -> None:
    script = (COMPONENT / "vault-configure.sh").read_text()
    assert "vault write auth/kubernetes/role/tool-vault" in script
    assert "bound_service_account_names=tool-vault" in script
    assert "token_policies=tool-vault" in script
    deployment = find(rendered["prod"], "Deployment", "tool-vault")
    config = find(rendered["prod"], "ConfigMap", "tool-vault")["data"]
    assert pod_spec(deployment)["serviceAccountName"] == "tool-vault"
    assert pod_spec(deployment)["automountServiceAccountToken"] is True
    assert config["VA_TOOLVAULT_BACKEND"] == "vault"
    assert config["VA_TOOLVAULT_VAULT_AUTH"] == "kubernetes"
    assert config["VA_TOOLVAULT_VAULT_ROLE"] == "tool-vault"
    # The Job binds the role to the namespace it runs in, which is tool-vault's.
    job = pod_spec(find(rendered["prod"], "Job", "vault-configure"))["containers"][0]
    namespace = next(e for e in job["env"] if e["name"] == "TOOLVAULT_NAMESPACE")
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_no_other_service_gets_a_service_account_token(
    rendered: dict[str, list[Manifest]],
) -> None:
    for overlay, manifests in rendered.items():
        for manifest in manifests:
            if manifest["kind"] in ("Deployment", "StatefulSet", "Job"):
                spec = pod_spec(manifest)
                expected = overlay == "prod" and manifest["metadata"]["name"] == "tool-vault"
                assert spec.get("automountServiceAccountToken") is expected, manifest["metadata"]
