"""The server side of the PostgreSQL store's batched exchange (``PostgresStore.flush_many``).

The plpgsql functions that migration step 3 makes in the store's schema (``flush_many`` and
the functions it calls), written for ``SQL.format`` by ``_braced``, and the pure functions
that build what ``flush_many`` is sent and read what it answers. Apart from ``_postgres``
because the plpgsql alone is as long as a module should be; the store keeps the migrations
(``_STEPS`` takes these texts) and the round trips, which need its connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._state import MAX_ERROR_MESSAGE, MAX_ERROR_TYPE
from ._batch import Flush, Flushed
from ._codec import MAX_ARM, MAX_COUNT, MAX_ERRORS, dump_error
from ._digest import member

# Also what PostgresStore reads of a rollout's errors (read_errors, add_errors).
_ERRORS_READ = 10 * MAX_ERRORS  # rows read per rollout: stagedroll writes at most MAX_ERRORS

# The batched exchange (``flush_many``): plpgsql functions in the schema, made by step 3.
# Written with "{s}" for the schema; the other braces are doubled by _braced().
_LEXEME = r"""CREATE OR REPLACE FUNCTION {s}.lexeme(lex text, cap integer, OUT canon text,
    OUT sort bytea, OUT len integer) LANGUAGE plpgsql IMMUTABLE AS $body$
-- A JSON string as Python's json.dumps writes it (ASCII, escapes in lower case), its text
-- cut to cap code points (none when cap is null), and a key that sorts as Python compares
-- strings (the code points in UTF-8, a lone surrogate as three bytes, as surrogatepass).
DECLARE
  plain text := substr(lex, 2, length(lex) - 2);
  decoded text;
  t text[];
  u integer;
  c integer;
  pending integer;
  cps integer[] := '{}';
BEGIN
  IF plain ~ '^[\x20\x21\x23-\x5b\x5d-\x7e]*$' THEN  -- printable ASCII, no escape: as it is
    IF cap IS NOT NULL AND length(plain) > cap THEN
      plain := left(plain, cap);
    END IF;
    canon := '"' || plain || '"';
    sort := convert_to(plain, 'UTF8');
    len := length(plain);
    RETURN;
  END IF;
  IF plain ~ '^@CANONICAL@*$' THEN  -- as Python writes it, no lone surrogate, no NUL
    decoded := lex::jsonb #>> '{}';
    len := length(decoded);
    IF cap IS NULL OR len <= cap THEN
      canon := lex;
      sort := convert_to(decoded, 'UTF8');
      RETURN;
    END IF;
  END IF;
  FOR t IN SELECT regexp_matches(plain, '\\u([0-9a-fA-F]{4})|\\(.)|([^\\])', 'g') LOOP
    IF t[1] IS NOT NULL THEN
      u := ('x' || lpad(t[1], 8, '0'))::bit(32)::integer;
    ELSIF t[2] IS NOT NULL THEN
      u := CASE t[2] WHEN 'b' THEN 8 WHEN 't' THEN 9 WHEN 'n' THEN 10 WHEN 'f' THEN 12
        WHEN 'r' THEN 13 WHEN '"' THEN 34 WHEN '\' THEN 92 WHEN '/' THEN 47 END;
      IF u IS NULL THEN
        RAISE EXCEPTION 'invalid escape in a JSON string';
      END IF;
    ELSE
      u := ascii(t[3]);
    END IF;
    IF pending IS NOT NULL THEN  -- a high surrogate: joined to a low one that follows
      IF t[1] IS NOT NULL AND u BETWEEN 56320 AND 57343 THEN
        cps := cps || (65536 + (pending - 55296) * 1024 + (u - 56320));
        pending := NULL;
        CONTINUE;
      END IF;
      cps := cps || pending;
      pending := NULL;
    END IF;
    IF t[1] IS NOT NULL AND u BETWEEN 55296 AND 56319 THEN
      pending := u;
    ELSE
      cps := cps || u;
    END IF;
  END LOOP;
  IF pending IS NOT NULL THEN
    cps := cps || pending;
  END IF;
  IF cap IS NOT NULL THEN
    cps := cps[1:cap];
  END IF;
  len := coalesce(array_length(cps, 1), 0);
  canon := '"';
  sort := '';
  FOREACH c IN ARRAY cps LOOP
    canon := canon || CASE
      WHEN c = 8 THEN '\b' WHEN c = 9 THEN '\t' WHEN c = 10 THEN '\n' WHEN c = 12 THEN '\f'
      WHEN c = 13 THEN '\r' WHEN c = 34 THEN '\"' WHEN c = 92 THEN '\\'
      WHEN c BETWEEN 32 AND 126 THEN chr(c)
      WHEN c < 65536 THEN '\u' || lpad(to_hex(c), 4, '0')
      ELSE '\u' || to_hex(55296 + ((c - 65536) >> 10))
        || '\u' || to_hex(56320 + ((c - 65536) & 1023))
    END;
    sort := sort || decode(CASE
      WHEN c < 128 THEN lpad(to_hex(c), 2, '0')
      WHEN c < 2048 THEN to_hex(192 | (c >> 6)) || to_hex(128 | (c & 63))
      WHEN c < 65536 THEN to_hex(224 | (c >> 12)) || to_hex(128 | ((c >> 6) & 63))
        || to_hex(128 | (c & 63))
      ELSE to_hex(240 | (c >> 18)) || to_hex(128 | ((c >> 12) & 63))
        || to_hex(128 | ((c >> 6) & 63)) || to_hex(128 | (c & 63))
    END, 'hex');
  END LOOP;
  canon := canon || '"';
