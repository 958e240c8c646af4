-- Flowstage schema 1: exporters, interfaces, ingest bookkeeping and the per-minute
-- aggregate tables. Aggregates are range-partitioned by day on "minute" so that
-- retention drops whole partitions; flowstage_ensure_day() creates a day's partitions.

CREATE TABLE exporters (
    id          serial PRIMARY KEY,
    address     inet NOT NULL UNIQUE,
    name        text,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE interfaces (
    exporter_id integer NOT NULL REFERENCES exporters(id) ON DELETE CASCADE,
    ifindex     bigint NOT NULL,
    name        text,
    description text,
    speed_bps   bigint,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exporter_id, ifindex)
);

-- Timestamps are kept by the database itself: the collector advances last_seen as it
-- writes, and a change of name or description stamps updated_at, so nobody runs
-- "UPDATE ... SET timestamp" by hand.
CREATE FUNCTION flowstage_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER exporters_touch BEFORE UPDATE ON exporters
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION flowstage_touch();
CREATE TRIGGER interfaces_touch BEFORE UPDATE ON interfaces
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name
                       OR OLD.description IS DISTINCT FROM NEW.description
                       OR OLD.speed_bps IS DISTINCT FROM NEW.speed_bps)
    EXECUTE FUNCTION flowstage_touch();

-- One row per bucket batch written; makes replays and retries idempotent.
CREATE TABLE ingest_batches (
    id          text PRIMARY KEY,
    rows        integer NOT NULL,
    flows       bigint NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now()
);

-- direction: 0 = in (counted on the input interface), 1 = out (output interface).
-- side: 0 = source, 1 = destination. A NULL key is the "other" row of a top-N bucket.
CREATE TABLE flow_totals (
    minute        timestamptz NOT NULL,
    exporter_id   integer NOT NULL,
    ifindex       bigint NOT NULL,
    direction     smallint NOT NULL,
    sampling_rate integer NOT NULL,
    bytes         bigint NOT NULL,
    packets       bigint NOT NULL,
    flows         bigint NOT NULL
) PARTITION BY RANGE (minute);

CREATE TABLE flow_as (
    minute      timestamptz NOT NULL,
    exporter_id integer NOT NULL,
    ifindex     bigint NOT NULL,
    direction   smallint NOT NULL,
    side        smallint NOT NULL,
    asn         bigint,
    bytes       bigint NOT NULL,
    packets     bigint NOT NULL,
    flows       bigint NOT NULL
) PARTITION BY RANGE (minute);

CREATE TABLE flow_ip (
    minute      timestamptz NOT NULL,
    exporter_id integer NOT NULL,
    ifindex     bigint NOT NULL,
    direction   smallint NOT NULL,
    side        smallint NOT NULL,
    addr        inet,
    bytes       bigint NOT NULL,
    packets     bigint NOT NULL,
    flows       bigint NOT NULL
) PARTITION BY RANGE (minute);

CREATE TABLE flow_port (
    minute      timestamptz NOT NULL,
    exporter_id integer NOT NULL,
    ifindex     bigint NOT NULL,
    direction   smallint NOT NULL,
    side        smallint NOT NULL,
    port        integer,
    bytes       bigint NOT NULL,
    packets     bigint NOT NULL,
    flows       bigint NOT NULL
) PARTITION BY RANGE (minute);

CREATE TABLE flow_proto (
    minute      timestamptz NOT NULL,
    exporter_id integer NOT NULL,
    ifindex     bigint NOT NULL,
    direction   smallint NOT NULL,
    proto       smallint,
    bytes       bigint NOT NULL,
    packets     bigint NOT NULL,
    flows       bigint NOT NULL
) PARTITION BY RANGE (minute);

-- Create the partitions of every aggregate table for one UTC day (idempotent).
CREATE FUNCTION flowstage_ensure_day(day date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
    lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
    FOREACH t IN ARRAY ARRAY['flow_totals', 'flow_as', 'flow_ip', 'flow_port', 'flow_proto'] LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            t || '_' || to_char(day, 'YYYYMMDD'), t, lo, hi);
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON %I (minute, exporter_id, ifindex)',
            t || '_' || to_char(day, 'YYYYMMDD') || '_idx', t || '_' || to_char(day, 'YYYYMMDD'));
    END LOOP;
END $$;
