-- logbroker: write one batch of entries of one job, atomically (docs/design.md §3).
--
-- KEYS: 1 stream, 2 meta hash, 3 partition job index (sorted set), 4 seqs hash (per src whose
--       stored seqs are not 1..last: their ranges); all share one hash tag, as does each src's
--       fingerprint string ``<KEYS[4]>:<src>``, named from KEYS[4] (one slot: cluster-safe).
-- ARGV: 1 job id, 2 MAXLEN (0 = unbounded), 3 idle TTL s (0 = none), 4 TTL s after the end,
--       5 job name ('' = keep), 6 job type ('' = keep),
--       7 msgpack array of control tuples {step, worker, src, seq, kind, status, body, fingerprint
--         [, masked]} ('' = not set; seq 0 = no idempotency; kind 0 log, 1 status, 2 end;
--         fingerprint: 4 bytes, the body's CRC-32 without its time; masked: how many secrets the
--         writer masked in the entry, only when some were, summed into the meta field 'masked').
-- Returns {duplicates, {id, ...}, refused, {position, reason, ...}} with the ids of the entries
-- stored by this call, in order, how many entries were refused because the job had ended before
-- them, and the batch positions (1-based) of the entries refused as seq conflicts with why
-- (1: that seq is stored with other content; 2: the src's stored seqs are too fragmented).
--
-- Idempotency: per src the stored seqs are kept as ranges, so a seq is a duplicate only if it was
-- stored: lower seqs never stored (a request of seqs 1..1000 after one of 1001..2000) are stored.
-- A stored seq sent again with the same fingerprint (a retried batch) is a duplicate; with another
-- fingerprint it is a conflict, refused and reported (two live publishers on one src, or a writer
-- reusing seqs): never silently called a duplicate. Fingerprints are kept for the newest WINDOW
-- seqs of each src; an older stored seq is taken as a duplicate. Lines: one counter per step (and
-- one for the job level), so per-step lines are 1..N whatever the number of writers. Counters are
-- kept in Lua locals and written once per batch, except before an end entry, whose totals must be
-- exact. Ended: once a job's end entry is stored, no entry is stored after it (a duplicate is still
-- a duplicate): its stream and totals are final, and a second end cannot change its status.

