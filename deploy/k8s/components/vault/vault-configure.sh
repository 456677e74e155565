#!/bin/sh
# Configures Vault for tool-vault; idempotent, safe to run again after every upgrade:
#   - KV v2 secrets engine at `secret/`;
#   - policy `tool-vault` (tool-vault-policy.hcl, next to this script);
#   - tool-vault's login, by AUTH_METHOD:
#       kubernetes: role `tool-vault` bound to ServiceAccount tool-vault in TOOLVAULT_NAMESPACE
#                   (Vault in the same cluster, reviewing tokens with its own ServiceAccount);
#       approle:    role `tool-vault` with the given TOOLVAULT_ROLE_ID / TOOLVAULT_SECRET_ID
#                   (docker compose, where there are no ServiceAccounts).
# Needs VAULT_ADDR and a VAULT_TOKEN allowed to manage mounts, auth methods and policies.
set -eu
: "${VAULT_ADDR:?VAULT_ADDR is required}"
: "${VAULT_TOKEN:?VAULT_TOKEN (an admin token, used only here) is required}"
AUTH_METHOD=${AUTH_METHOD:-kubernetes}
here=$(dirname "$0")

if ! vault secrets list | grep -q '^secret/ '; then
  vault secrets enable -path=secret -version=2 kv
fi
vault policy write tool-vault "$here/tool-vault-policy.hcl"

case "$AUTH_METHOD" in
  kubernetes)
    : "${TOOLVAULT_NAMESPACE:?TOOLVAULT_NAMESPACE (namespace of tool-vault) is required}"
    vault auth list | grep -q '^kubernetes/ ' || vault auth enable kubernetes
    vault write auth/kubernetes/config \
      kubernetes_host="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}"
    vault write auth/kubernetes/role/tool-vault \
      bound_service_account_names=tool-vault \
      bound_service_account_namespaces="$TOOLVAULT_NAMESPACE" \
      token_policies=tool-vault token_ttl=1h token_max_ttl=24h
    ;;
  approle)
    : "${TOOLVAULT_ROLE_ID:?TOOLVAULT_ROLE_ID is required}"
    : "${TOOLVAULT_SECRET_ID:?TOOLVAULT_SECRET_ID is required}"
    vault auth list | grep -q '^approle/ ' || vault auth enable approle
    vault write auth/approle/role/tool-vault \
      token_policies=tool-vault token_ttl=1h token_max_ttl=24h secret_id_ttl=0
    vault write auth/approle/role/tool-vault/role-id role_id="$TOOLVAULT_ROLE_ID"
    # A custom secret ID can be registered once; on later runs it is already there.
    if ! vault write -field=secret_id_accessor auth/approle/role/tool-vault/secret-id/lookup \
        secret_id="$TOOLVAULT_SECRET_ID" >/dev/null 2>&1; then
      vault write auth/approle/role/tool-vault/custom-secret-id \
        secret_id="$TOOLVAULT_SECRET_ID" >/dev/null
    fi
    ;;
  *)
    echo "vault-configure: AUTH_METHOD must be kubernetes or approle, not $AUTH_METHOD" >&2
    exit 2
    ;;
esac
echo "vault-configure: KV v2 at secret/, policy tool-vault, $AUTH_METHOD role tool-vault: done"
