-- API keys (used when AUTH_ENABLED): only the sha256 hex digest of a key is stored, never the key.
-- Add one:    INSERT INTO api_keys (name, key_hash) VALUES ('dashboard', encode(sha256('secret'::bytea), 'hex'));
-- Revoke one: UPDATE api_keys SET revoked_at = now() WHERE name = 'dashboard';
CREATE TABLE IF NOT EXISTS api_keys (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    key_hash   text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