END
$body$"""

_PY_FLOAT = r"""CREATE OR REPLACE FUNCTION {s}.py_float(v double precision) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT SET extra_float_digits = 1 AS $body$
-- A finite double as Python's repr (and json.dumps) writes it: the fewest digits that read
-- back as v, fixed from 1e-4 to 1e16, else in exponent form (two digits at least).
-- PostgreSQL's output reads back as v too, but writes one digit more where the shortest
-- is a bound of v's rounding interval: those digits are tried too.
DECLARE
  t text := v::text;
  sign text := '';
  digits text;
  whole text;
  e integer;
  r text;
  x numeric;
BEGIN
  IF v = 0 THEN
    RETURN CASE WHEN t LIKE '-%' THEN '-0.0' ELSE '0.0' END;
  END IF;
  IF left(t, 1) = '-' THEN
    sign := '-';
    t := substr(t, 2);
  END IF;
  IF position('e' IN t) > 0 THEN  -- d.ddde+x
    digits := replace(split_part(t, 'e', 1), '.', '');
    e := split_part(t, 'e', 2)::integer;
  ELSE
    whole := split_part(t, '.', 1);
    digits := whole || split_part(t, '.', 2);
    e := length(whole) - 1;
    IF whole = '0' THEN
      e := -1 - (length(digits) - 1 - length(ltrim(substr(digits, 2), '0')));
    END IF;
    digits := ltrim(digits, '0');
  END IF;
  digits := rtrim(digits, '0');
  FOR k IN 1 .. length(digits) - 1 LOOP
    r := round(digits::numeric, k - length(digits))::text;  -- k digits, then zeros
    x := (left(r, 1) || '.' || substr(r, 2) || '0e' || (e + length(r) - length(digits)))::numeric;
    IF x <= 1.7976931348623157e308 AND (sign || x::text)::double precision = v THEN
      e := e + length(r) - length(digits);
      digits := rtrim(r, '0');
      EXIT;
    END IF;
  END LOOP;
  IF e < -4 OR e >= 16 THEN
    RETURN sign || left(digits, 1) || CASE WHEN length(digits) > 1
      THEN '.' || substr(digits, 2) ELSE '' END
      || 'e' || CASE WHEN e < 0 THEN '-' ELSE '+' END
      || CASE WHEN abs(e) < 10 THEN '0' ELSE '' END || abs(e);
  ELSIF e < 0 THEN
    RETURN sign || '0.' || repeat('0', -e - 1) || digits;
  ELSIF length(digits) <= e + 1 THEN
    RETURN sign || rpad(digits, e + 1, '0') || '.0';
  END IF;
  RETURN sign || left(digits, e + 1) || '.' || substr(digits, e + 2);
