"""The SPI bus seen by the chip drivers: anything spidev-compatible.

Drivers only call ``xfer2``, ``close`` and set ``max_speed_hz`` / ``mode``. The real bus is
``spidev.SpiDev`` opened by :func:`open_spidev` (only on the Pi, only when asked); the simulated
board provides chip models with the same members (hw.hal.sim.board). Nothing opens a device at
import.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class SpiFault(OSError):
    """A transfer failed or returned something no working chip would send."""


@runtime_checkable
class SpiBus(Protocol):
    max_speed_hz: int
    mode: int

    def xfer2(self, data: list[int]) -> list[int]: ...

    def close(self) -> None: ...


class CheckedBus:
    """Wraps a bus so every failure surfaces as :class:`SpiFault` with the device named."""

    def __init__(self, bus: SpiBus, name: str):
        self._bus = bus
        self.name = name

    @property
    def max_speed_hz(self) -> int:
        return self._bus.max_speed_hz

    @property
    def mode(self) -> int:
        return self._bus.mode

    def xfer2(self, data: list[int]) -> list[int]:
        try:
            rx = self._bus.xfer2(data)
        except SpiFault:
            raise
        except Exception as e:  # spidev raises OSError; a fake may raise anything
            raise SpiFault(f"{self.name}: SPI transfer failed: {e}") from e
        if rx is None or len(rx) != len(data):
            raise SpiFault(f"{self.name}: short SPI transfer")
        return rx

    def close(self) -> None:
        self._bus.close()


def open_spidev(bus: int, device: int, max_speed_hz: int, mode: int, name: str) -> CheckedBus:
    """Open ``/dev/spidev<bus>.<device>`` with explicit mode and speed (Pi only)."""
    import spidev  # imported here: only the real board needs it

    dev = spidev.SpiDev()
    try:
        dev.open(bus, device)
    except (FileNotFoundError, PermissionError) as e:
        raise SpiFault(
            f"{name}: cannot open /dev/spidev{bus}.{device} ({e}); is SPI enabled "
            "(dtparam=spi=on) and is this user in the 'spi' group?"
        ) from e
    dev.mode = mode
    dev.max_speed_hz = max_speed_hz
    dev.bits_per_word = 8
    return CheckedBus(dev, name)
