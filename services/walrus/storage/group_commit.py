"""Group commit: the metadata transactions that queue up while one batch commits are committed together, each inside
its own savepoint so that one failing rolls back only itself, and a transaction is acknowledged once a sync of the
log that began after its commit has finished. Syncs are shared: one covers every batch committed before it began,
and while it runs the next batches commit (see database.py), so one fdatasync serves many writers.

Two runners of that promise: `LocalGroupCommit` for the embedded SQLite database, driven by its own two threads
(the event loop woken once per sync), and `GroupCommit` for any `MetadataDb` (the shared PostgreSQL metadata,
whose statements run on the event loop), driven from the event loop."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from services.walrus.storage.database import MetadataDb

T = TypeVar("T")
Transaction = Callable[[sqlite3.Connection], Any]
TX_BATCH = 256  # transactions committed together at most


def _run_batch(conn: sqlite3.Connection, batch: list[Transaction]) -> list[tuple[bool, Any]]:
    """On the database thread: every transaction of the batch, then one commit. (ok, result or exception) each."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[bool, Any]] = []
    try:
        for fn in batch:
            conn.execute("SAVEPOINT one")
            try:
                outcomes.append((True, fn(conn)))
            except Exception as err:
                conn.execute("ROLLBACK TO one")
                outcomes.append((False, err))
            conn.execute("RELEASE one")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _run_batch_at_once(conn: sqlite3.Connection, batch: list[Transaction]) -> list[tuple[bool, Any]] | None:
    """On the database thread: the whole batch as one transaction without a savepoint around each (two statements
    fewer per transaction: a 4 KiB PUT's are five, not seven); None when one of them failed, everything rolled back
    (the caller runs the batch again with `_run_batch`, each in its savepoint). A transaction reads and writes the
    database only, so running it again is the same as running it once."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[bool, Any]] = []
    try:
        for run in _runs(batch):
            together = getattr(run[0], "together", None)
            results = together(conn, run) if together is not None and len(run) > 1 else None
            if results is None:
                results = [fn(conn) for fn in run]
            outcomes += [(True, result) for result in results]
        conn.execute("COMMIT")
    except Exception as err:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if len(batch) == 1:  # nothing else to keep: the one transaction failed
            return [(False, err)]
        return None
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _runs(batch: list[Transaction]) -> list[list[Transaction]]:
    """The batch cut into runs of consecutive transactions that offer the same `together`: a function that commits
    a run of them at once (the results, as each alone would give them) or declines (None) having written nothing,
    when the run is not one it can (add_version.py). Every other transaction is a run of its own."""
    runs: list[list[Transaction]] = []
    previous = None
    for fn in batch:
        together = getattr(fn, "together", None)
        if together is not None and together is previous:
            runs[-1].append(fn)
        else:
            runs.append([fn])
        previous = together
    return runs


class GroupCommit:
    def __init__(self, db: MetadataDb):
        self.db = db
        self._queue: list[tuple[Transaction, asyncio.Future[Any]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference
        self._committed = 0  # batches committed so far
        self._synced = 0  # of those, on disk
        self._sync: asyncio.Task[None] | None = None  # the sync under way
        self._settling: set[asyncio.Task[None]] = set()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` as one transaction on the database thread, where a whole transaction runs in one go (statements
        of concurrent tasks never interleave), and return its result once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._batches())
        return await future

    async def _batches(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:TX_BATCH], self._queue[TX_BATCH:]
                functions = [fn for fn, _ in batch]
                try:
                    outcomes = await self.db.run(functools.partial(_run_batch, batch=functions))
                except Exception as err:  # the commit itself failed: every transaction of the batch did
                    outcomes = [(False, err)] * len(batch)
                self._committed += 1
                settle = asyncio.get_running_loop().create_task(self._settle(batch, outcomes, self._committed))
                self._settling.add(settle)
                settle.add_done_callback(self._settling.discard)
        finally:
            self._running = False

    async def _settle(
        self, batch: list[tuple[Transaction, asyncio.Future[Any]]], outcomes: list[tuple[bool, Any]], number: int
    ) -> None:
        """Answer a committed batch's writers once it is on disk."""
        try:
            await self._durable(number)
        except Exception as err:  # the disk failed: committed, but nobody may count on it
            outcomes = [(False, err)] * len(batch)
        _settle([(batch, outcomes)])

    async def _durable(self, number: int) -> None:
        """Wait until batch `number` is on disk, starting a sync (that covers every batch committed by then) when
        none under way covers it."""
        while self._synced < number:
            if self._sync is None or self._sync.done():
                self._sync = asyncio.get_running_loop().create_task(self._sync_up_to(self._committed))
            await asyncio.shield(self._sync)

    async def _sync_up_to(self, number: int) -> None:
        await self.db.sync()
        self._synced = max(self._synced, number)


