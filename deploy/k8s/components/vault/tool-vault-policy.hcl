# tool-vault's Vault policy: read and write its own KV v2 path (mount `secret`, prefix
# `voiceagents`, as VA_TOOLVAULT_VAULT_MOUNT / VA_TOOLVAULT_VAULT_PATH_PREFIX say) and nothing
# else. Check-and-set writes need create+update on data; removing a tool's secret deletes its
# metadata (every version).
path "secret/data/voiceagents/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/voiceagents/*" {
  capabilities = ["read", "delete"]
}