local stream, meta, index, seqs_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job = ARGV[1]
local maxlen = tonumber(ARGV[2])
local idle_ttl = tonumber(ARGV[3])
local ended_ttl = tonumber(ARGV[4])
local batch = cmsgpack.unpack(ARGV[7])
local SEP = '\031'
local WINDOW = 1024        -- fingerprints kept per src (docs/design.md §3)
local MAX_RANGES = 4096    -- stored-seq ranges kept per src; past that, a new hole is refused
local NO_PRINT = '\0\0\0\0'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local counters = {}   -- meta field -> number (loaded lazily, written at flush)
local dirty = {}      -- meta fields whose counter changed
local sets = {}       -- meta field -> string, last write wins
local firsts = {}     -- meta field -> string, written only if absent
local ended = false   -- an end entry stored by this call
local ended_srcs = {}  -- then: every src of the job (its totals' publishers)
local closed = redis.call('HEXISTS', meta, 'end_id') == 1   -- the job has an end entry

local function counter(field)
  local v = counters[field]
  if v == nil then
    v = tonumber(redis.call('HGET', meta, field)) or 0
    counters[field] = v
  end
  return v
end

local function set_counter(field, value)
  counters[field] = value
  dirty[field] = true
end

local function add(field, delta)
  set_counter(field, counter(field) + delta)
end

local function flush()
  -- HSET in chunks: Lua's unpack() has a stack limit of a few thousand values
  local args = {}
  local function put(field, value)
    args[#args + 1] = field
    args[#args + 1] = value
    if #args >= 1000 then
      redis.call('HSET', meta, unpack(args))
      args = {}
    end
  end
  for field in pairs(dirty) do put(field, counters[field]) end
  for field, value in pairs(sets) do put(field, value) end
  if #args > 0 then
    redis.call('HSET', meta, unpack(args))
  end
  for field, value in pairs(firsts) do
    redis.call('HSETNX', meta, field, value)
  end
  dirty, sets, firsts = {}, {}, {}
end

-- Totals as they stand before an end entry: per step, per worker (by step), per publisher.
local function totals()
  local all = redis.call('HGETALL', meta)
  local steps, workers, pubs = {}, {}, {}
  local out = {entries = 0, job = 0, steps = steps, workers = workers, publishers = pubs}
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    if f == 'n' then
      out.entries = v
    elseif f == 'jn' then
      out.job = v
    else
      local a, b = string.find(f, SEP, 1, true)
      if a then
        local tag, rest = string.sub(f, 1, a - 1), string.sub(f, b + 1)
        local c = string.find(rest, SEP, 1, true)
        local name, tail = string.sub(rest, 1, c - 1), string.sub(rest, c + 1)
        if tag == 's' and tail == 'n' then
          steps[name] = v
        elseif tag == 'w' then
          local d = string.find(tail, SEP, 1, true)
          if d and string.sub(tail, d + 1) == 'n' then
            workers[name] = workers[name] or {}
            workers[name][string.sub(tail, 1, d - 1)] = v
          end
        elseif tag == 'p' then
          pubs[name] = pubs[name] or {entries = 0, last_seq = 0}
          if tail == 'n' then pubs[name].entries = v else pubs[name].last_seq = v end
        end
      end
    end
  end
  return out
end

-- What entries change in the meta hash is kept per writer in Lua locals while the batch runs and
-- folded into the counters (``fold``) before an end entry, whose totals must be exact, and once at
-- the end: per entry only plain fields of a few small tables change, no counter is looked up by
-- name and no field name is built (that was ~40% of the script's time). A batch has few writers:
-- a src (its last seq, its entry count), a step (its line counter, first and last id), a worker of
-- a step (its entry count), and a (src, step, worker) group pointing at the three. Every entry
-- count (the job's, each src's, each worker's) is a tally: a meta field and what to add to it.
local srcs, steps, workers, groups = {}, {}, {}, {}
local tallies, src_list, step_list = {}, {}, {}
local first_id, last_id = nil, nil

local function tally(field)
  local t = {n_f = field, cnt = 0}
  tallies[#tallies + 1] = t
  return t
end
local job_tally = tally('n')
local masked_tally = tally('masked')  -- secrets masked in the stored entries (not in duplicates)

local function src_of(src)
  local s = srcs[src]
  if s == nil then
    local p = 'p' .. SEP .. src .. SEP
    s = tally(p .. 'n')
    s.seq_f, s.moved, s.name = p .. 'seq', false, src
    s.seq = counter(s.seq_f)  -- the highest seq stored
    srcs[src] = s
    src_list[#src_list + 1] = s
  end
  return s
end

-- A src's stored seqs. ``ranges`` {lo1, hi1, lo2, hi2, ...} ascending: a field of the seqs hash
-- only when they are not simply 1..last (a publisher's are), so the common case reads nothing.
-- Fingerprints: a string key per src (``<seqs key>:<src>``, the job's hash tag) holding those of
-- the seqs last-n+1 .. last, 4 bytes each (NO_PRINT in a hole), appended once per batch and read
-- 4 bytes at a time: a batch never copies the window (4 KiB string operations cost more than
-- the entry itself). ``pending`` holds this batch's fingerprints not yet appended; once they are,
-- the string ends at the highest seq stored.
local function load_seqs(s)
  local raw = redis.call('HGET', seqs_key, s.name)
  if raw then
    s.ranges = cmsgpack.unpack(raw)
  elseif s.seq > 0 then
    s.ranges = {1, s.seq}  -- 1..last (also what a job written before seqs were tracked means)
  else
    s.ranges = {}
  end
  s.had_ranges, s.prints_key, s.pending, s.plen, s.changed = raw ~= nil, seqs_key .. ':' .. s.name, {}, nil, false
end

-- append what is pending; keep the string near WINDOW fingerprints (trimmed once it doubles)
local function materialize(s)
  if #s.pending > 0 then
    s.plen = redis.call('APPEND', s.prints_key, table.concat(s.pending))
    s.pending = {}
    if s.plen > 2 * WINDOW * 4 then
      local keep = redis.call('GETRANGE', s.prints_key, s.plen - WINDOW * 4, -1)
      redis.call('SET', s.prints_key, keep)
      s.plen = #keep
    end
  elseif s.plen == nil then
    s.plen = redis.call('STRLEN', s.prints_key)
  end
end

-- the 0-based offset of seq's fingerprint (nil when older than the newest WINDOW seqs; the
-- string may keep up to twice as many, to be trimmed rarely)
local function print_at(s, seq)
  if seq <= s.seq - WINDOW then return nil end
  materialize(s)
  local at = s.plen - (s.seq - seq + 1) * 4
  if at >= 0 then return at end
  return nil
end

-- the range number holding seq, or nil and the number of the range it would go before
local function range_of(r, seq)
  local lo, hi = 1, #r / 2
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    if seq < r[2 * mid - 1] then
      hi = mid - 1
    elseif seq > r[2 * mid] then
      lo = mid + 1
    else
      return mid, nil
    end
  end
  return nil, lo
end

-- 0: a new seq, 1: a duplicate, 2: stored with other content, 3: would need a range past MAX_RANGES
local function classify(s, seq, print)
  if s.ranges == nil then load_seqs(s) end
  local r = s.ranges
  local m = #r / 2
  if seq > s.seq then
    if m > 0 and r[2 * m] == seq - 1 then return 0 end
    if m >= MAX_RANGES then return 3 end
    return 0
  end
  local k, before = range_of(r, seq)
  if k then
    local at = print_at(s, seq)
    if at then
      local stored = redis.call('GETRANGE', s.prints_key, at, at + 3)
      if stored ~= NO_PRINT and stored ~= print then return 2 end
    end
    return 1
  end
  local joins = (before > 1 and r[2 * before - 2] == seq - 1) or (before <= m and r[2 * before - 1] == seq + 1)
  if not joins and m >= MAX_RANGES then return 3 end
  return 0
end

-- seq (classified 0) is now stored
local function record(s, seq, print)
  local r = s.ranges
  local n = #r
  s.changed = true
  if seq == s.seq + 1 and n > 0 and r[n] == s.seq then  -- the next seq: what publishers send
    r[n] = seq
    local pending = s.pending
    pending[#pending + 1] = print
    s.seq = seq
    if #pending > WINDOW then materialize(s) end
    return
  end
  local m = n / 2
  if seq > s.seq then
    if m > 0 and r[2 * m] == seq - 1 then
      r[2 * m] = seq
    else
      r[2 * m + 1], r[2 * m + 2] = seq, seq
    end
    local hole = seq - s.seq - 1
    if hole >= WINDOW then
      -- nothing kept is within the window any more: it starts over, the seqs before it holes
      s.pending = {}
      redis.call('SET', s.prints_key, string.rep(NO_PRINT, WINDOW - 1) .. print)
      s.plen = WINDOW * 4
    else
      local pending = s.pending
      if hole > 0 then pending[#pending + 1] = string.rep(NO_PRINT, hole) end
      pending[#pending + 1] = print
      if #pending > WINDOW then s.seq = seq; materialize(s) end
    end
    s.seq = seq
    return
  end
  local _, k = range_of(r, seq)
  local left = k > 1 and r[2 * k - 2] == seq - 1
  local right = k <= m and r[2 * k - 1] == seq + 1
  if left and right then
    r[2 * k - 2] = r[2 * k]
    table.remove(r, 2 * k)
    table.remove(r, 2 * k - 1)
  elseif left then
    r[2 * k - 2] = seq
  elseif right then
    r[2 * k - 1] = seq
  else
    table.insert(r, 2 * k - 1, seq)
    table.insert(r, 2 * k - 1, seq)
  end
  local at = print_at(s, seq)
  if at then redis.call('SETRANGE', s.prints_key, at, print) end
end

-- once per batch: pending fingerprints appended, ranges saved unless they are 1..last
local prints_keys = {}
local function save_seqs()
  for _, s in ipairs(src_list) do
    if s.changed then
      materialize(s)
      prints_keys[#prints_keys + 1] = s.prints_key
      local r = s.ranges
      if #r == 2 and r[1] == 1 and r[2] == s.seq then
        if s.had_ranges then redis.call('HDEL', seqs_key, s.name) end
      else
        redis.call('HSET', seqs_key, s.name, cmsgpack.pack(r))
      end
    end
  end
end

local function step_of(step)
  local st = steps[step]
  if st == nil then
    if step == '' then
      st = {line_f = 'jn'}
    else
      local p = 's' .. SEP .. step .. SEP
      st = {line_f = p .. 'n', first_f = p .. 'first', last_f = p .. 'last', status_f = p .. 'status'}
    end
    st.line = counter(st.line_f)
    st.moved = false
    steps[step] = st
    step_list[#step_list + 1] = st
  end
  return st
end

local function worker_of(step, worker)
  local key = step .. SEP .. worker
  local w = workers[key]
  if w == nil then
    local p = 'w' .. SEP .. key .. SEP
    w = tally(p .. 'n')
    w.status_f = p .. 'status'
    workers[key] = w
  end
  return w
end

local function group_of(src, step, worker)
  local by_step = groups[src]
  if by_step == nil then
    by_step = {}
    groups[src] = by_step
  end
  local by_worker = by_step[step]
  if by_worker == nil then
    by_worker = {}
    by_step[step] = by_worker
  end
  local g = by_worker[worker]
  if g == nil then
    g = {st = step_of(step)}
    if src ~= '' then g.src = src_of(src) end
    if worker ~= '' then g.w = worker_of(step, worker) end
    by_worker[worker] = g
  end
  return g
end

local function fold()
  for _, t in ipairs(tallies) do
    if t.cnt > 0 then
      add(t.n_f, t.cnt)
      t.cnt = 0
    end
  end
  for _, s in ipairs(src_list) do
    if s.moved then
      set_counter(s.seq_f, s.seq)
      s.moved = false
    end
  end
  for _, st in ipairs(step_list) do
    if st.moved then
      set_counter(st.line_f, st.line)
      if st.first_f then
        firsts[st.first_f] = st.first  -- a flush follows every fold: firsts are still empty
        sets[st.last_f] = st.last
      end
      st.first, st.moved = nil, false
    end
  end
  if first_id then
    firsts['first_id'] = first_id
    sets['last_id'] = last_id
    first_id = nil
  end
end

local ids = {}
local stored = 0
local dups = 0
local refused = 0
local conflicts = {}
for pos, e in ipairs(batch) do
  local seq, kind = e[4], e[5]
  local g = group_of(e[3], e[1], e[2])
  local s = g.src
  local verdict = 0
  if s and seq > 0 then
    if s.ranges == nil then load_seqs(s) end
    local r = s.ranges
    if seq ~= s.seq + 1 or r[#r] ~= s.seq then verdict = classify(s, seq, e[8]) end  -- else new
  end
  if verdict == 1 then
    dups = dups + 1
  elseif verdict > 1 then
    conflicts[#conflicts + 1] = pos
    conflicts[#conflicts + 1] = verdict - 1
  elseif closed then
    refused = refused + 1
  else
    local st = g.st
    local line = st.line + 1
    local id
    if kind == 2 then
      -- the end entry's own counts are not part of its totals
      fold()
      flush()
      local job_totals = totals()
      ended_srcs = job_totals.publishers  -- every src of the job: their fingerprints end with it
      id = redis.call('XADD', stream, '*', 'l', line, 'b', e[7], 't', cmsgpack.pack(job_totals))
      ended, closed = true, true
      sets['status'] = e[6]
      sets['ended_ms'] = now
      sets['end_id'] = id
    else
      id = redis.call('XADD', stream, '*', 'l', line, 'b', e[7])
    end
    st.line, st.last, st.moved = line, id, true
    if st.first == nil then st.first = id end
    job_tally.cnt = job_tally.cnt + 1
    if e[9] then masked_tally.cnt = masked_tally.cnt + e[9] end
    if s then
      s.cnt = s.cnt + 1
      if seq > 0 then
        record(s, seq, e[8])
        s.moved = true
      end
    end
    local w = g.w
    if w then w.cnt = w.cnt + 1 end
    if kind == 1 then
      sets[w and w.status_f or st.status_f or 'status'] = e[6]
    end
    if first_id == nil then first_id = id end
    last_id = id
    stored = stored + 1
    ids[stored] = id
  end
end
fold()

if #ids == 0 then
  return {dups, ids, refused, conflicts}
end
save_seqs()
if maxlen > 0 then
  -- once per batch: trimming on every XADD costs more than the append itself
  redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
end

sets['updated_ms'] = now
firsts['created_ms'] = now
if ARGV[5] ~= '' then sets['name'] = ARGV[5] end
if ARGV[6] ~= '' then sets['type'] = ARGV[6] end
flush()

local ttl = idle_ttl
if ended or redis.call('HEXISTS', meta, 'ended_ms') == 1 then
  ttl = ended_ttl
end
if ttl > 0 then
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, ttl)
  redis.call('EXPIRE', seqs_key, ttl)
  for _, key in ipairs(prints_keys) do redis.call('EXPIRE', key, ttl) end
  for name in pairs(ended_srcs) do redis.call('EXPIRE', seqs_key .. ':' .. name, ttl) end
end
redis.call('ZADD', index, now, job)
if idle_ttl > 0 then
  -- index cleanup: a job idle for longer than the idle TTL has expired with it
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (now - idle_ttl * 1000))
end
return {dups, ids, refused, conflicts}
