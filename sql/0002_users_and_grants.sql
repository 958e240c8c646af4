-- Users, roles and grants: who may see which interfaces. Grants are rules evaluated at
-- query time (flowstage_visible_interfaces), so an interface discovered after a grant
-- was made is covered without re-applying anything.

CREATE TABLE users (
    id            serial PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('admin', 'viewer')),
    -- argon2id, PHC string format.
    password_hash text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_login    timestamptz
);

-- Several interfaces shown as one link or customer ("reports follow links").
CREATE TABLE interface_groups (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text
);

CREATE TABLE interface_group_members (
    group_id    integer NOT NULL REFERENCES interface_groups(id) ON DELETE CASCADE,
    exporter_id integer NOT NULL,
    ifindex     bigint NOT NULL,
    PRIMARY KEY (group_id, exporter_id, ifindex),
    FOREIGN KEY (exporter_id, ifindex) REFERENCES interfaces(exporter_id, ifindex) ON DELETE CASCADE
);

-- One row per rule. exporter NULL: every exporter. ifindex NULL: every interface of the
-- matched exporters. description_regex: only interfaces whose description matches.
-- group_id: the members of that group (and nothing else in the row).
CREATE TABLE user_grants (
    id                serial PRIMARY KEY,
    user_id           integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    exporter          text,
    ifindex           bigint,
    description_regex text,
    group_id          integer REFERENCES interface_groups(id) ON DELETE CASCADE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (group_id IS NULL OR (exporter IS NULL AND ifindex IS NULL AND description_regex IS NULL)),
    CHECK (ifindex IS NULL OR exporter IS NOT NULL)
);

CREATE TABLE audit_log (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    target text,
    detail text
);
CREATE INDEX audit_log_at ON audit_log (at);

-- The interfaces a user may see: admins everything; viewers what their grants match.
-- An exporter in a grant matches its address or its name.
CREATE FUNCTION flowstage_visible_interfaces(uid integer)
RETURNS TABLE (exporter_id integer, ifindex bigint)
LANGUAGE sql STABLE AS $$
    SELECT i.exporter_id, i.ifindex
    FROM interfaces i
    JOIN exporters e ON e.id = i.exporter_id
    JOIN users u ON u.id = uid AND NOT u.disabled
    WHERE u.role = 'admin'
       OR EXISTS (
           SELECT 1 FROM user_grants g
           WHERE g.user_id = uid
             AND (
                 (g.group_id IS NOT NULL AND EXISTS (
                     SELECT 1 FROM interface_group_members m
                     WHERE m.group_id = g.group_id
                       AND m.exporter_id = i.exporter_id AND m.ifindex = i.ifindex))
              OR (g.group_id IS NULL
                  AND (g.exporter IS NULL OR g.exporter = host(e.address) OR g.exporter = e.name)
                  AND (g.ifindex IS NULL OR g.ifindex = i.ifindex)
                  AND (g.description_regex IS NULL
                       OR coalesce(i.description, '') ~ g.description_regex))
             )
       )
$$;
