"""The package list of setup.cfg names every package: ``pip install .`` (not editable)
ships only what it lists, and a package left out breaks the installed daemons."""

from __future__ import annotations

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackageListTests(SynchronousTestCase):
    def test_every_package_is_listed(self) -> None:
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(cfg["options"]["packages"].split())
        found = {
            os.path.relpath(d, ROOT).replace(os.sep, ".")
            for d, _dirs, files in os.walk(os.path.join(ROOT, "vrtwist"))
            if "__init__.py" in files
        }
        self.assertEqual(found - listed, set(), "packages missing from setup.cfg")
        self.assertIn("twisted.plugins", listed)