END
$body$"""

# A JSON string's content as json.dumps writes it (ASCII), but for NUL and lone surrogates.
_CANONICAL = (
    r"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\"\\bfnrt]"
    r"|\\u00(?:0[1-7]|0b|0e|0f|1[0-9a-f]|7f|[89a-f][0-9a-f])|\\u0[1-9a-f][0-9a-f]{2}"
    r"|\\u[1-9a-c][0-9a-f]{3}|\\ud[0-7][0-9a-f]{2}|\\u[ef][0-9a-f]{3}"
    r"|\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2})"
)
# A number as Python's repr writes a float (fixed from 1e-4 to 1e16, else with an exponent).
_REPR = (
    r"-?(?:[1-9][0-9]{0,15}\.(?:0|[0-9]*[1-9])|0\.0{0,3}[1-9](?:[0-9]*[1-9])?|0\.0"
    r"|[1-9](?:\.[0-9]*[1-9])?e(?:-(?:0[5-9]|[1-9][0-9]{1,2})"
    r"|\+(?:1[6-9]|[2-9][0-9]|[1-9][0-9]{2})))"
)
_STRING = r'"(?:[^"\\\x01-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_READ_ERROR = r"""CREATE OR REPLACE FUNCTION {s}.read_error(entry text, OUT arm text,
    OUT etype text, OUT message text, OUT arm_key bytea, OUT etype_key bytea,
    OUT message_key bytea, OUT first_seen double precision, OUT last_seen double precision,
    OUT first_text text, OUT last_text text, OUT n numeric)
    LANGUAGE plpgsql IMMUTABLE AS $body$
