"""The server side of the Redis store's batched exchange (``RedisStore.flush_many``).

``_FLUSH``, the Lua script that applies every flush of a batch in one ``EVALSHA``, and the
pure functions that build what it is sent and read what it answers. Apart from ``_redis``
because the script alone is as long as a module should be; the store keeps the round trips
(``flush_many`` and its methods), which need its client, its keys and its failure counter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from .._state import RecentError
from ._batch import Flush
from ._codec import MAX_COUNT, dump_error, load_error
from ._digest import member

# The batched exchange (RedisStore.flush_many): every flush of ARGV[1], a JSON object
# {ttl, tc, mc, me, f: [flush, ...]} whose keys are indexes into KEYS (KEYS[1]: generation).
# A flush: s (its counters), c [[counter, n]], e [[seen, legacy, [[counter, [member]]]]],
# d [[units, [member]]], r [earlier counters], x (its errors) and n [new error] (see
# _planned). Each flush is checked (key types, counters, legacy sets) before it
# writes: a flush refused writes nothing; one that fails once it began writing is unsure.
_FLUSH = r"""
local data = cjson.decode(ARGV[1])
local ttl, type_cap, message_cap = data.ttl, data.tc, data.mc
local MAX_ERRORS, MAX_COUNT = data.me, 9007199254740992
local began = false

local function reason(e)
  if type(e) == 'table' then e = e.err end
  e = tostring(e)
  if e == '' then return '(no message)' end
  return e
end

local function kind(key) return redis.call('TYPE', key).ok end

local function wrong(key, expected)
  local found = kind(key)
  if found ~= 'none' and found ~= expected then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. expected
      .. ': nothing of the flush was written'
  end
end

local function not_hll(key)
  local found = kind(key)
  if found == 'none' then return nil end
  if found ~= 'string' then return wrong(key, 'HyperLogLog') end
  local counted = redis.pcall('PFCOUNT', key)
  if type(counted) == 'table' and counted.err then
    return key .. ': ' .. counted.err .. ': nothing of the flush was written'
  end
end

