-- Per-user exchange credentials (services/upstream/credentials.py). The user is the API key's id (the first
-- 16 hex digits of its sha256 digest, as g.api_key_id); `token` is a Fernet token (MultiFernet over
-- CREDENTIALS_KEYS) of the JSON {"api_key", "secret", "password"}: nothing here is readable without
-- a key. `key_hint` shows the last characters of the exchange API key, never the secret.
CREATE TABLE IF NOT EXISTS exchange_credentials (
    user_id    text NOT NULL,
    provider   text NOT NULL,
    token      bytea NOT NULL,
    key_hint   text NOT NULL,
    testnet    boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider)
);
