#!/bin/sh
# docker compose's Vault init step (runs on every `docker compose up`, idempotent):
#   1. first start: `vault operator init` (1 key share) and keep the unseal key and root token
#      in the `vault-init` volume, readable only by this container's user;
#   2. unseal Vault (file storage survives restarts, so Vault starts sealed every time);
#   3. run the same configure script Kubernetes uses (KV v2, policy tool-vault, AppRole login
#      with the role ID / secret ID from .env).
# On one machine this is the honest trade-off: whoever owns the host owns the unseal key.
# For more, use Vault auto-unseal (cloud KMS / transit) and move the root token offline.
set -eu
: "${VAULT_ADDR:?}"
state=/vault/init/init.txt
umask 077

until vault status >/dev/null 2>&1 || [ $? -eq 2 ]; do sleep 1; done

if vault status 2>/dev/null | grep -q '^Initialized *false'; then
  vault operator init -key-shares=1 -key-threshold=1 >"$state.tmp"
  mv "$state.tmp" "$state"
  echo "vault-init: Vault initialised; unseal key and root token are in the vault-init volume"
fi
[ -s "$state" ] || { echo "vault-init: Vault is initialised but $state is missing" >&2; exit 1; }
unseal_key=$(awk -F': ' '/^Unseal Key 1:/ {print $2}' "$state")
VAULT_TOKEN=$(awk -F': ' '/^Initial Root Token:/ {print $2}' "$state")
export VAULT_TOKEN

if vault status 2>/dev/null | grep -q '^Sealed *true'; then
  vault operator unseal "$unseal_key" >/dev/null
fi
AUTH_METHOD=approle TOOLVAULT_ROLE_ID="$TOOLVAULT_ROLE_ID" TOOLVAULT_SECRET_ID="$TOOLVAULT_SECRET_ID" \
  sh /vault/configure/vault-configure.sh