-- A recent error as load_error reads it (its strings as lexeme() gives them, its times
-- with their text as dump_error writes them), or arm null when load_error would refuse
-- it. Any JSON object with the fields (in any order, with others) is read; a row with a
-- lone surrogate (which PostgreSQL's JSON refuses, and Python writes) only in the form
-- dump_error writes.
DECLARE
  m text[];
  j json;
  caps integer[] := ARRAY[@MAX_ARM@, @MAX_TYPE@, @MAX_MESSAGE@];
  canon text[] := '{NULL,NULL,NULL}';
  sort bytea[] := '{NULL,NULL,NULL}';
  plain text;
  decoded text;
  l record;
BEGIN
  IF entry ~ '\\u[dD][89a-fA-F]' THEN  -- perhaps a lone surrogate: the form dump_error writes
    m := regexp_match(entry, '^\{"arm":(@S@),"type":(@S@),"message":(@S@),'
      '"first_seen":(@N@),"last_seen":(@N@),"count":(-?[0-9]+)\}$');
  END IF;
  IF m IS NULL THEN
    j := entry::json;
    IF json_typeof(j) <> 'object' THEN
      RETURN;
    END IF;
    m := ARRAY[(j -> 'arm')::text, (j -> 'type')::text, (j -> 'message')::text,
               (j -> 'first_seen')::text, (j -> 'last_seen')::text, (j -> 'count')::text];
    IF left(m[1], 1) IS DISTINCT FROM '"' OR left(m[2], 1) IS DISTINCT FROM '"'
        OR left(m[3], 1) IS DISTINCT FROM '"' OR m[4] !~ '^-?[0-9]' OR m[5] !~ '^-?[0-9]'
        OR m[6] !~ '^-?[0-9]+$' THEN  -- not text, or not numbers (or not integer: count)
      RETURN;
    END IF;
  END IF;
  n := m[6]::numeric;
  first_seen := m[4]::double precision;  -- out of range: refused, as Python finds it infinite
  last_seen := m[5]::double precision;
  first_text := CASE WHEN m[4] ~ '^@REPR@$' THEN m[4] ELSE {s}.py_float(first_seen) END;
  last_text := CASE WHEN m[5] ~ '^@REPR@$' THEN m[5] ELSE {s}.py_float(last_seen) END;
  IF n < 1 OR n > @MAX_COUNT@ THEN
    RETURN;
  END IF;
  FOR k IN 1 .. 3 LOOP  -- arm (never cut: refused beyond its cap), type, message (cut)
    plain := substr(m[k], 2, length(m[k]) - 2);
    IF plain ~ '^[\x20\x21\x23-\x5b\x5d-\x7e]*$' AND length(plain) <= caps[k] THEN
      canon[k] := m[k];
      sort[k] := convert_to(plain, 'UTF8');
      CONTINUE;
    ELSIF plain ~ '^@CANONICAL@*$' THEN  -- as Python writes it, no lone surrogate, no NUL
      decoded := m[k]::jsonb #>> '{}';
      IF length(decoded) <= caps[k] THEN
        canon[k] := m[k];
        sort[k] := convert_to(decoded, 'UTF8');
        CONTINUE;
      END IF;
    END IF;
    SELECT * INTO l FROM {s}.lexeme(m[k], CASE WHEN k > 1 THEN caps[k] END);
    IF k = 1 AND l.len > caps[k] THEN
      RETURN;
    END IF;
    canon[k] := l.canon;
    sort[k] := l.sort;
  END LOOP;
  IF canon[1] <> '""' THEN
    arm := canon[1];
    etype := canon[2];
    message := canon[3];
    arm_key := sort[1];
    etype_key := sort[2];
    message_key := sort[3];
  END IF;
EXCEPTION WHEN OTHERS THEN
  arm := NULL;
END
$body$"""

_MERGE_ERRORS = r"""CREATE OR REPLACE FUNCTION {s}.merge_errors(p_rollout text, p_new jsonb,
    p_now double precision) RETURNS void LANGUAGE plpgsql AS $body$
-- add_errors in SQL: p_new holds dump_error texts (checked by the caller). The rollout's
-- touched row first (its writers take turns), then the rows read, merged as merge_errors
-- does, the most recent MAX_ERRORS kept and written back in the order add_errors writes.
DECLARE
  merged text[];
BEGIN
  INSERT INTO {s}.touched (rollout, key, at) VALUES (p_rollout, 'errors', p_now)
    ON CONFLICT (rollout, key) DO UPDATE SET at = excluded.at;
  WITH entries AS (
    SELECT row_number() OVER (ORDER BY e.id DESC) AS ord, e.entry
    FROM (SELECT id, entry FROM {s}.errors WHERE rollout = p_rollout
          ORDER BY id DESC LIMIT @ERRORS_READ@) AS e
    UNION ALL
    SELECT @ERRORS_READ@ + a.i, a.entry
    FROM jsonb_array_elements_text(p_new) WITH ORDINALITY AS a(entry, i)
  ), grouped AS (
    SELECT r.arm, r.etype, r.message, r.arm_key, r.etype_key, r.message_key,
           min(r.first_seen) AS first_seen, max(r.last_seen) AS last_seen,
           (array_agg(r.first_text ORDER BY r.first_seen, x.ord))[1] AS first_text,
           (array_agg(r.last_text ORDER BY r.last_seen DESC, x.ord))[1] AS last_text,
           least(sum(r.n), @MAX_COUNT@) AS n
    FROM entries AS x, LATERAL {s}.read_error(x.entry) AS r
    WHERE r.arm IS NOT NULL
    GROUP BY r.arm, r.etype, r.message, r.arm_key, r.etype_key, r.message_key
    ORDER BY last_seen DESC, first_seen DESC, r.arm_key, r.etype_key, r.message_key
    LIMIT @MAX_ERRORS@
  )
  SELECT coalesce(array_agg('{"arm":' || g.arm || ',"type":' || g.etype || ',"message":'
      || g.message || ',"first_seen":' || g.first_text || ',"last_seen":' || g.last_text
      || ',"count":' || g.n || '}'
      ORDER BY g.last_seen, g.first_seen, g.arm_key DESC, g.etype_key DESC,
               g.message_key DESC), '{}')
    INTO merged FROM grouped AS g;
  DELETE FROM {s}.errors WHERE rollout = p_rollout;
  INSERT INTO {s}.errors (rollout, entry)
    SELECT p_rollout, u.entry FROM unnest(merged) WITH ORDINALITY AS u(entry, i) ORDER BY u.i;
END
$body$"""

_ADD_SET = r"""CREATE OR REPLACE FUNCTION {s}.add_set(p_rollout text, p_key text, p_lock text,
    p_touch boolean, p_now double precision, p_digests bigint[]) RETURNS SETOF bigint
    LANGUAGE plpgsql AS $body$
-- _add_digests in SQL: the set's shared lock, its touched row (written when due, else only
-- created when missing), the digests in ascending order; returns those that were new.
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext(p_lock));
  IF p_touch THEN
    INSERT INTO {s}.touched (rollout, key, at) VALUES (p_rollout, p_key, p_now)
      ON CONFLICT (rollout, key) DO UPDATE SET at = excluded.at;
  ELSE
    INSERT INTO {s}.touched (rollout, key, at) SELECT p_rollout, p_key, p_now
      WHERE NOT EXISTS (SELECT 1 FROM {s}.touched AS t WHERE t.rollout = p_rollout
                        AND t.key = p_key) ON CONFLICT DO NOTHING;
  END IF;
  RETURN QUERY WITH added AS (
    INSERT INTO {s}.digests (rollout, scope, digest)
    SELECT p_rollout, p_key, d FROM unnest(p_digests) AS d ORDER BY d
    ON CONFLICT DO NOTHING RETURNING digest
  ) SELECT added.digest FROM added;
