"""What every real test server (slapd, FreeRADIUS, redis-server, PostgreSQL) shares."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ManagedServer:
    """Started on `with`; always torn down: `close()` runs on exit, and also when
    `start()` fails half way, so no process or temporary directory is left behind."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