Batch = list[tuple[Transaction, "asyncio.Future[Any]"]]
Outcomes = list[tuple[bool, Any]]


class LocalGroupCommit:
    """The group commit of the embedded database (database.py), with the same promise as GroupCommit's, run by its
    two threads themselves: the database thread takes batch after batch from the queue until it is empty and hands
    each committed batch to the sync thread, which syncs everything handed to it so far in one fdatasync and then
    answers all those writers in one call on the event loop. Per sync the event loop is woken once; GroupCommit
    woke it for every batch commit and again for every sync, with tasks and futures around each (about a tenth of
    the event loop's work in a 4 KiB PUT)."""

    def __init__(self, db: MetadataDb, sync: bool = True):
        self.db = db
        # False: a commit is answered once SQLite has written it to the log, in the kernel's cache (it survives a
        # crash of Walrus, kill -9 included, but not a power cut or a crash of the machine); no fdatasync
        self.sync = sync
        self._lock = threading.Lock()  # guards what both threads and the loop share (the fields below)
        self._queue: Batch = []
        self._draining = False  # the database thread has a drain job
        self._unsynced: list[tuple[Batch, Outcomes]] = []
        self._syncing = False  # the sync thread has a sync job
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` as one transaction on the database thread (no other statements interleave); its result once it is
        committed and on disk."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._queue.append((fn, future))
            start = not self._draining
            self._draining = True
        if start:  # at the end of this turn of the loop: the writers that get here meanwhile share one hand-over
            loop.call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        try:
            self.db.call(self._drain)
        except Exception as err:  # the database is closed: nothing queued will run
            with self._lock:
                batch, self._queue, self._draining = self._queue, [], False
            _settle([(batch, [(False, err)] * len(batch))])

    # --- on the database thread ---
    def _drain(self, conn: sqlite3.Connection) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                batch, self._queue = self._queue[:TX_BATCH], self._queue[TX_BATCH:]
            functions = [fn for fn, _ in batch]
            try:
                found = _run_batch_at_once(conn, functions)
                outcomes = found if found is not None else _run_batch(conn, functions)
            except Exception as err:  # the commit itself failed: every transaction of the batch did
                self._answer([(batch, [(False, err)] * len(batch))])
                continue
            if not self.sync:
                self._answer([(batch, outcomes)])
                continue
            with self._lock:
                self._unsynced.append((batch, outcomes))
                start = not self._syncing
                self._syncing = True
            if start:
                self.db.call_syncer(self._sync)

    # --- on the sync thread ---
    def _sync(self) -> None:
        """Sync what was committed, answer its writers; again while more was committed meanwhile."""
        while True:
            with self._lock:
                if not self._unsynced:
                    self._syncing = False
                    return
                taken, self._unsynced = self._unsynced, []
            try:
                self.db.sync_now()  # began after every commit taken: they are all on disk when it returns
            except Exception as err:  # the disk failed: committed, but nobody may count on it
                taken = [(batch, [(False, err)] * len(batch)) for batch, _ in taken]
            self._answer(taken)

    def _answer(self, settled: list[tuple[Batch, Outcomes]]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _settle(settled: list[tuple[Batch, Outcomes]]) -> None:
    """On the event loop: every writer's result (or exception); those who stopped waiting are skipped."""
    for batch, outcomes in settled:
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
