"""The one supervisor of a component's background tasks: each is named, referenced until it ends (asyncio keeps only
weak references), and its failure logged once; the component's stop cancels them together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any


class TaskSet:
    """Background tasks of one component. A failure is logged with its traceback, except the `expected` exception
    types, which are one warning line (a peer that did not answer is news, not a bug)."""

    def __init__(self, log: logging.Logger, expected: tuple[type[BaseException], ...] = ()):
        self.log, self.expected = log, expected
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        err = task.exception()
        if isinstance(err, self.expected):
            self.log.warning("%s: %s", task.get_name(), err)
        else:
            self.log.error("task %s failed", task.get_name(), exc_info=err)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)