END
$body$"""

_FLUSH_MANY = r"""CREATE OR REPLACE PROCEDURE {s}.flush_many(p_batch jsonb,
    INOUT p_answer jsonb DEFAULT NULL) LANGUAGE plpgsql AS $body$
-- PostgresStore.flush_many: each flush in a subtransaction of its own (one that fails
-- answers its error and leaves nothing), committed on its own (its locks are held for it
-- alone, not for the whole exchange: processes flushing the same rollouts do not queue
-- behind each other's exchanges), and the store's generation.
DECLARE
  v_now double precision := (p_batch ->> 'now')::double precision;
  v_flush jsonb;
  v_op jsonb;
  v_rollout text;
  v_segment text;
  v_new bigint[];
  v_added jsonb;
  v_counters jsonb;
  v_distinct jsonb;
  v_earlier jsonb;
  v_failed jsonb;
  v_answers jsonb[] := '{}';
BEGIN
  FOR v_flush IN SELECT f.value FROM jsonb_array_elements(p_batch -> 'flushes')
      WITH ORDINALITY AS f(value, i) ORDER BY f.i LOOP
    -- Evidence, not state: its commit waits for no disk flush (a crash of the server may
    -- lose the last moments of it, whole flushes at a time, as Redis's default does).
    PERFORM set_config('synchronous_commit', 'off', true);
    BEGIN
      v_rollout := v_flush ->> 'rollout';
      v_segment := v_flush ->> 'segment';
      v_added := '{}';
      v_counters := '{}';
      v_distinct := '[]';
      v_earlier := '[]';
      v_failed := NULL;
      IF v_segment IS NULL THEN
        IF jsonb_array_length(v_flush -> 'errors') > 0 THEN
          PERFORM {s}.merge_errors(v_rollout, v_flush -> 'errors', v_now);
        END IF;
      ELSE
        SELECT coalesce(jsonb_agg(coalesce((SELECT jsonb_object_agg(c.name, c.value)
            FROM {s}.counts AS c WHERE c.rollout = v_rollout AND c.segment = e.segment),
            '{}') ORDER BY e.i), '[]')
          INTO v_earlier
          FROM jsonb_array_elements_text(v_flush -> 'earlier') WITH ORDINALITY AS e(segment, i);
        -- events: "first" maps each digest to its counter's place in "names"
        FOR v_op IN SELECT o.value FROM jsonb_array_elements(v_flush -> 'events')
            WITH ORDINALITY AS o(value, i) ORDER BY o.i LOOP
          v_new := ARRAY(SELECT {s}.add_set(v_rollout, v_op ->> 'key', v_op ->> 'lock',
            (v_op ->> 'touch')::boolean, v_now,
            ARRAY(SELECT k::bigint FROM jsonb_object_keys(v_op -> 'first') AS k)));
          SELECT coalesce(jsonb_object_agg(x.k, x.n), '{}') INTO v_added FROM (
            SELECT u.k, sum(u.n) AS n FROM (
              SELECT a.key AS k, a.value::bigint AS n FROM jsonb_each_text(v_added) AS a
              UNION ALL
              SELECT v_op -> 'names' ->> (v_op -> 'first' ->> d::text)::integer, 1
              FROM unnest(v_new) AS d
            ) AS u GROUP BY u.k
          ) AS x;
        END LOOP;
        IF v_flush -> 'counts' <> '{}' OR v_added <> '{}' THEN
          INSERT INTO {s}.counts (rollout, segment, name, value, touched)
            SELECT v_rollout, v_segment, u.k, sum(u.n), v_now FROM (
              SELECT a.key, a.value::bigint FROM jsonb_each_text(v_flush -> 'counts') AS a
              UNION ALL
              SELECT a.key, a.value::bigint FROM jsonb_each_text(v_added) AS a
            ) AS u(k, n) GROUP BY u.k ORDER BY u.k
            ON CONFLICT (rollout, segment, name) DO UPDATE
            SET value = {s}.counts.value + excluded.value, touched = excluded.touched;
        END IF;
        SELECT coalesce(jsonb_object_agg(c.name, c.value), '{}') INTO v_counters
          FROM {s}.counts AS c WHERE c.rollout = v_rollout AND c.segment = v_segment;
        FOR v_op IN SELECT o.value FROM jsonb_array_elements(v_flush -> 'distinct')
            WITH ORDINALITY AS o(value, i) ORDER BY o.i LOOP
          IF jsonb_array_length(v_op -> 'digests') > 0 THEN
            PERFORM {s}.add_set(v_rollout, v_op ->> 'key', v_op ->> 'lock',
              (v_op ->> 'touch')::boolean, v_now,
              ARRAY(SELECT d::bigint FROM jsonb_array_elements_text(v_op -> 'digests') AS d));
          END IF;
          v_distinct := v_distinct || to_jsonb(coalesce((SELECT z.n FROM {s}.sizes AS z
            WHERE z.rollout = v_rollout AND z.scope = v_op ->> 'key'), 0));
        END LOOP;
        IF jsonb_array_length(v_flush -> 'errors') > 0 THEN
          BEGIN  -- last, and alone: the evidence lands whatever happens to them
            PERFORM {s}.merge_errors(v_rollout, v_flush -> 'errors', v_now);
          EXCEPTION WHEN OTHERS THEN
            v_failed := jsonb_build_object('state', SQLSTATE, 'message', SQLERRM);
          END;
        END IF;
      END IF;
      v_answers := array_append(v_answers, jsonb_build_object('counters', v_counters,
        'added', v_added, 'distinct', v_distinct, 'earlier', v_earlier,
        'errors_failed', v_failed));
    EXCEPTION WHEN OTHERS THEN
      v_answers := array_append(v_answers, jsonb_build_object('failed',
        jsonb_build_object('state', SQLSTATE, 'message', SQLERRM)));
    END;
    COMMIT;
  END LOOP;
  p_answer := jsonb_build_object('answers', to_jsonb(v_answers), 'generation',
    (SELECT m.value FROM {s}.meta AS m WHERE m.key = 'generation'));
END
$body$"""


def _braced(text: str) -> str:
    """``text`` for ``SQL.format``: its constants filled in, its braces doubled but ``{s}``."""
    constants = {
        "@S@": _STRING,
        "@REPR@": _REPR,
        "@CANONICAL@": _CANONICAL,
        "@N@": _NUMBER,
        "@MAX_COUNT@": str(MAX_COUNT),
        "@MAX_TYPE@": str(MAX_ERROR_TYPE),
        "@MAX_MESSAGE@": str(MAX_ERROR_MESSAGE),
        "@MAX_ARM@": str(MAX_ARM),
        "@ERRORS_READ@": str(_ERRORS_READ),
        "@MAX_ERRORS@": str(MAX_ERRORS),
    }
    for name, value in constants.items():
        text = text.replace(name, value)
    return text.replace("{", "{{").replace("}", "}}").replace("{{s}}", "{s}")


def _payload_of(
    flush: Flush, unit_set: Callable[[str, str], dict[str, Any]]
) -> tuple[dict[str, Any], list[int]]:
    """What the schema's ``flush_many`` receives of ``flush``, and its scopes' order.

    ``unit_set(rollout, key)`` gives the fields of each unit set written to (its lock, and
    whether its touched time is due), called in the order of the payload. The order is that
    of ``distinct`` in the payload (by name), as places in the answer. Raises for a flush it
    cannot send: ``ValueError`` for text that PostgreSQL cannot hold (a NUL, a lone
    surrogate) or malformed errors, ``TypeError`` for counts that are no integers (and
    whatever a digest that is no text raises).
    """
    rollout = _text(flush.rollout)
    errors = [dump_error(error) for error in flush.errors]
    if flush.segment is None:
        return {"rollout": rollout, "segment": None, "errors": errors}, []
    segment, earlier = _text(flush.segment), [_text(seg) for seg in flush.earlier]
    counts = {}
    for name, value in flush.counts.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"count {name!r} must be an integer, not {value!r}")
        counts[_text(name)] = int(value)
    events = []  # (key, counter names, each digest's counter: where it is first)
    for scope, groups in flush.events:
        names: list[str] = []
        first: dict[str, int] = {}
        for name, digests in groups:
            names.append(_text(name))
            for unit in digests:
                first.setdefault(str(member(unit)), len(names) - 1)
        if first:
            events.append(("first:" + _text(scope), names, first))
    distinct = [("distinct:" + _text(scope), sorted({member(unit) for unit in digests}))
                for scope, digests in flush.distinct]  # fmt: skip
    # The sets in the order of their names (stable): one lock order for every process.
    places = sorted(range(len(distinct)), key=lambda i: distinct[i][0])
    payload = {
        "rollout": rollout,
        "segment": segment,
        "counts": counts,
        "events": [{**unit_set(rollout, key), "names": names, "first": first}
                   for key, names, first in sorted(events, key=lambda e: e[0])],
        "distinct": [{**(unit_set(rollout, key) if members else {"key": key}), "digests": members}
                     for key, members in (distinct[i] for i in places)],
        "earlier": earlier,
        "errors": errors,
    }  # fmt: skip
    return payload, places


def _text(text: str) -> str:
    """``text``, checked: ``ValueError`` for what PostgreSQL text cannot hold."""
    if "\x00" in text:
        raise ValueError(f"{text[:40]!r}...: PostgreSQL text cannot hold NUL characters")
    text.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return text


def _marker(text: str) -> int:
    """The store's marker from ``generation``'s text, as ``_generation`` reads it."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0


def _answer(reply: dict[str, Any], places: list[int]) -> Flushed | Exception:
    """The answer to one flush from what the function said of it."""
    if reply.get("failed") is not None:
        return _refused(reply["failed"])
    found = reply.get("errors_failed")
    distinct = [0] * len(places)
    for place, count in zip(places, reply["distinct"], strict=True):
        distinct[place] = int(count)
    return Flushed(
        counters={str(k): int(v) for k, v in reply["counters"].items()},
        added={str(k): int(v) for k, v in reply["added"].items()},
        distinct=distinct,
        earlier=[{str(k): int(v) for k, v in seg.items()} for seg in reply["earlier"]],
        errors_failed=_refused(found) if found is not None else None,
    )


def _refused(failed: dict[str, Any]) -> Exception:
    """The exception of a flush the database refused.

    ``ValueError`` for its data (a SQLSTATE of class 22 or 23: a value out of range, a
    constraint), else ``RuntimeError``.
    """
    state, message = str(failed.get("state")), str(failed.get("message"))
    kind = ValueError if state[:2] in ("22", "23") else RuntimeError
    return kind(f"{message} (SQLSTATE {state})")