-- Whether x sorts before y, byte by byte (as Python compares code points; the comparison
-- operators of Lua follow the server's locale).
local function less(x, y)
  for i = 1, math.min(#x, #y) do
    local p, q = string.byte(x, i), string.byte(y, i)
    if p ~= q then return p < q end
  end
  return #x < #y
end

-- Whether HINCRBY takes the text as a counter that a flush can add to without leaving the
-- 64-bit range: an integer in its canonical form, of at most 18 digits (a flush adds less
-- than 2**54, and 10**18 + 2**54 < 2**63), so no addition fails once the flush writes.
local function counter(text)
  if text == '0' then return true end
  local digits = string.match(text, '^%-?([1-9]%d*)$')
  return digits ~= nil and #digits <= 18
end

-- Checks and reads, before any write: nil when the flush may go on.
local function check(f)
  local why
  for _, scope in ipairs(f.e) do why = why or wrong(KEYS[scope[1]], 'set') end
  why = why or wrong(KEYS[f.s], 'hash')
  for _, index in ipairs(f.r) do why = why or wrong(KEYS[index], 'hash') end
  for _, scope in ipairs(f.d) do why = why or not_hll(KEYS[scope[1]]) end
  if why then return {'refused', why} end
  local names = {}
  for _, pair in ipairs(f.c) do names[#names + 1] = pair[1] end
  for _, scope in ipairs(f.e) do
    for _, group in ipairs(scope[3]) do names[#names + 1] = group[1] end
  end
  for start = 1, #names, 1000 do
    local last = math.min(start + 999, #names)
    local values = redis.call('HMGET', KEYS[f.s], unpack(names, start, last))
    for i = start, last do
      local value = values[i - start + 1]
      if value and not counter(value) then
        return {'refused', 'field ' .. names[i] .. ' of ' .. KEYS[f.s]
          .. ' is not a counter a flush can add to: nothing of the flush was written'}
      end
    end
  end
  local legacy = {}
  for i, scope in ipairs(f.e) do
    if redis.call('EXISTS', KEYS[scope[2]]) == 1 then legacy[#legacy + 1] = i end
  end
  if #legacy > 0 then return {'legacy', legacy} end
end

-- Steps 1 to 4 of the flush: events, counters, distinct units, earlier counters.
local function evidence(f, answer)
  local earlier = {}
  for i, index in ipairs(f.r) do earlier[i] = redis.call('HGETALL', KEYS[index]) end
  local added, order = {}, {}
  for _, scope in ipairs(f.e) do
    local seen = KEYS[scope[1]]
    for _, group in ipairs(scope[3]) do
      -- SADD answers how many of its members were new (a member repeated: once), which is
      -- what the group's counter takes; the groups go in order (a unit counts at its first).
      local name, units, new = group[1], group[2], 0
      for start = 1, #units, 1000 do
        began = true
        new = new + redis.call('SADD', seen, unpack(units, start, math.min(start + 999, #units)))
      end
      if new > 0 then
        if not added[name] then order[#order + 1] = name; added[name] = 0 end
        added[name] = added[name] + new
      end
    end
    redis.call('EXPIRE', seen, ttl)
  end
  local totals, names = {}, {}
  local function count(name, n)
    if not totals[name] then names[#names + 1] = name; totals[name] = 0 end
    totals[name] = totals[name] + n
  end
  for _, pair in ipairs(f.c) do count(pair[1], pair[2]) end
  local flat = {}
  for _, name in ipairs(order) do
    count(name, added[name])
    flat[#flat + 1] = name
    flat[#flat + 1] = added[name]
  end
  local key = KEYS[f.s]
  if #names > 0 then
    began = true
    for _, name in ipairs(names) do
      redis.call('HINCRBY', key, name, string.format('%.0f', totals[name]))
    end
    redis.call('EXPIRE', key, ttl)
  end
  answer[2] = redis.call('HGETALL', key)
  answer[3] = flat
  for i, scope in ipairs(f.d) do
    local units, members = KEYS[scope[1]], scope[2]
    for start = 1, #members, 1000 do
      began = true
      redis.call('PFADD', units, unpack(members, start, math.min(start + 999, #members)))
    end
    if #members > 0 then redis.call('EXPIRE', units, ttl) end
    answer[4][i] = redis.call('PFCOUNT', units)
  end
  answer[5] = earlier
end

-- Recent errors, merged as stores._codec.merge_errors merges them.

local ESCAPES = {[34] = '\\"', [92] = '\\\\', [8] = '\\b', [12] = '\\f', [10] = '\\n',
                 [13] = '\\r', [9] = '\\t'}

-- text (UTF-8, lone surrogates as Python's surrogatepass encodes them) as Python's json
-- writes it (ASCII: \u escapes), and its length in code points; nil for text that Python
-- would not decode.
local function quoted(text)
  local out, i, n, chars = {'"'}, 1, #text, 0
  while i <= n do
    local b, code, size, low = string.byte(text, i), 0, 1, 0
    if b < 0x80 then code = b
    elseif b >= 0xC2 and b <= 0xDF then code, size, low = b % 32, 2, 0x80
    elseif b >= 0xE0 and b <= 0xEF then code, size, low = b % 16, 3, 0x800
    elseif b >= 0xF0 and b <= 0xF4 then code, size, low = b % 8, 4, 0x10000
    else return nil end
    for j = i + 1, i + size - 1 do
      local c = string.byte(text, j)
      if not c or c < 0x80 or c > 0xBF then return nil end
      code = code * 64 + c % 64
    end
    if code < low or code > 0x10FFFF then return nil end
    if ESCAPES[code] then out[#out + 1] = ESCAPES[code]
    elseif code >= 0x20 and code < 0x7F then out[#out + 1] = string.char(code)
    elseif code < 0x10000 then out[#out + 1] = string.format('\\u%04x', code)
    else
      code = code - 0x10000
      out[#out + 1] = string.format('\\u%04x\\u%04x', 0xD800 + math.floor(code / 1024),
        0xDC00 + code % 1024)
    end
    i, chars = i + size, chars + 1
  end
  out[#out + 1] = '"'
  return table.concat(out), chars
end

-- An error with its quoted texts: its field in the hash (as _error_field writes it, which
-- merges it) and its JSON up to first_seen (as dump_error writes it); nil when unreadable.
local function entry(e)
  local arm, arms = quoted(e.a)
  local kind_, message = quoted(e.t), quoted(e.m)
  if not arm or arms < 1 or arms > 32 or not kind_ or not message then return nil end
  e.field = '[' .. arm .. ',' .. kind_ .. ',' .. message .. ']'
  e.head = '{"arm":' .. arm .. ',"type":' .. kind_ .. ',"message":' .. message .. ','
  return e
end

local function cut(text, cap)  -- the first cap code points of text, and whether it was cut
  if #text <= cap then return text, false end
  local n = 0
  for i = 1, #text do
    local b = string.byte(text, i)
    if b < 128 or b >= 192 then
      n = n + 1
      if n > cap then return string.sub(text, 1, i - 1), true end
    end
  end
  return text, false
end

local function finite(x)
  return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge
end

local function hex4(text, at)
  local hex = string.sub(text, at, at + 3)
  if string.match(hex, '^%x%x%x%x$') then return tonumber(hex, 16) end
end

-- Python escapes a lone surrogate (\udcff), which cjson refuses: each becomes its bytes as
-- Python's surrogatepass encodes them (a pair stays, for cjson).
local function lone_surrogates(text)
  local out, from, at = {}, 1, 1
  while true do
    local slash = string.find(text, '\\', at, true)
    if not slash then break end
    at = slash + 2
    if string.sub(text, slash + 1, slash + 1) == 'u' then
      local code = hex4(text, slash + 2)
      at = slash + 6
      if code and code >= 0xD800 and code <= 0xDFFF then
        local low = string.sub(text, slash + 6, slash + 7) == '\\u' and hex4(text, slash + 8)
        if code <= 0xDBFF and low and low >= 0xDC00 and low <= 0xDFFF then
          at = slash + 12
        else
          out[#out + 1] = string.sub(text, from, slash - 1)
          out[#out + 1] = string.char(0xE0 + math.floor(code / 4096),
            0x80 + math.floor(code / 64) % 64, 0x80 + code % 64)
          from = at
        end
      end
    end
  end
  out[#out + 1] = string.sub(text, from)
  return table.concat(out)
end

-- A stored error as stores._codec.load_error reads it, or nil (skipped, then dropped).
local function stored(text)
  local ok, e = pcall(cjson.decode, text)
  if not ok and string.find(text, '\\u[dD][89a-fA-F]') then
    ok, e = pcall(cjson.decode, lone_surrogates(text))
  end
  if not ok or type(e) ~= 'table' then return nil end
  local arm, kind_, message = e.arm, e.type, e.message
  local first, last, n = e.first_seen, e.last_seen, e.count
  if type(arm) ~= 'string' or type(kind_) ~= 'string' or type(message) ~= 'string' then
    return nil
  end
  if not finite(first) or not finite(last) then return nil end
  if type(n) ~= 'number' or n ~= math.floor(n) or n < 1 or n > MAX_COUNT then return nil end
  local type_cut, message_cut
  kind_, type_cut = cut(kind_, type_cap)
  message, message_cut = cut(message, message_cap)
  local raw = text  -- written back as it is, unless it changes
  if type_cut or message_cut then raw = nil end
  return entry({a = arm, t = kind_, m = message, f = first, l = last, c = n, raw = raw})
end

local function number(x)  -- the shortest text that reads back as x
  for digits = 15, 17 do
    local text = string.format('%.' .. digits .. 'g', x)
    if tonumber(text) == x then return text end
  end
  return string.format('%.17g', x)
end

local function encoded(e)
  if e.raw then return e.raw end
  return e.head .. '"first_seen":' .. (e.ft or number(e.f)) .. ',"last_seen":'
    .. (e.lt or number(e.l)) .. ',"count":' .. string.format('%.0f', e.c) .. '}'
end

local function merge(f)
  local key = KEYS[f.x]
  local entries, known = {}, {}
  local function add(e)
    if not e then return end  -- unreadable: dropped
    local old = known[e.field]
    if not old then
      known[e.field] = e
      entries[#entries + 1] = e
      return
    end
    if e.f < old.f then old.f, old.ft = e.f, e.ft end
    if e.l > old.l then old.l, old.lt = e.l, e.lt end
    old.c, old.raw = math.min(old.c + e.c, MAX_COUNT), nil
  end
  if kind(key) == 'hash' then  -- a key of another type is replaced
    local values = redis.call('HVALS', key)
    for _, text in ipairs(values) do add(stored(text)) end
  end
  for _, n in ipairs(f.n) do
    add(entry({a = n.a, t = n.t, m = n.m, f = tonumber(n.ft), l = tonumber(n.lt), c = n.c,
               ft = n.ft, lt = n.lt}))
  end
  table.sort(entries, function(x, y)
    if x.l ~= y.l then return x.l > y.l end
    if x.f ~= y.f then return x.f > y.f end
    if x.a ~= y.a then return less(x.a, y.a) end
    if x.t ~= y.t then return less(x.t, y.t) end
    return less(x.m, y.m)
  end)
  local fields = {}
  for i = 1, math.min(#entries, MAX_ERRORS) do
    fields[#fields + 1] = entries[i].field
    fields[#fields + 1] = encoded(entries[i])
  end
  began = true
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(fields))
  redis.call('EXPIRE', key, ttl)
end

local function flush(f)
  began = false
  if not f.s then
    local ok, why = pcall(merge, f)
    if ok then return {'ok', {}, {}, {}, {}, ''} end
    return {began and 'unsure' or 'refused', reason(why)}
  end
  local ok, refused = pcall(check, f)
  if not ok then return {'refused', reason(refused)} end
  if refused then return refused end
  local answer = {'ok', {}, {}, {}, {}, ''}
  local done, why = pcall(evidence, f, answer)
  if not done then return {began and 'unsure' or 'refused', reason(why)} end
  if f.x then
    done, why = pcall(merge, f)
    if not done then answer[6] = reason(why) end
  end
  return answer
end

local generation = KEYS[1]
local answers = {kind(generation), ''}
if answers[1] == 'string' then answers[2] = redis.call('GET', generation) end
for i, f in ipairs(data.f) do answers[i + 2] = flush(f) end
return answers
"""


def _planned(flush: Flush, key_of: Callable[[str, str], str]) -> tuple[dict[str, Any], list[str]]:
    """What ``_FLUSH`` is sent of ``flush``, and its keys (``key_of(rollout, kind)``).

    In the plan, each key is its place in the list of keys. Raises for a flush that
    cannot be sent (then nothing of it is): an error that ``dump_error`` refuses
    (``ValueError``), a count that is no integer, a name that is not UTF-8.
    """
    names: list[str] = []

    def key(kind: str) -> int:
        names.append(key_of(flush.rollout, kind))
        names[-1].encode()  # UnicodeEncodeError (a lone surrogate): this flush only
        return len(names) - 1

    plan: dict[str, Any] = {}
    if flush.segment is not None:
        counts = []
        for name, n in flush.counts.items():
            if type(n) is not int or not -MAX_COUNT <= n <= MAX_COUNT:
                raise ValueError(f"count {name!r} must be an integer, not {n!r}")
            counts.append([_field(name), n])
        events = []
        for scope, groups in flush.events:
            sets = [[_field(counter), _members(digests)] for counter, digests in groups
                    if digests]  # fmt: skip
            if sets:  # as add_units: nothing to add, no key read
                events.append([key("seen:" + scope), key("first:" + scope), sets])
        distinct = [[key("units:" + scope), _members(ids)] for scope, ids in flush.distinct]
        plan = {
            "s": key("counts:" + flush.segment),
            "c": counts,
            "e": events,
            "d": distinct,
            "r": [key("counts:" + segment) for segment in flush.earlier],
        }
    if flush.errors:
        plan["x"] = key("errors")
        plan["n"] = [_new_error(error) for error in flush.errors]
    return plan, names


def _reach(client: Any) -> None:
    """Take a connection of ``client`` (connected, or checked) and give it back.

    Raises when Redis cannot be reached, before anything is sent: ``flush_many`` then
    knows that no flush landed, where a failure of the script itself may follow writes.
    """
    pool = client.connection_pool
    try:
        connection = pool.get_connection()
    except TypeError:  # redis-py before 5.3 takes the command's name
        connection = pool.get_connection("EVALSHA")
    pool.release(connection)


def _members(digests: Sequence[str]) -> list[str]:
    """The members kept of ``digests``, as decimal text (Lua's numbers hold 53 bits)."""
    return [str(member(d)) for d in digests]


def _field(name: str) -> str:
    """``name`` as a hash field; ``TypeError`` or ``UnicodeEncodeError`` if Redis can't take it."""
    if not isinstance(name, str):
        raise TypeError(f"a counter's name must be text, not {type(name).__name__}")
    name.encode()
    return name


def _new_error(error: RecentError) -> dict[str, object]:
    """A recent error as ``_FLUSH`` merges it; ``ValueError`` when it is malformed.

    Its times as Python writes them, which the script writes as they are (Lua would write
    14 digits), and as they read.
    """
    checked = load_error(dump_error(error))  # its type and message cut to their caps
    return {
        "a": checked.arm,
        "t": checked.type,
        "m": checked.message,
        "ft": json.dumps(checked.first_seen),
        "lt": json.dumps(checked.last_seen),
        "c": checked.count,
    }


def _indexed(plan: dict[str, Any], keys: list[int]) -> dict[str, Any]:
    """``plan`` with each key, its place in the flush's own list, as its index in KEYS."""
    if "s" in plan:
        plan["s"] = keys[plan["s"]]
        for scope in plan["e"]:
            scope[0], scope[1] = keys[scope[0]], keys[scope[1]]
        for scope in plan["d"]:
            scope[0] = keys[scope[0]]
        plan["r"] = [keys[index] for index in plan["r"]]
    if "x" in plan:
        plan["x"] = keys[plan["x"]]
    return plan


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    """A flat list of fields and values (as ``HGETALL`` answers in a script) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
