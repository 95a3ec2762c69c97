"""Files in the state directory belong to the directory's owner (the service user).

An operator often runs `mfaproxy users ...` as root while the service runs as the
`mfaproxy` user. A key file or a SQLite file that root created would then be unreadable
to the service, which refuses to start. So a file created here while running as root
takes the owner and group of the directory it is created in, from the moment it exists
(SQLite does the same for its -wal and -shm files when it runs as root).
"""

from __future__ import annotations

import os
from pathlib import Path


def give_to_directory_owner(fd: int, path: Path) -> None:
    """Make the just-created file `fd` (at `path`) belong to its directory's owner, when
    running as root and the directory belongs to another user; otherwise do nothing."""
    if os.geteuid() != 0:
        return
    directory = path.parent.stat()
    if directory.st_uid != 0:
        os.fchown(fd, directory.st_uid, directory.st_gid)


def create_private(path: Path) -> None:
    """Create `path` (mode 0600) if missing, owned as `give_to_directory_owner` says."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        give_to_directory_owner(fd, path)
    finally:
        os.close(fd)
