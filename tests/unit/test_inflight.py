"""One rehearsal of a transaction at a time: the second waits for the first
and knows it did (store/inflight), across real processes and real flocks."""

from __future__ import annotations

import os
import time
from pathlib import Path

from apt_rehearse.store import inflight


def test_a_second_claim_waits_for_the_first_and_knows_whose_it_was(tmp_path: Path) -> None:
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child holds the lock for a while
        with inflight.claim(str(tmp_path), "abc", "the prepare service"):
            os.write(ready_w, b"x")
            time.sleep(0.8)
        os._exit(0)
    os.read(ready_r, 1)
    assert inflight.holder_of(str(tmp_path), "abc")["who"] == "the prepare service"
    told, held_by = [], []
    began = time.monotonic()
    with inflight.claim(
        str(tmp_path),
        "abc",
        "the apt hook",
        on_wait=lambda holder, s: told.append(holder),
        on_held=lambda pid, fd: held_by.append(pid),
    ) as held:
        assert held.waited and held.holder["pid"] == child
        assert time.monotonic() - began > 0.3
    os.waitpid(child, 0)
    assert told and told[0]["who"] == "the prepare service"
    # Once, before the wait: the holder is in this pid namespace (sandbox/priority may lift it).
    assert held_by == [child] and told[0]["pidns"] == inflight.pid_namespace() != 0
    assert inflight.holder_of(str(tmp_path), "abc") is None
    with inflight.claim(str(tmp_path), "abc", "again") as held:
        assert not held.waited


def test_a_lock_goes_with_its_process_however_it_ends(tmp_path: Path) -> None:
    child = os.fork()
    if child == 0:  # pragma: no cover
        with inflight.claim(str(tmp_path), "abc", "killed"):
            os.kill(os.getpid(), 9)
    os.waitpid(child, 0)
    assert inflight.holder_of(str(tmp_path), "abc") is None
    old = time.time() - 2 * 86400
    os.utime(tmp_path / "inflight" / "abc", (old, old))
    assert inflight.tidy(str(tmp_path)) == 1 and not (tmp_path / "inflight" / "abc").exists()


def test_who_waits_sees_where_the_rehearsal_is(tmp_path: Path) -> None:
    from apt_rehearse.fronts.progress import Progress, Relayed

    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child rehearses, slowly
        with inflight.claim(str(tmp_path), "abc", "apt-rehearse upgrade") as held:
            progress = Relayed(Progress(), held.tell)
            progress.update(44.4, "Configuring libzstd1 (amd64)")
            os.write(ready_w, b"x")
            time.sleep(1.5)
        os._exit(0)
    os.read(ready_r, 1)
    seen = []
    with inflight.claim(str(tmp_path), "abc", "the apt hook", on_wait=lambda holder, s: seen.append(holder)):
        pass
    os.waitpid(child, 0)
    assert any(h.get("now") == "[ 44%] Configuring libzstd1 (amd64)" for h in seen), seen
    assert seen[0]["who"] == "apt-rehearse upgrade"
