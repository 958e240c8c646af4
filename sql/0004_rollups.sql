-- Flowstage schema 4: rollups of the minute aggregates to five minutes, hour, day, ISO
-- week, month and year, their bookkeeping, and the functions that place a time in its
-- bucket.
--
-- Every rollup table has the columns of its minute table, in the same order, with
-- "bucket" (the start of the period, UTC) in place of "minute". Top N + "other" is
-- re-applied per bucket, exporter, interface, direction and side, so totals stay
-- exact at every level. Five-minute buckets are partitioned by UTC day, hours by UTC
-- month, the other levels by UTC year; retention drops whole partitions.
--
-- Buckets follow the display time zone (rollup_settings): a day is a local day, a
-- week starts on the configured day, an hour starts at the zone's offset from UTC
-- modulo one hour (:00 almost everywhere, :30 in India), so hours always tile days.

CREATE TABLE rollup_settings (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    timezone         text NOT NULL,
    -- ISO day number the week starts on: 1 Monday (ISO 8601, Stager's YYYY-IW), 7 Sunday.
    week_start       smallint NOT NULL CHECK (week_start IN (1, 7)),
    hour_offset_secs integer NOT NULL CHECK (hour_offset_secs >= 0 AND hour_offset_secs < 3600),
    top_n            integer NOT NULL CHECK (top_n > 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Per level: [done_from, done_to) is rolled up, contiguous; data before horizon has
-- been purged. The minute level only uses horizon.
CREATE TABLE rollup_levels (
    level      text PRIMARY KEY CHECK (level IN ('minute', '5min', 'hour', 'day', 'week', 'month', 'year')),
    done_from  timestamptz,
    done_to    timestamptz,
    horizon    timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rollup_levels (level) VALUES
    ('minute'), ('5min'), ('hour'), ('day'), ('week'), ('month'), ('year');

-- Buckets below done_to whose sources changed after they were rolled up (late flows,
-- a replayed spool, a forced re-run): the next rollup recomputes them.
CREATE TABLE rollup_dirty (
    level     text NOT NULL REFERENCES rollup_levels(level),
    bucket    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (level, bucket)
);

-- The start of the bucket of a level that contains t.
CREATE FUNCTION flowstage_bucket(level text, t timestamptz, tz text, week_start integer, hour_offset integer)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE level
        WHEN 'minute' THEN date_trunc('minute', t)
        WHEN '5min' THEN to_timestamp(floor(extract(epoch FROM t) / 300) * 300)
        WHEN 'hour' THEN to_timestamp(floor((extract(epoch FROM t) + hour_offset) / 3600) * 3600 - hour_offset)
        WHEN 'day' THEN date_trunc('day', t AT TIME ZONE tz) AT TIME ZONE tz
        WHEN 'week' THEN (date_trunc('week', (t AT TIME ZONE tz) + make_interval(days => (8 - week_start) % 7))
                          - make_interval(days => (8 - week_start) % 7)) AT TIME ZONE tz
        WHEN 'month' THEN date_trunc('month', t AT TIME ZONE tz) AT TIME ZONE tz
        WHEN 'year' THEN date_trunc('year', t AT TIME ZONE tz) AT TIME ZONE tz
    END
$$;

-- The end of the n-th bucket from the one that starts at b (local calendar arithmetic:
-- a day across a daylight-saving change has 23 or 25 hours).
CREATE FUNCTION flowstage_bucket_end(level text, b timestamptz, tz text, n integer DEFAULT 1)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE level
        WHEN 'minute' THEN b + n * interval '1 minute'
        WHEN '5min' THEN b + n * interval '5 minutes'
        WHEN 'hour' THEN b + n * interval '1 hour'
        WHEN 'day' THEN ((b AT TIME ZONE tz) + n * interval '1 day') AT TIME ZONE tz
        WHEN 'week' THEN ((b AT TIME ZONE tz) + n * interval '7 days') AT TIME ZONE tz
        WHEN 'month' THEN ((b AT TIME ZONE tz) + n * interval '1 month') AT TIME ZONE tz
        WHEN 'year' THEN ((b AT TIME ZONE tz) + n * interval '1 year') AT TIME ZONE tz
    END
$$;

-- The starts of the buckets of a level that overlap [lo, hi).
CREATE FUNCTION flowstage_buckets(level text, lo timestamptz, hi timestamptz, tz text, week_start integer, hour_offset integer)
RETURNS SETOF timestamptz LANGUAGE plpgsql STABLE AS $$
DECLARE
    first timestamptz := flowstage_bucket(level, lo, tz, week_start, hour_offset);
    step interval := CASE level WHEN 'minute' THEN interval '1 minute' WHEN '5min' THEN interval '5 minutes'
        WHEN 'hour' THEN interval '1 hour'
        WHEN 'day' THEN interval '1 day' WHEN 'week' THEN interval '7 days'
        WHEN 'month' THEN interval '1 month' ELSE interval '1 year' END;
BEGIN
    IF level IN ('minute', '5min', 'hour') THEN
        RETURN QUERY SELECT g FROM generate_series(first, hi - interval '1 microsecond', step) g;
    ELSE
        RETURN QUERY SELECT g AT TIME ZONE tz
            FROM generate_series(first AT TIME ZONE tz, hi AT TIME ZONE tz, step) g
            WHERE (g AT TIME ZONE tz) < hi;
    END IF;
END $$;

-- Each rollup table is its minute table's columns, with "bucket" in place of "minute".
DO $$
DECLARE
    lvl text;
    kind text;
BEGIN
    FOREACH lvl IN ARRAY ARRAY['5min', 'hour', 'day', 'week', 'month', 'year'] LOOP
        FOREACH kind IN ARRAY ARRAY['flow_totals', 'flow_as', 'flow_ip', 'flow_port', 'flow_proto'] LOOP
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS) PARTITION BY RANGE (minute)',
                kind || '_' || lvl, kind);
            EXECUTE format('ALTER TABLE %I RENAME COLUMN minute TO bucket', kind || '_' || lvl);
        END LOOP;
    END LOOP;
END $$;

-- Create the partitions of one rollup level that cover [lo, hi) (idempotent): UTC
-- days for five minutes (flow_ip_5min_20261204), UTC months for hours
-- (flow_ip_hour_202612), UTC years for the rest (flow_ip_day_2026).
CREATE FUNCTION flowstage_ensure_rollup(level text, lo timestamptz, hi timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    unit text := CASE level WHEN '5min' THEN 'day' WHEN 'hour' THEN 'month' ELSE 'year' END;
    fmt text := CASE level WHEN '5min' THEN 'YYYYMMDD' WHEN 'hour' THEN 'YYYYMM' ELSE 'YYYY' END;
    p timestamp;
    kind text;
    part text;
BEGIN
    IF level NOT IN ('5min', 'hour', 'day', 'week', 'month', 'year') THEN
        RAISE EXCEPTION 'not a rollup level: %', level;
    END IF;
    p := date_trunc(unit, lo AT TIME ZONE 'UTC');
    WHILE (p AT TIME ZONE 'UTC') < hi LOOP
        FOREACH kind IN ARRAY ARRAY['flow_totals', 'flow_as', 'flow_ip', 'flow_port', 'flow_proto'] LOOP
            part := kind || '_' || level || '_' || to_char(p, fmt);
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, kind || '_' || level, p AT TIME ZONE 'UTC',
                (p + ('1 ' || unit)::interval) AT TIME ZONE 'UTC');
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (bucket, exporter_id, ifindex)',
                part || '_idx', part);
            -- Reports over every interface ask for one direction (and side): this index
            -- reads just those rows, which rollups write next to each other.
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (direction, %s bucket)',
                part || '_dir_idx', part,
                CASE WHEN kind IN ('flow_as', 'flow_ip', 'flow_port') THEN 'side,' ELSE '' END);
        END LOOP;
        p := p + ('1 ' || unit)::interval;
    END LOOP;
END $$;

-- Called by the collector in the transaction that writes minutes [first_minute,
-- last_minute]: five-minute and hour buckets already rolled up that these minutes fall
-- in are marked dirty. The share locks order this against a running rollup of those
-- levels, which holds its row for update: either the rollup sees these minutes or
-- this call sees its done_to.
CREATE FUNCTION flowstage_minutes_written(first_minute timestamptz, last_minute timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    l record;
    s rollup_settings%ROWTYPE;
BEGIN
    FOR l IN SELECT level, done_to FROM rollup_levels WHERE level IN ('5min', 'hour')
             ORDER BY level FOR SHARE LOOP
        CONTINUE WHEN l.done_to IS NULL OR first_minute >= l.done_to;
        SELECT * INTO s FROM rollup_settings;
        INSERT INTO rollup_dirty (level, bucket)
        SELECT l.level, b
        FROM flowstage_buckets(l.level, first_minute, least(last_minute + interval '1 minute', l.done_to),
                               s.timezone, s.week_start, s.hour_offset_secs) b
        ON CONFLICT DO NOTHING;
    END LOOP;
END $$;
