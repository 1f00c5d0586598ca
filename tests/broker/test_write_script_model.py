"""The write script against a model of docs/design.md §3, on random batches (Hypothesis, real Redis).

The script keeps its counters in Lua locals and folds them into the meta hash once per batch and
before an end entry; this checks every field it maintains, the stream's line numbers and an end
entry's totals against a plain Python reading of the rules: per-step lines 1..N (job-level lines
have their own counter), counts per job, step, worker and src, first/last ids per step and job,
the last status per job, step and worker, and idempotency by (src, seq) across retried batches.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import pack_control, unpack_totals
from broker.keys import Keyspace
from broker.script import WRITE_BATCH_SHA, Retention, write_args
from tests.support.helpers import script_server
from tests.support.servers import ServerKind

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)

SEP = "\x1f"
KIND_LOG, KIND_STATUS, KIND_END = 0, 1, 2
NO_RETENTION = Retention(0, 0, 0)
_jobs = itertools.count()


@dataclass(frozen=True)
class Line:
    src: str
    step: str
    worker: str
    seq: int  # 0: no idempotency (src '')
    kind: int
    status: str


@st.composite
def lines(draw: st.DrawFn) -> list[Line]:
    """Lines of a few writers in publish order, each src numbering its own lines 1, 2, ...; at
    most one end entry (job level, as ``job.end()`` writes it), anywhere."""
    specs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["", "a", "b"]),
                st.sampled_from(["", "s1", "s2"]),
                st.sampled_from(["", "w1", "w2"]),
                st.sampled_from([KIND_LOG, KIND_LOG, KIND_LOG, KIND_STATUS]),
                st.sampled_from(["running", "failed", "done"]),
            ),
            min_size=1,
            max_size=40,
        )
    )
    end_at = draw(st.none() | st.integers(0, len(specs)))
    out: list[Line] = []
    seqs: Counter[str] = Counter()

    def numbered(src: str) -> int:
        if not src:
            return 0
        seqs[src] += 1
        return seqs[src]

    for i, (src, step, worker, kind, status) in enumerate(specs):
        if i == end_at:
            out.append(Line(src, "", "", numbered(src), KIND_END, "completed"))
        out.append(Line(src, step, worker, numbered(src), kind, status))
    if end_at == len(specs):
        out.append(Line("a", "", "", numbered("a"), KIND_END, "completed"))
    return out


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Line], list[list[Line]]]:
    """The lines, cut into batches in order, some of them sent again (a retry after a lost reply)."""
    run = draw(lines())
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(run) - 1)), max_size=6)))
    batches = [run[a:b] for a, b in itertools.pairwise([0, *cuts, len(run)]) if run[a:b]]
    sent: list[list[Line]] = []
    for batch in batches:
        sent.append(batch)
        if draw(st.booleans()) and draw(st.booleans()):
            sent.append(batch[: draw(st.integers(1, len(batch)))])  # a retry of (part of) it
    return run, sent


@dataclass
class Model:
    """The meta hash and stream the rules of docs/design.md §3 give, built entry by entry."""

    meta: dict[str, Any] = field(default_factory=dict)
    stored: list[Line] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    totals_at_ends: list[dict[str, Any]] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    ended: bool = False
    refused: int = 0

    def apply(self, line: Line) -> None:
        if line.src and line.seq <= self.last_seq.get(line.src, 0):
            return  # a duplicate: already stored
        if self.ended:
            self.refused += 1  # after the end entry nothing is stored
            return
        m = self.meta
        line_field = f"s{SEP}{line.step}{SEP}n" if line.step else "jn"
        number = m.get(line_field, 0) + 1
        if line.kind == KIND_END:
            self.totals_at_ends.append(self.totals())
            m["status"] = line.status
            self.ended = True
        m[line_field] = number
        m["n"] = m.get("n", 0) + 1
        if line.src:
            self.last_seq[line.src] = line.seq
            m[f"p{SEP}{line.src}{SEP}n"] = m.get(f"p{SEP}{line.src}{SEP}n", 0) + 1
            m[f"p{SEP}{line.src}{SEP}seq"] = line.seq
        if line.worker:
            key = f"w{SEP}{line.step}{SEP}{line.worker}{SEP}n"
            m[key] = m.get(key, 0) + 1
        if line.kind == KIND_STATUS:
            if line.worker:
                m[f"w{SEP}{line.step}{SEP}{line.worker}{SEP}status"] = line.status
            elif line.step:
                m[f"s{SEP}{line.step}{SEP}status"] = line.status
            else:
                m["status"] = line.status
        self.stored.append(line)
        self.line_numbers.append(number)

    def totals(self) -> dict[str, Any]:
        """What the end entry carries: the counts as they stand before it."""
        steps: dict[str, int] = {}
        workers: dict[str, dict[str, int]] = defaultdict(dict)
        pubs: dict[str, dict[str, int]] = defaultdict(lambda: {"entries": 0, "last_seq": 0})
        for f, v in self.meta.items():
            parts = f.split(SEP)
            if parts[0] == "s" and parts[2] == "n":
                steps[parts[1]] = v
            elif parts[0] == "w" and parts[3] == "n":
                workers[parts[1]][parts[2]] = v
            elif parts[0] == "p":
                pubs[parts[1]]["entries" if parts[2] == "n" else "last_seq"] = v
        return {
            "entries": self.meta.get("n", 0),
            "job": self.meta.get("jn", 0),
            "steps": steps,
            "workers": dict(workers),
            "publishers": dict(pubs),
        }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, server_kind: ServerKind) -> Iterator[redis.Redis]:
    with script_server(tmp_path_factory.mktemp("script-model"), server_kind.binary) as c:
        yield c


def write(client: redis.Redis, job: str, batch: list[Line]) -> tuple[int, int]:
    """(lines neither stored, duplicate nor refused: must be 0, refused ones)."""
    items = [pack_control(x.step, x.worker, x.src, x.seq, x.kind, x.status, b"body") for x in batch]
    args = write_args(job, Keyspace().job_keys(job), items, NO_RETENTION, None, None)
    dups, ids, refused, conflicts = client.evalsha(WRITE_BATCH_SHA, *args)  # type: ignore[misc]
    assert conflicts == []  # every retry resends the same bodies
    return len(batch) - int(dups) - len(ids) - int(refused), int(refused)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries())
def test_the_script_keeps_what_the_rules_say(
    client: redis.Redis, case: tuple[list[Line], list[list[Line]]]
) -> None:
    run, sent = case
    job = f"model-{next(_jobs)}"
    stream, meta_key = Keyspace().job_keys(job)[:2]
    model = Model()
    for batch in sent:
        unaccounted, refused = write(client, job, batch)
        before = model.refused
        for line in batch:
            model.apply(line)
        assert (unaccounted, refused) == (0, model.refused - before)
    # a src's lines are stored once however often they are sent; lines without one (seq 0) are not
    # idempotent by design, so a retry stores them again (the model does the same); nothing is
    # stored after the end entry
    until_end = run[: next((i + 1 for i, x in enumerate(run) if x.kind == KIND_END), len(run))]
    assert [x for x in model.stored if x.src] == [x for x in until_end if x.src]

    entries = client.xrange(stream)
    assert [int(f[b"l"]) for _, f in entries] == model.line_numbers
    ids = [i.decode() for i, _ in entries]
    meta = {k.decode(): v.decode() for k, v in client.hgetall(meta_key).items()}
    expected = {k: str(v) for k, v in model.meta.items()}
    expected["first_id"], expected["last_id"] = ids[0], ids[-1]
    for step in {x.step for x in model.stored if x.step}:
        of_step = [i for i, x in zip(ids, model.stored, strict=True) if x.step == step]
        expected[f"s{SEP}{step}{SEP}first"], expected[f"s{SEP}{step}{SEP}last"] = of_step[0], of_step[-1]
    ends = [i for i, x in zip(ids, model.stored, strict=True) if x.kind == KIND_END]
    assert len(ends) <= 1, "a job ends once"
    if ends:
        expected["end_id"] = ends[0]
    timestamps = {"created_ms", "updated_ms", "ended_ms"}
    assert {k: v for k, v in meta.items() if k not in timestamps} == expected
    assert ("ended_ms" in meta) == bool(ends)

    with_totals = [unpack_totals(f[b"t"]) for _, f in entries if b"t" in f]
    assert with_totals == model.totals_at_ends
