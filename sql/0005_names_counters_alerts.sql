-- Flowstage schema 5: names from several sources, interface counters measured by SNMP
-- and sFlow, per-exporter health per minute, and alerts.
--
-- Names: every source keeps its own value (file = the operator's exporters.cfg and
-- routers.cfg, snmp = the router's own sysName/ifName/ifDescr/ifAlias, dns = a reverse
-- lookup of the exporter's address). The shown exporters.name and interfaces.name /
-- description are picked from them by flowstage_apply_names(precedence), so changing
-- the precedence or losing an SNMP agent never loses a name.

ALTER TABLE exporters
    ADD COLUMN file_name text,
    ADD COLUMN snmp_name text,
    ADD COLUMN dns_name  text;
UPDATE exporters SET file_name = name WHERE name IS NOT NULL;

ALTER TABLE interfaces
    ADD COLUMN file_description   text,
    ADD COLUMN snmp_name          text,  -- ifName
    ADD COLUMN snmp_descr         text,  -- ifDescr
    ADD COLUMN snmp_alias         text,  -- ifAlias
    ADD COLUMN measured_speed_bps bigint, -- ifHighSpeed * 10^6, else ifSpeed; or sFlow ifSpeed
    ADD COLUMN oper_status        smallint; -- ifOperStatus: 1 up, 2 down, ...
UPDATE interfaces SET file_description = description WHERE description IS NOT NULL;

-- The first non-empty value in precedence order; unknown sources are ignored.
CREATE FUNCTION flowstage_pick(precedence text[], file text, snmp text, dns text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT v FROM unnest(precedence) WITH ORDINALITY AS p(source, n)
        CROSS JOIN LATERAL (SELECT nullif(btrim(CASE p.source WHEN 'file' THEN file
                                                   WHEN 'snmp' THEN snmp
                                                   WHEN 'dns' THEN dns END), '') AS v) x
    WHERE v IS NOT NULL ORDER BY n LIMIT 1
$$;

-- Re-pick every shown name; returns how many rows changed. Speeds measured by SNMP or
-- sFlow replace a configured one only when there is a measurement.
CREATE FUNCTION flowstage_apply_names(precedence text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    changed integer;
    more integer;
BEGIN
    UPDATE exporters e SET name = flowstage_pick(precedence, e.file_name, e.snmp_name, e.dns_name)
    WHERE e.name IS DISTINCT FROM flowstage_pick(precedence, e.file_name, e.snmp_name, e.dns_name);
    GET DIAGNOSTICS changed = ROW_COUNT;
    UPDATE interfaces i SET
        name = flowstage_pick(precedence, NULL, coalesce(nullif(i.snmp_name, ''), i.snmp_descr), NULL),
        description = flowstage_pick(precedence, i.file_description, i.snmp_alias, NULL),
        speed_bps = coalesce(nullif(i.measured_speed_bps, 0), i.speed_bps)
    WHERE (i.name, i.description, i.speed_bps) IS DISTINCT FROM
          (flowstage_pick(precedence, NULL, coalesce(nullif(i.snmp_name, ''), i.snmp_descr), NULL),
           flowstage_pick(precedence, i.file_description, i.snmp_alias, NULL),
           coalesce(nullif(i.measured_speed_bps, 0), i.speed_bps));
    GET DIAGNOSTICS more = ROW_COUNT;
    RETURN changed + more;
END $$;

-- Grants name exporters by address or by the operator's own name (the file source):
-- names from SNMP (sysName) or reverse DNS are not unique and not the operator's to
-- choose, so a new switch calling itself like a granted router must not become
-- visible. Description patterns keep matching the shown description (the file's, else
-- the router's ifAlias, which only its administrators can set).
CREATE OR REPLACE FUNCTION flowstage_visible_interfaces(uid integer)
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
                  AND (g.exporter IS NULL OR g.exporter = host(e.address) OR g.exporter = e.file_name)
                  AND (g.ifindex IS NULL OR g.ifindex = i.ifindex)
                  AND (g.description_regex IS NULL
                       OR coalesce(i.description, '') ~ g.description_regex))
             )
       )
$$;

-- The last SNMP poll of each exporter. A failed poll keeps the names of the last good
-- one; status warns while error is set.
CREATE TABLE snmp_polls (
    exporter_id  integer PRIMARY KEY REFERENCES exporters(id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL,
    succeeded_at timestamptz,
    error        text,
    interfaces   integer NOT NULL DEFAULT 0,
    -- The raw 64-bit counters of the last good poll, per ifindex, to compute the next
    -- poll's deltas: {"ifindex": [in_octets, out_octets], ...} as decimal strings.
    counters     jsonb NOT NULL DEFAULT '{}',
    sys_uptime   bigint
);

-- Interface traffic measured by the device itself, as deltas over [time - secs, time).
-- source: 'snmp' (ifHCInOctets/ifHCOutOctets) or 'sflow' (counter samples).
CREATE TABLE interface_counters (
    time        timestamptz NOT NULL,
    exporter_id integer NOT NULL REFERENCES exporters(id) ON DELETE CASCADE,
    ifindex     bigint NOT NULL,
    source      text NOT NULL CHECK (source IN ('snmp', 'sflow')),
    secs        double precision NOT NULL CHECK (secs > 0),
    in_octets   bigint NOT NULL,
    out_octets  bigint NOT NULL,
    in_packets  bigint,
    out_packets bigint,
    in_errors   bigint,
    out_errors  bigint,
    oper_status smallint,
    PRIMARY KEY (exporter_id, ifindex, source, time)
);
CREATE INDEX interface_counters_time ON interface_counters (time);

-- Collector health per exporter and minute (deltas), for alert rules and history.
CREATE TABLE exporter_health (
    minute        timestamptz NOT NULL,
    exporter_id   integer NOT NULL REFERENCES exporters(id) ON DELETE CASCADE,
    packets       bigint NOT NULL DEFAULT 0,
    flows         bigint NOT NULL DEFAULT 0,
    lost          bigint NOT NULL DEFAULT 0,
    decode_errors bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (exporter_id, minute)
);
CREATE INDEX exporter_health_minute ON exporter_health (minute);

-- One row per alert episode: it starts when a rule's condition holds for a subject
-- and clears once it has not held for the hold-down time since holding_at (the last
-- evaluation that found it). Mail goes out once for each (the *_mailed_at stamps), and
-- the hold-down keeps a flapping condition to one episode.
CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    rule            text NOT NULL,
    subject         text NOT NULL,
    started_at      timestamptz NOT NULL,
    holding_at      timestamptz NOT NULL,
    cleared_at      timestamptz,
    value           double precision,
    message         text NOT NULL,
    start_mailed_at timestamptz,
    clear_mailed_at timestamptz
);
CREATE UNIQUE INDEX alerts_one_active ON alerts (rule, subject) WHERE cleared_at IS NULL;
CREATE INDEX alerts_started ON alerts (started_at);
