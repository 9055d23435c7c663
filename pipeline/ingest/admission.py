"""Which trackers may report: registered devices, or any device when told so.

A tracker names itself (an IMEI in a login frame, or an id in every report) and has
no token: the device directory is the only check.  :class:`DeviceAdmission` answers
for the tracker servers whether an identifier is accepted:

- a registered device is accepted;
- an unknown one is refused, and logged once per identifier and remote address (a
  device retrying every few seconds would otherwise fill the log); the memo of what
  was logged holds at most ``memo_size`` pairs and forgets the oldest first;
- with ``register_unknown`` an unknown device is registered on the spot, owned by
  the ``admin`` user, and accepted.

When PostgreSQL cannot answer, :class:`DirectoryUnavailable` is raised: the caller
then neither accepts nor refuses, and the device tries again later.
"""

from __future__ import annotations

from collections import OrderedDict

import asyncpg
import structlog

from pipeline.api.auth import ADMIN_NAME
from pipeline.ingest.directory import DeviceDirectory
from pipeline.store.devices import DeviceExistsError, create_device
from pipeline.store.users import find_user_by_name

__all__ = ["DeviceAdmission", "DirectoryUnavailable"]

log = structlog.get_logger("rastro.ingest.admission")

UNKNOWN_LOGGED_REMEMBERED = 10_000
#: The longest identifier accepted, as for a uniqueId anywhere else.
MAX_IDENTIFIER = 128

# What a lost or refused database connection raises through asyncpg.
_DATABASE_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class DirectoryUnavailable(RuntimeError):
    """The device directory (PostgreSQL) could not be asked; try again later."""


class DeviceAdmission:
    """Accepts registered trackers; refuses or registers the others (module doc).

    Counters ``refused`` and ``registered`` are kept for metrics.
    """

    def __init__(
        self,
        directory: DeviceDirectory,
        *,
        register_unknown: bool = False,
        memo_size: int = UNKNOWN_LOGGED_REMEMBERED,
    ) -> None:
        if memo_size < 1:
            message = f"memo_size must be at least 1, got {memo_size!r}"
            raise ValueError(message)
        self.directory = directory
        self.register_unknown = register_unknown
        self.memo_size = memo_size
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.refused = 0
        self.registered = 0

    async def admit(self, device: str, *, host: str, protocol: str) -> bool:
        """Whether ``device``, calling from ``host`` over ``protocol``, may report.

        Raises :class:`DirectoryUnavailable` when PostgreSQL cannot be asked.
        """
        if not 0 < len(device) <= MAX_IDENTIFIER:
            return self._refuse(device[:MAX_IDENTIFIER], host, protocol)
        try:
            if await self.directory.is_known(device):
                return True
            if self.register_unknown:
                return await self._register(device, protocol)
        except _DATABASE_DOWN as error:
            message = f"device directory unavailable: {type(error).__name__}: {error}"
            raise DirectoryUnavailable(message) from error
        return self._refuse(device, host, protocol)

    def _refuse(self, device: str, host: str, protocol: str) -> bool:
        self.refused += 1
        if self._first_time(device, host):
            log.warning(
                "tracker_unknown_device", device=device, host=host, protocol=protocol
            )
        return False

    async def _register(self, device: str, protocol: str) -> bool:
        found = await find_user_by_name(self.directory.pool, ADMIN_NAME)
        if found is None:
            log.error(
                "tracker_register_failed",
                device=device,
                reason=f"there is no user {ADMIN_NAME!r} to own the device",
            )
            return False

        try:
            await create_device(
                self.directory.pool,
                found[0].id,
                device,
                device,
                {"registeredBy": protocol},
            )
        except DeviceExistsError:
            pass  # registered meanwhile by another connection or instance
        else:
            self.registered += 1
            log.info("tracker_device_registered", device=device, protocol=protocol)
        self.directory.forget(device)
        return True

    def _first_time(self, device: str, host: str) -> bool:
        key = (device, host)
        if key in self._logged:
            self._logged.move_to_end(key)
            return False
        self._logged[key] = None
        if len(self._logged) > self.memo_size:
            self._logged.popitem(last=False)
        return True
