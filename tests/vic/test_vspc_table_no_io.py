"""A vSPC serial port is state: building one connects nowhere; the table's attach (the
service side) starts its backend link."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from vrtwist.vic.vspc import SerialPort, VMPortTable, VSPCConfig


class SerialPortNoIoTests(SynchronousTestCase):
    def test_building_a_port_connects_nowhere(self) -> None:
        clock = MemoryReactorClock()
        table = VMPortTable(clock, VSPCConfig())
        port = SerialPort(table, "uuid-1", "serial0")
        self.assertFalse(port.service.running)
        self.assertEqual(clock.tcpClients + clock.unixClients, [])
        self.assertEqual(table.byKey, {})  # and the table does not know it yet
