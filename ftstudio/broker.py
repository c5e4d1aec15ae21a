"""The embedded broker: kombu's filesystem transport, made safe for a producer and a consumer at the same time.

Stock kombu (5.5) creates a message file under its final name and then writes it, so a worker polling the folder
can claim a file that is still empty or half written, fail to parse it and stop with an unrecoverable
``JSONDecodeError`` (kombu issue 1551). Here a message is written under a hidden temporary name and renamed into
place, so a worker only ever sees whole messages; a worker claims a file by renaming it into the processed folder
(the same disk, one atomic step, so two workers never both get it); and a file that still cannot be read is moved to
``broken/`` beside the queue with a log line instead of stopping the worker. Selected in ftstudio/settings.py for
``filesystem://`` (``CELERY_BROKER_TRANSPORT``). Imports no Django: kombu loads it by name in every process.
"""

from __future__ import annotations

import logging
import os
import uuid
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Write the message under a hidden name, then rename it into the queue: it appears whole or not at all."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.writing")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to the queue folder: {exc}") from exc

    def _get(self, queue):
        """The oldest whole message of ``queue``; a file another worker claimed first is skipped, an unreadable one
        set aside."""
        suffix = f".{queue}.msg"
        claimed_dir = self.processed_folder
        os.makedirs(claimed_dir, exist_ok=True)
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or not name.endswith(suffix):
                continue
            claimed = os.path.join(claimed_dir, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)  # the claim: one worker wins
            except OSError:
                continue  # another worker took it
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                message = loads(bytes_to_str(payload))
            except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(claimed, name, exc)
                continue
            if not self.store_processed:
                os.unlink(claimed)
            return message
        raise Empty()

    def _set_aside(self, path: str, name: str, exc: Exception) -> None:
        broken = os.path.join(os.path.dirname(os.path.abspath(self.data_folder_in)), "broken")
        os.makedirs(broken, exist_ok=True)
        try:
            os.replace(path, os.path.join(broken, name))
        except OSError:
            pass
        log.error("Broker message %s could not be read (%s): moved to %s and skipped", name, exc, broken)

    def _size(self, queue):
        suffix = f".{queue}.msg"
        return sum(1 for n in os.listdir(self.data_folder_in) if n.endswith(suffix) and not n.startswith("."))


class Transport(filesystem.Transport):
    Channel = Channel
    global_state = filesystem.Transport.global_state  # one state, as stock
